//! `smsgw`: the one binary. Subcommands: `serve`, `smsc-sim`, `check-config`, `send`, `token`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "smsgw", version, about = "SMS gateway: REST in, SMPP v3.4 out")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long, default_value = "config/smsgw.toml", env = "SMSGW_CONFIG")]
        config: PathBuf,
        #[arg(long, default_value = "config/smpp_rules.toml", env = "SMSGW_RULES")]
        rules: PathBuf,
    },
    /// Run the contact-policy engine (MCP) as a standalone HTTP service.
    Mcp {
        #[arg(long, default_value = "config/smsgw.toml", env = "SMSGW_CONFIG")]
        config: PathBuf,
        #[arg(long, default_value = "config/smpp_rules.toml", env = "SMSGW_RULES")]
        rules: PathBuf,
        /// Address to serve the check API on.
        #[arg(long, default_value = "127.0.0.1:8090", env = "SMSGW_MCP_LISTEN")]
        listen: std::net::SocketAddr,
    },
    /// Run the SMSC simulator (binds, answers submit_sm, emits receipts, injects faults).
    SmscSim(smsgw::sim::SimArgs),
    /// Validate both configuration files and print every problem with file, key and reason.
    CheckConfig {
        #[arg(long, default_value = "config/smsgw.toml", env = "SMSGW_CONFIG")]
        config: PathBuf,
        #[arg(long, default_value = "config/smpp_rules.toml", env = "SMSGW_RULES")]
        rules: PathBuf,
    },
    /// Send one message through a running gateway's REST API; prints the JSON answer.
    Send(smsgw::api::client::SendArgs),
    /// Open-loop load generator for the REST send API (HDR histograms; see PERF.md).
    Bench(smsgw::loadgen::BenchArgs),
    /// A trivial HTTP server answering every request: the baseline for `bench`.
    NullHttp(smsgw::loadgen::NullServerArgs),
    /// Mint a JWT (HS256, server key) for an app of the apps file; prints the token.
    Token {
        #[arg(long, default_value = "config/smsgw.toml", env = "SMSGW_CONFIG")]
        config: PathBuf,
        #[arg(long, default_value = "config/smpp_rules.toml", env = "SMSGW_RULES")]
        rules: PathBuf,
        #[arg(long)]
        app_id: u64,
    },
    /// Print the argon2id hash of an app secret read from stdin (for `secret_hash`).
    HashSecret,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("smsgw: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config, rules } => {
            // Signals must be blocked before any thread exists so every thread inherits the mask
            // and only the watcher thread receives them.
            let signals = smsgw::runtime::block_termination_signals()?;
            // Before the shards allocate their working memory (see the function's docs).
            let thp = smsgw::runtime::disable_transparent_huge_pages();
            let config = match smsgw::config::load(&config, &rules) {
                Ok(c) => c,
                Err(errors) => {
                    for e in &errors.0 {
                        eprintln!("error: {e}");
                    }
                    anyhow::bail!("invalid configuration ({} problem(s))", errors.0.len());
                }
            };
            init_logging(
                &config.log.level,
                config.log.format == smsgw::config::LogFormat::Json,
            );
            for w in &config.warnings {
                tracing::warn!("config: {w}");
            }
            if let Err(e) = thp {
                // Only a performance matter (older kernels, seccomp): keep serving.
                tracing::warn!(error = %e, "cannot turn transparent huge pages off for this process");
            }
            smsgw::shard::gateway::serve(config, signals).context("serve")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Mcp {
            config,
            rules,
            listen,
        } => {
            let signals = smsgw::runtime::block_termination_signals()?;
            let config = match smsgw::config::load(&config, &rules) {
                Ok(c) => c,
                Err(errors) => {
                    for e in &errors.0 {
                        eprintln!("error: {e}");
                    }
                    anyhow::bail!("invalid configuration ({} problem(s))", errors.0.len());
                }
            };
            init_logging(
                &config.log.level,
                config.log.format == smsgw::config::LogFormat::Json,
            );
            smsgw::policy::mcp::run_mcp(config, listen, signals).context("mcp")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::SmscSim(args) => {
            init_logging("info", false);
            smsgw::sim::run(args).context("smsc-sim")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config, rules } => {
            let (report, ok) = smsgw::config::check_config_report(&config, &rules);
            print!("{report}");
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Send(args) => {
            let (ok, body) = smsgw::api::client::send(&args)?;
            println!("{body}");
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Bench(args) => {
            init_logging("warn", false);
            let code = smsgw::loadgen::run(args)?;
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        Command::NullHttp(args) => {
            init_logging("info", false);
            smsgw::loadgen::run_null_server(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            config,
            rules,
            app_id,
        } => {
            let config = smsgw::config::load(&config, &rules)
                .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
            anyhow::ensure!(
                config.security.enabled,
                "authentication is disabled ([security] enabled = false): no token is needed"
            );
            let auth =
                smsgw::auth::AuthService::start(config.security, &|n| std::env::var(n).ok())?;
            let token = auth.mint(app_id).map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        Command::HashSecret => {
            // From stdin, so the secret stays out of shell history and `ps`.
            let mut secret = String::new();
            std::io::stdin()
                .read_line(&mut secret)
                .context("reading the secret from stdin")?;
            let secret = secret.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!secret.is_empty(), "empty secret on stdin");
            println!("{}", smsgw::auth::hash_secret(secret));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `RUST_LOG` wins over the configured level.
fn init_logging(level: &str, json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // On a failed log write (full disk, file-size limit, closed pipe) tracing-subscriber
        // would report it with eprintln!, which panics when stderr itself fails — on a shard
        // thread that stalls every connection it owns. A lost log line is the lesser harm.
        .log_internal_errors(false);
    if json {
        // The json formatter needs an extra feature; fall back to text rather than fail.
        builder.with_ansi(false).init();
    } else {
        builder.init();
    }
}
