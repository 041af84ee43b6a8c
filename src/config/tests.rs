//! Tests for config loading and validation: the shipped files, every kind of error with its
//! file and key path, and credential overrides.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const LINK: &str = r#"
[links.100]
host = "127.0.0.1"
system_id = "smsgw"
password = "secret"
esme_rate = 100
"#;

fn load_env(smsgw: &str, rules: &str, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = move |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    from_sources(
        Source {
            path: Path::new("smsgw.toml"),
            text: smsgw,
        },
        Source {
            path: Path::new("rules/smpp_rules.toml"),
            text: rules,
        },
        &lookup,
    )
}

fn load_strs(smsgw: &str, rules: &str) -> Result<Config, ConfigErrors> {
    load_env(smsgw, rules, &[])
}

/// The errors, or a panic naming the config that unexpectedly loaded.
fn errors(smsgw: &str, rules: &str) -> ConfigErrors {
    match load_strs(smsgw, rules) {
        Ok(c) => panic!("expected errors, got a config: {c:?}"),
        Err(e) => e,
    }
}

/// The single error at `key`, with its reason checked to contain `needle`.
#[track_caller]
fn assert_error(errs: &ConfigErrors, file: &str, key: &str, needle: &str) {
    let found: Vec<_> = errs.for_key(key).collect();
    assert_eq!(found.len(), 1, "expected one error at {key}, got: {errs}");
    assert_eq!(found[0].file, PathBuf::from(file), "{}", found[0]);
    assert!(
        found[0].reason.contains(needle),
        "reason of {key} lacks {needle:?}: {}",
        found[0]
    );
}

fn repo_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name)
}

#[test]
fn shipped_default_files_load() {
    let config = load_with_env(
        &repo_file("smsgw.toml"),
        &repo_file("smpp_rules.toml"),
        &|_| None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.server.http_addr, "127.0.0.1:8088".parse().unwrap());
    assert_eq!(config.server.grpc_addr, "127.0.0.1:44044".parse().unwrap());
    assert_eq!(config.server.shards, ShardCount::PerCore);
    assert_eq!(config.state.ttl, Duration::from_secs(86_400));
    assert_eq!(config.health.check_interval, Duration::from_secs(10));
    let link = &config.rules.links[&LinkId(100)];
    assert_eq!((link.host.as_str(), link.port), ("127.0.0.1", 2775));
    assert_eq!(
        (link.system_id.as_str(), link.password.expose()),
        ("smsgw", "secret")
    );
    assert_eq!(link.esme_rate.get(), 200);
    let pool = &config.rules.pools[&PoolId(500)];
    assert_eq!(pool.members.len(), 2);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn empty_gateway_file_means_documented_defaults() {
    let c = load_strs("", LINK).unwrap();
    assert_eq!(c.server.max_body_bytes.get(), 65_536);
    assert_eq!(c.server.max_pipeline_depth.get(), 64);
    assert_eq!(c.server.request_timeout, Duration::from_secs(30));
    assert!(!c.server.instance_id.is_empty());
    assert_eq!(c.state.backend, StateBackend::Embedded);
    assert_eq!(c.state.path, PathBuf::from("var/state"));
    assert_eq!(c.state.fsync, FsyncPolicy::Batch);
    assert_eq!(c.state.batch_delay, Duration::ZERO);
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.routing.cross_shard_capacity.get(), 1024);
    let l = &c.rules.links[&LinkId(100)];
    assert_eq!(l.port, 2775);
    assert_eq!(l.bind_mode, BindMode::Transceiver);
    assert_eq!(
        (l.binds.get(), l.window.get(), l.max_pending.get()),
        (1, 10, 1000)
    );
    // enquire interval falls back to [health].
    assert_eq!(l.enquire_interval, Duration::from_secs(10));
    // burst falls back to the rate.
    assert_eq!(l.esme_rate_burst.get(), 100);
    assert_eq!(
        (l.source_ton, l.source_npi, l.dest_ton, l.dest_npi),
        (0, 0, 1, 1)
    );
    assert_eq!(l.registered_delivery, 1);
    assert!(l.enabled && l.whitelist.is_empty());
    assert_eq!(
        l.session_modes(),
        &[crate::smpp::session::BindMode::Transceiver]
    );
}

