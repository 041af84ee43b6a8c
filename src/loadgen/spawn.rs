//! `--spawn-sim`: run `smsgw smsc-sim` as a child process for the duration of a bench, so a
//! gateway configured for the simulator can be measured with one command. The child is
//! stopped by its PID when the guard drops, on success and on error alike.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::LoadgenError;

/// How long the simulator may take to open its port.
const SIM_START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running simulator; killed (and reaped) on drop.
pub struct SimGuard {
    child: Child,
}

impl SimGuard {
    /// Start `<bin> smsc-sim --listen <listen> <extra...>` and wait until it accepts TCP.
    pub fn start(bin: &Path, listen: SocketAddr, extra: &[String]) -> Result<Self, LoadgenError> {
        let child = Command::new(bin)
            .arg("smsc-sim")
            .arg("--listen")
            .arg(listen.to_string())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| LoadgenError::Spawn(format!("{} smsc-sim: {e}", bin.display())))?;
        let mut guard = SimGuard { child };
        let deadline = Instant::now() + SIM_START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = guard.child.try_wait() {
                return Err(LoadgenError::Spawn(format!(
                    "smsc-sim exited during start-up with {status} (is {listen} in use?)"
                )));
            }
            if TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok() {
                return Ok(guard);
            }
            if Instant::now() >= deadline {
                return Err(LoadgenError::Spawn(format!(
                    "smsc-sim did not open {listen} within {} s",
                    SIM_START_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for SimGuard {
    fn drop(&mut self) {
        // SIGKILL to our own child by PID; the simulator holds no state worth a graceful stop.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
