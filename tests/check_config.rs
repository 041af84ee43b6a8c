//! `smsgw check-config` as an operator runs it: the real binary, real files, exit status and
//! every problem on its own line with file, line and key.

use std::path::Path;
use std::process::Command;

fn check(dir: &Path, smsgw: &str, rules: &str) -> (bool, String) {
    let smsgw_path = dir.join("smsgw.toml");
    let rules_path = dir.join("smpp_rules.toml");
    std::fs::write(&smsgw_path, smsgw).unwrap();
    std::fs::write(&rules_path, rules).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_smsgw"))
        .arg("check-config")
        .arg("--config")
        .arg(&smsgw_path)
        .arg("--rules")
        .arg(&rules_path)
        // The override must not leak in from the developer's shell.
        .env_remove("SMSGW_LINK_100_PASSWORD")
        .output()
        .expect("run smsgw");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success(), text)
}

#[test]
fn shipped_config_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_smsgw"))
        .arg("check-config")
        .arg("--config")
        .arg(root.join("config/smsgw.toml"))
        .arg("--rules")
        .arg(root.join("config/smpp_rules.toml"))
        .output()
        .expect("run smsgw");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("ok: 2 link(s)"), "{text}");
    assert!(!text.contains("secret"), "password leaked: {text}");
}

#[test]
fn every_problem_is_printed_and_exit_is_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let rules = "[links.100]\nhost = \"h\"\nsystem_id = \"s\"\npassword = \"hunter2\"\nesme_rate = 0\nwindw = 3\n\
                 [pools.500]\nmembers = [{ link = 7 }]\n";
    let (ok, text) = check(dir.path(), "[server]\nshards = -2\n", rules);
    assert!(!ok, "{text}");
    let smsgw = dir.path().join("smsgw.toml");
    let rules = dir.path().join("smpp_rules.toml");
    let expected = [
        format!(
            "error: {}:2: server.shards: must be in 0..=1024, got -2",
            smsgw.display()
        ),
        format!(
            "error: {}:5: links.100.esme_rate: must be in 1..=100000, got 0",
            rules.display()
        ),
        format!(
            "error: {}:6: links.100.windw: unknown key `windw`; did you mean `window`?",
            rules.display()
        ),
        format!(
            "error: {}:8: pools.500.members.0.link: no link with id 7 in [links]",
            rules.display()
        ),
        "4 problems found".to_string(),
    ];
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines, expected, "{text}");
    assert!(!text.contains("hunter2"));
}

#[test]
fn unreadable_file_is_a_problem_not_a_crash() {
    let out = Command::new(env!("CARGO_BIN_EXE_smsgw"))
        .args([
            "check-config",
            "--config",
            "/nonexistent/smsgw.toml",
            "--rules",
            "/nonexistent/r.toml",
        ])
        .output()
        .expect("run smsgw");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("/nonexistent/smsgw.toml: cannot read"),
        "{text}"
    );
    assert!(text.contains("/nonexistent/r.toml: cannot read"), "{text}");
}