#[test]
fn health_interval_is_the_default_enquire_interval() {
    let c = load_strs("[health]\ncheck_interval_s = 7\n", LINK).unwrap();
    assert_eq!(
        c.rules.links[&LinkId(100)].enquire_interval,
        Duration::from_secs(7)
    );
}

#[test]
fn unknown_keys_are_reported_with_file_key_and_suggestion() {
    let errs = errors(
        "[server]\nhtp_addr = \"127.0.0.1:1\"\n",
        &format!("{LINK}windw = 5\n"),
    );
    assert_error(
        &errs,
        "smsgw.toml",
        "server.htp_addr",
        "did you mean `http_addr`",
    );
    assert_error(
        &errs,
        "rules/smpp_rules.toml",
        "links.100.windw",
        "did you mean `window`",
    );
    assert_eq!(errs.0.len(), 2, "{errs}");
}

#[test]
fn unknown_sections_are_reported() {
    let errs = errors("[sever]\n[bogus]\n", &format!("{LINK}[pool.1]\n"));
    assert_error(&errs, "smsgw.toml", "sever", "did you mean `server`");
    assert_error(&errs, "smsgw.toml", "bogus", "unknown section");
    assert_error(
        &errs,
        "rules/smpp_rules.toml",
        "pool",
        "did you mean `pools`",
    );
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let rules = r#"
[links.100]
host = "127.0.0.1"
system_id = "smsgw"
password = "secret"
esme_rate = 0
window = 0
port = 70000
bogus = 1
typo = 2

[links.200]
host = "127.0.0.1"
system_id = "this_system_id_is_too_long"
password = "secret"
esme_rate = 10
window = "ten"
bind_mode = "duplex"
"#;
    let smsgw = "[server]\nmax_pipeline_depth = 0\n[state]\nttl_s = 1\n";
    let errs = errors(smsgw, rules);
    assert_error(&errs, "smsgw.toml", "server.max_pipeline_depth", "1..=1024");
    assert_error(&errs, "smsgw.toml", "state.ttl_s", "60..=2592000");
    assert_error(
        &errs,
        "rules/smpp_rules.toml",
        "links.100.bogus",
        "unknown key",
    );
    assert_error(
        &errs,
        "rules/smpp_rules.toml",
        "links.100.typo",
        "unknown key",
    );
    // links.100 had unknown keys; once removed, its ranges are still checked.
    assert_error(
        &errs,
        "rules/smpp_rules.toml",
        "links.100.esme_rate",
        "1..=100000",
    );
    assert_error(
        &errs,
        "rules/smpp_rules.toml",
        "links.100.window",
        "1..=1000, got 0",
    );
    assert_error(
        &errs,
        "rules/smpp_rules.toml",
        "links.100.port",
        "1..=65535, got 70000",
    );
    assert_error(
        &errs,
        "rules/smpp_rules.toml",
        "links.200.window",
        "expected an integer",
    );
    assert_error(
        &errs,
        "rules/smpp_rules.toml",
        "links.200.bind_mode",
        "unknown variant `duplex`",
    );
    assert_error(
        &errs,
        "rules/smpp_rules.toml",
        "links.200.system_id",
        "1..=15 bytes",
    );
    assert_eq!(errs.0.len(), 10, "{errs}");
}

#[test]
fn errors_carry_line_numbers() {
    let rules = "\n[links.100]\nhost = \"h\"\nsystem_id = \"s\"\npassword = \"p\"\nesme_rate = 1\nwindow = 5000\n";
    let errs = errors("", rules);
    let e = errs.for_key("links.100.window").next().unwrap();
    assert_eq!(e.line, Some(7));
    assert_eq!(
        e.to_string(),
        "rules/smpp_rules.toml:7: links.100.window: must be in 1..=1000, got 5000"
    );
}

#[test]
fn syntax_errors_name_the_line() {
    let errs = errors("[server]\nhttp_addr = \n", LINK);
    assert_eq!(errs.0.len(), 1, "{errs}");
    assert_eq!(errs.0[0].file, PathBuf::from("smsgw.toml"));
    assert_eq!(errs.0[0].line, Some(2));
    assert!(errs.0[0].reason.starts_with("TOML syntax"), "{errs}");
}

#[test]
fn missing_required_keys() {
    let errs = errors("", "[links.100]\nsystem_id = \"s\"\nesme_rate = 1\n");
    assert_error(
        &errs,
        "rules/smpp_rules.toml",
        "links.100.host",
        "required key is missing",
    );
    let errs = errors(
        "",
        "[links.100]\nhost = \"h\"\nsystem_id = \"s\"\nesme_rate = 1\n",
    );
    assert_error(
        &errs,
        "rules/smpp_rules.toml",
        "links.100.password",
        "SMSGW_LINK_100_PASSWORD",
    );
}

#[test]
fn server_values_are_checked() {
    let smsgw = r#"
[server]
http_addr = "localhost:8088"
grpc_addr = "127.0.0.1:44044"
shards = 5000
max_body_bytes = 10
instance_id = "bad id!"
[log]
level = "info,[="
[health]
check_interval_s = 0
[routing]
cross_shard_capacity = -1
"#;
    let errs = errors(smsgw, LINK);
    assert_error(&errs, "smsgw.toml", "server.http_addr", "not an IP:port");
    assert_error(&errs, "smsgw.toml", "server.shards", "0..=1024");
    assert_error(&errs, "smsgw.toml", "server.max_body_bytes", "256..=");
    assert_error(
        &errs,
        "smsgw.toml",
        "server.instance_id",
        "1..=64 characters",
    );
    assert_error(&errs, "smsgw.toml", "log.level", "not a valid filter");
    assert_error(&errs, "smsgw.toml", "health.check_interval_s", "1..=3600");
    assert_error(
        &errs,
        "smsgw.toml",
        "routing.cross_shard_capacity",
        "got -1",
    );
    assert_eq!(errs.0.len(), 7, "{errs}");

    let errs = errors(
        "[server]\nhttp_addr = \"127.0.0.1:9\"\ngrpc_addr = \"127.0.0.1:9\"\n",
        LINK,
    );
    assert_error(&errs, "smsgw.toml", "server.grpc_addr", "same address");
    let c = load_strs(
        "[state]\nbackend = \"aerospike\"\nttl_s = 600\n[state.aerospike]\nhosts = \"10.0.0.1:3000,10.0.0.2:3000\"\nnamespace = \"sms\"\n",
        LINK,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.state.backend, StateBackend::Aerospike);
    assert_eq!(c.state.aerospike.namespace, "sms");
    assert_eq!(c.state.aerospike.ttl_secs, 600);
    let errs = errors(
        "[state]\nbackend = \"aerospike\"\n[state.aerospike]\nop_timeout_ms = 0\nhosts = \"nohost\"\n",
        LINK,
    );
    assert_error(
        &errs,
        "smsgw.toml",
        "state.aerospike.op_timeout_ms",
        "10..=60000",
    );
    assert_error(&errs, "smsgw.toml", "state.aerospike.hosts", "host:port");
    assert!(
        errs.for_key("state.aerospike.op_timeout_ms")
            .all(|e| e.line == Some(4)),
        "{errs}"
    );
    let errs = errors("[state]\nfsync = \"sometimes\"\n", LINK);
    assert_error(&errs, "smsgw.toml", "state.fsync", "unknown variant");
}

#[test]
fn link_values_are_checked() {
    let rules = r#"
[links.100]
host = "bad host"
system_id = "s"
password = "longer_than_8"
system_type = "waytoolongtype"
esme_rate = 10
esme_rate_burst = 0
binds = 65
max_parts = 256
source_ton = 7
dest_npi = 2
registered_delivery = 32
reconnect_min_ms = 1000
reconnect_max_ms = 999
resp_timeout_ms = 5
whitelist = ["10.0.0.0/8", "10.1.2.3/8", "nonsense"]
"#;
    let errs = errors("", rules);
    let f = "rules/smpp_rules.toml";
    assert_error(&errs, f, "links.100.host", "no spaces");
    assert_error(&errs, f, "links.100.password", "0..=8 ASCII bytes");
    assert_error(&errs, f, "links.100.system_type", "0..=12 bytes");
    assert_error(&errs, f, "links.100.esme_rate_burst", "got 0");
    assert_error(&errs, f, "links.100.binds", "1..=64");
    assert_error(&errs, f, "links.100.max_parts", "1..=255");
    assert_error(&errs, f, "links.100.source_ton", "0..=6");
    assert_error(&errs, f, "links.100.dest_npi", "NPI");
    assert_error(&errs, f, "links.100.registered_delivery", "0..=31");
    assert_error(
        &errs,
        f,
        "links.100.reconnect_max_ms",
        "at least reconnect_min_ms (1000)",
    );
    assert_error(&errs, f, "links.100.resp_timeout_ms", "100..=300000");
    assert_error(
        &errs,
        f,
        "links.100.whitelist.1",
        "did you mean `10.0.0.0/8`",
    );
    assert_error(&errs, f, "links.100.whitelist.2", "not an IP address");
    assert_eq!(errs.0.len(), 13, "{errs}");
    // The password itself never appears in a message.
    assert!(!errs.to_string().contains("longer_than_8"), "{errs}");
}

#[test]
fn bad_ids_are_reported() {
    let rules = format!(
        "{LINK}[links.abc]\nhost = \"h\"\n[links.0]\nhost = \"h\"\n[pools.-5]\nmembers = []\n"
    );
    let errs = errors("", &rules);
    let f = "rules/smpp_rules.toml";
    assert_error(&errs, f, "links.abc", "not a valid id");
    assert_error(&errs, f, "links.0", "not a valid id");
    assert_error(&errs, f, "pools.-5", "not a valid id");
}

#[test]
fn pool_problems_are_reported_per_member() {
    let rules = format!(
        r#"{LINK}
[links.101]
host = "h"
system_id = "s"
password = "p"
esme_rate = 1
bind_mode = "receiver"

[pools.500]
members = [
  {{ link = 100, weight = 0 }},
  {{ link = 999 }},
  {{ link = 501 }},
  {{ link = 100 }},
  {{ link = 101 }},
]

[pools.501]
members = []

[pools.100]
members = [{{ link = 100 }}]

[pools.502]
members = [{{ link = 100, wieght = 2 }}]
"#
    );
    let errs = errors("", &rules);
    let f = "rules/smpp_rules.toml";
    assert_error(&errs, f, "pools.500.members.0.weight", "1..=10000");
    assert_error(&errs, f, "pools.500.members.1.link", "no link with id 999");
    assert_error(
        &errs,
        f,
        "pools.500.members.2.link",
        "pools cannot contain pools",
    );
    assert_error(&errs, f, "pools.500.members.3.link", "listed twice");
    assert_error(&errs, f, "pools.500.members.4.link", "receiver only");
    assert_error(&errs, f, "pools.501.members", "at least one member");
    assert_error(&errs, f, "pools.100", "share one namespace");
    // serde leaves the array index out; the loader puts it back from the file.
    assert_error(
        &errs,
        f,
        "pools.502.members.0.wieght",
        "did you mean `weight`",
    );
    assert_eq!(errs.0.len(), 8, "{errs}");
}

#[test]
fn broken_links_are_not_reported_again_by_pools() {
    let rules = "[links.100]\nhost = 5\n[pools.500]\nmembers = [{ link = 100 }]\n";
    let errs = errors("", rules);
    assert!(
        errs.0.iter().all(|e| e.key.starts_with("links.100")),
        "{errs}"
    );
}

#[test]
fn all_disabled_pool_is_a_warning() {
    let rules = format!("{LINK}enabled = false\n[pools.500]\nmembers = [{{ link = 100 }}]\n");
    let c = load_strs("", &rules).unwrap();
    assert_eq!(c.warnings.len(), 1);
    assert_eq!(c.warnings[0].key, "pools.500.members");
}

#[test]
fn env_overrides_password() {
    let c = load_env("", LINK, &[("SMSGW_LINK_100_PASSWORD", "fromenv")]).unwrap();
    assert_eq!(c.rules.links[&LinkId(100)].password.expose(), "fromenv");

    let rules =
        "[links.100]\nhost = \"h\"\nsystem_id = \"s\"\nesme_rate = 1\npassword_env = \"LINK_PW\"\n";
    let c = load_env("", rules, &[("LINK_PW", "named")]).unwrap();
    assert_eq!(c.rules.links[&LinkId(100)].password.expose(), "named");
    let errs = load_env("", rules, &[]).unwrap_err();
    assert_error(
        &errs,
        "rules/smpp_rules.toml",
        "links.100.password_env",
        "`LINK_PW` is not set",
    );
    // The override also satisfies a link that names no source at all.
    let bare = "[links.100]\nhost = \"h\"\nsystem_id = \"s\"\nesme_rate = 1\n";
    assert!(load_env("", bare, &[("SMSGW_LINK_100_PASSWORD", "x")]).is_ok());
}

#[test]
fn password_file_is_read_relative_to_the_rules_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    std::fs::write(dir.path().join("secrets/link100"), "filepw\r\n").unwrap();
    let rules = "[links.100]\nhost = \"h\"\nsystem_id = \"s\"\nesme_rate = 1\npassword_file = \"secrets/link100\"\n";
    let rules_path = dir.path().join("smpp_rules.toml");
    std::fs::write(&rules_path, rules).unwrap();
    let smsgw_path = dir.path().join("smsgw.toml");
    std::fs::write(&smsgw_path, "").unwrap();
    let c = load_with_env(&smsgw_path, &rules_path, &|_| None).unwrap();
    assert_eq!(c.rules.links[&LinkId(100)].password.expose(), "filepw");

    std::fs::remove_file(dir.path().join("secrets/link100")).unwrap();
    let errs = load_with_env(&smsgw_path, &rules_path, &|_| None).unwrap_err();
    assert_eq!(errs.0.len(), 1);
    assert_eq!(errs.0[0].key, "links.100.password_file");
    assert!(errs.0[0].reason.contains("cannot read"), "{errs}");
}

#[test]
fn only_one_password_source() {
    let rules = format!("{LINK}password_env = \"X\"\n");
    let errs = errors("", &rules);
    assert_error(
        &errs,
        "rules/smpp_rules.toml",
        "links.100.password",
        "only one of",
    );
}

#[test]
fn passwords_never_show_in_debug_output() {
    let c = load_strs("", LINK).unwrap();
    let debug = format!("{c:?}");
    assert!(!debug.contains("secret"), "{debug}");
    assert!(debug.contains("password: ***"), "{debug}");
}

#[test]
fn missing_files_are_reported() {
    let errs = load_with_env(
        Path::new("/nonexistent/a.toml"),
        Path::new("/nonexistent/b.toml"),
        &|_| None,
    )
    .unwrap_err();
    assert_eq!(errs.0.len(), 2);
    assert!(errs.0.iter().all(|e| e.reason.starts_with("cannot read")));
}

#[test]
fn check_config_report_lists_everything() {
    let (text, ok) = render_report(load_strs(
        "[server]\nshards = -1\n",
        &format!("{LINK}window = 0\n"),
    ));
    assert!(!ok);
    assert!(
        text.contains("error: smsgw.toml:2: server.shards: must be in 0..=1024, got -1"),
        "{text}"
    );
    assert!(text.contains("links.100.window"), "{text}");
    assert!(text.ends_with("2 problems found\n"), "{text}");
    let (text, ok) = check_config_report(&repo_file("smsgw.toml"), &repo_file("smpp_rules.toml"));
    assert!(ok, "{text}");
    assert!(text.starts_with("ok: 2 link(s)"), "{text}");
    assert!(!text.contains("secret"));
}

#[test]
fn cidr_parsing_and_matching() {
    let c: Cidr = "10.0.0.0/8".parse().unwrap();
    assert!(c.contains("10.255.1.2".parse().unwrap()));
    assert!(!c.contains("11.0.0.1".parse().unwrap()));
    // IPv4-mapped IPv6 clients match IPv4 networks.
    assert!(c.contains("::ffff:10.1.1.1".parse().unwrap()));
    let host: Cidr = "192.168.1.5".parse().unwrap();
    assert_eq!(host.to_string(), "192.168.1.5/32");
    let all: Cidr = "0.0.0.0/0".parse().unwrap();
    assert!(all.contains(IpAddr::from([1, 2, 3, 4])));
    let v6: Cidr = "2001:db8::/32".parse().unwrap();
    assert!(v6.contains("2001:db8::1".parse().unwrap()));
    assert!(!v6.contains("10.0.0.1".parse().unwrap()));
    assert!(matches!(
        "10.0.0.0/33".parse::<Cidr>(),
        Err(CidrError::PrefixTooLong { .. })
    ));
    assert!(matches!(
        "10.0.0.1/8".parse::<Cidr>(),
        Err(CidrError::HostBits(..))
    ));
    assert!(matches!(
        "10.0.0.0/x".parse::<Cidr>(),
        Err(CidrError::Prefix(_))
    ));
}

#[test]
fn link_whitelist_allows() {
    let c = load_strs("", &format!("{LINK}whitelist = [\"127.0.0.0/8\"]\n")).unwrap();
    let l = &c.rules.links[&LinkId(100)];
    assert!(l.allows("127.0.0.1".parse().unwrap()));
    assert!(!l.allows("192.0.2.1".parse().unwrap()));
}

#[test]
fn errors_inside_arrays_get_their_index_and_line() {
    let rules = format!(
        "{LINK}[pools.500]\nmembers = [\n  {{ link = 100 }},\n  {{ link = 100, weight = \"x\" }},\n  {{ weight = 1 }},\n]\n"
    );
    let errs = errors("", &rules);
    let e = errs
        .for_key("pools.500.members.1.weight")
        .next()
        .unwrap_or_else(|| panic!("{errs}"));
    assert_eq!(e.line, Some(10), "{errs}");
    assert!(e.reason.contains("expected an integer"), "{errs}");
}

#[test]
fn one_id_spelled_twice_is_an_error() {
    let rules = format!(
        "{LINK}[links.0100]\nhost = \"h\"\nsystem_id = \"s\"\npassword = \"p\"\nesme_rate = 1\n"
    );
    let errs = errors("", &rules);
    assert_eq!(errs.0.len(), 1, "{errs}");
    assert!(errs.0[0].reason.contains("defined twice"), "{errs}");
}

#[test]
fn no_links_is_a_warning() {
    let c = load_strs("", "").unwrap();
    assert!(c.rules.links.is_empty());
    assert_eq!(c.warnings.len(), 1);
    assert_eq!(c.warnings[0].key, "links");
}

#[test]
fn errors_are_in_file_then_line_order() {
    let errs = errors(
        "[server]\nshards = -1\n[sever]\n",
        &format!("{LINK}window = 0\nwindw = 1\n"),
    );
    let order: Vec<(&str, Option<usize>)> = errs
        .0
        .iter()
        .map(|e| (e.file.to_str().unwrap(), e.line))
        .collect();
    assert_eq!(
        order,
        vec![
            ("smsgw.toml", Some(2)),
            ("smsgw.toml", Some(3)),
            ("rules/smpp_rules.toml", Some(7)),
            ("rules/smpp_rules.toml", Some(8)),
        ],
        "{errs}"
    );
}

/// The keys a file struct accepts, read from serde's own "unknown field ..., expected ..."
/// message, so this list cannot drift from the structs.
fn accepted_keys<T: serde::de::DeserializeOwned>() -> Vec<String> {
    let mut probe = toml::Table::new();
    probe.insert("__probe__".into(), toml::Value::Integer(0));
    let err = T::deserialize(toml::Value::Table(probe))
        .err()
        .expect("probe key must be refused");
    let message = err.message().to_string();
    // "expected `a`", "expected `a` or `b`", "expected one of `a`, `b`, `c`".
    let (_, list) = message
        .split_once("expected")
        .unwrap_or_else(|| panic!("{message}"));
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn every_key_is_documented() {
    use super::file::*;
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md"),
    )
    .unwrap();
    let section = |title: &str| -> String {
        let start = doc
            .find(title)
            .unwrap_or_else(|| panic!("docs lack a {title} section"));
        let rest = &doc[start + title.len()..];
        rest[..rest.find("\n### ").unwrap_or(rest.len())].to_string()
    };
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("### `[server]`", accepted_keys::<ServerFile>()),
        ("### `[state]`", accepted_keys::<StateFile>()),
        (
            "### `[state.aerospike]`",
            accepted_keys::<crate::state::aerospike::AerospikeFile>(),
        ),
        ("### `[log]`", accepted_keys::<LogFile>()),
        ("### `[health]`", accepted_keys::<HealthFile>()),
        ("### `[routing]`", accepted_keys::<RoutingFile>()),
        ("### `[limits]`", accepted_keys::<LimitsFile>()),
        (
            "### `[limits]`",
            accepted_keys::<AppLimitFile>()
                .into_iter()
                .map(|k| format!("apps.<id>.{k}"))
                .collect(),
        ),
        ("### `[redis]`", accepted_keys::<RedisFile>()),
        (
            "### `[security]`",
            accepted_keys::<crate::auth::SecurityFile>(),
        ),
        (
            "### `[policy]`",
            accepted_keys::<crate::policy::PolicyFile>(),
        ),
        ("### `[cdr]`", accepted_keys::<crate::cdr::CdrConfig>()),
        (
            "### `[callbacks]`",
            accepted_keys::<crate::callback::CallbackConfig>(),
        ),
        ("### `[links.<id>]`", accepted_keys::<LinkFile>()),
        ("### `[pools.<id>]`", accepted_keys::<PoolFile>()),
        (
            "### `[pools.<id>]`",
            accepted_keys::<PoolMemberFile>()
                .into_iter()
                .map(|k| format!("members[].{k}"))
                .collect(),
        ),
    ];
    for (title, keys) in cases {
        let text = section(title);
        assert!(!keys.is_empty());
        for key in keys {
            assert!(
                text.contains(&format!("| `{key}` |")),
                "{title} lacks a row for `{key}`"
            );
        }
    }
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    const SHIPPED_RULES: &str = include_str!("../../config/smpp_rules.toml");
    const SHIPPED_SMSGW: &str = include_str!("../../config/smsgw.toml");

    /// A shipped file with a few byte-level edits: mostly still TOML, often wrong in
    /// interesting places (types, ranges, arrays, headers).
    fn mutated(base: &'static str) -> impl Strategy<Value = String> {
        let edits = proptest::collection::vec(
            (
                any::<prop::sample::Index>(),
                0usize..4,
                "[\\[\\]{}=,.\"a-z0-9 \n-]{0,3}",
            ),
            1..6,
        );
        edits.prop_map(move |edits| {
            let mut text = base.to_string();
            for (at, cut, insert) in edits {
                let mut i = at.index(text.len() + 1);
                while !text.is_char_boundary(i) {
                    i -= 1;
                }
                let mut end = (i + cut).min(text.len());
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.replace_range(i..end, &insert);
            }
            text
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn mutated_rules_give_a_config_or_errors(rules in mutated(SHIPPED_RULES)) {
            if let Err(errs) = load_strs("", &rules) {
                prop_assert!(!errs.0.is_empty());
                prop_assert!(errs.0.iter().all(|e| !e.reason.is_empty()));
            }
        }

        #[test]
        fn mutated_gateway_file_gives_a_config_or_errors(smsgw in mutated(SHIPPED_SMSGW)) {
            if let Err(errs) = load_strs(&smsgw, LINK) {
                prop_assert!(!errs.0.is_empty());
            }
        }

        #[test]
        fn arbitrary_text_gives_a_config_or_errors(text in "[\\[\\]{}=,.\"'a-z0-9_ \n#-]{0,300}") {
            let _ = load_strs(&text, &text);
        }
    }
}

#[test]
fn redis_password_is_hidden_in_debug_output() {
    assert_eq!(
        redact_url_password("redis://u:pw@h:6379/0"),
        "redis://u:***@h:6379/0"
    );
    assert_eq!(redact_url_password("redis://:pw@h"), "redis://:***@h");
    assert_eq!(redact_url_password("redis://pw@h/0"), "redis://***@h/0");
    assert_eq!(redact_url_password("redis://h:6379/0"), "redis://h:6379/0");
    assert_eq!(
        redact_url_password("unix:///run/redis.sock"),
        "unix:///run/redis.sock"
    );
    let c = load_strs(
        "[redis]\nurl = \"redis://:topsecret@127.0.0.1:6379/0\"\n",
        LINK,
    )
    .unwrap();
    let debug = format!("{c:?}");
    assert!(!debug.contains("topsecret"), "{debug}");
    assert_eq!(
        c.redis.url.as_deref(),
        Some("redis://:topsecret@127.0.0.1:6379/0")
    );
}

#[test]
fn cdr_section_loads_resolves_dirs_and_checks_values() {
    let c = load_strs(
        "[cdr]\nsink = \"s3\"\ns3_bucket = \"b\"\nspool_dir = \"spool\"\nbatch_max_records = 5\n",
        LINK,
    )
    .unwrap();
    assert_eq!(c.cdr.sink, crate::cdr::SinkKind::S3);
    assert_eq!(c.cdr.batch_max_records, 5);
    // Relative to the working directory, like [state] path; the default needs no root.
    assert_eq!(c.cdr.spool_dir, PathBuf::from("spool"));
    assert_eq!(c.cdr.dir, PathBuf::from("var/cdr"));
    let errs = errors("[cdr]\nsink = \"s3\"\n", LINK);
    assert_eq!(errs.for_key("cdr").count(), 1, "{errs}");
    let errs = errors("[cdr]\nbatch_max_recs = 5\n", LINK);
    assert!(errs.for_key("cdr.batch_max_recs").count() == 1, "{errs}");
}

#[test]
fn memory_backend_parses_with_its_bound() {
    let c = load_strs("[state]\nbackend = \"memory\"\n", LINK).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.state.backend, StateBackend::Memory);
    assert_eq!(
        c.state.memory_max_records,
        crate::state::memory::DEFAULT_MAX_RECORDS
    );
    let c = load_strs(
        "[state]\nbackend = \"memory\"\nmemory_max_records = 5000\n",
        LINK,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.state.memory_max_records, 5000);
    let errs = errors("[state]\nmemory_max_records = 0\n", LINK);
    assert_error(
        &errs,
        "smsgw.toml",
        "state.memory_max_records",
        "1..=100000000",
    );
}
