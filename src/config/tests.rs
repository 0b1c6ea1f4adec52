//! Tests of the configuration: defaults, the example file, validation.

use super::*;

#[test]
fn defaults_are_valid() {
    Config::default().validate().unwrap();
}

#[test]
fn example_file_parses_and_matches_defaults() {
    let text = include_str!("../../config.example.toml");
    let parsed: Config = toml::from_str(text).unwrap();
    parsed.validate().unwrap();
    let defaults = Config::default();
    assert_eq!(parsed.node.http_listen, defaults.node.http_listen);
    assert_eq!(parsed.store.url, defaults.store.url);
    assert_eq!(parsed.download.concurrency, defaults.download.concurrency);
    assert_eq!(parsed.trash.lifetime_secs, defaults.trash.lifetime_secs);
    assert_eq!(parsed.http.max_body_bytes, defaults.http.max_body_bytes);
    assert_eq!(parsed.query.timeout_ms, defaults.query.timeout_ms);
    assert_eq!(parsed.query.max_timeout_ms, defaults.query.max_timeout_ms);
    assert_eq!(
        parsed.query.max_concurrent_maps,
        defaults.query.max_concurrent_maps
    );
    assert_eq!(
        serde_json::to_value(&parsed.http).unwrap(),
        serde_json::to_value(&defaults.http).unwrap()
    );
    assert_eq!(
        serde_json::to_value(&parsed.query).unwrap(),
        serde_json::to_value(&defaults.query).unwrap()
    );
    assert_eq!(
        serde_json::to_value(&parsed.pg).unwrap(),
        serde_json::to_value(&defaults.pg).unwrap()
    );
    assert_eq!(
        serde_json::to_value(&parsed.cluster).unwrap(),
        serde_json::to_value(&defaults.cluster).unwrap()
    );
    assert_eq!(
        serde_json::to_value(&parsed.backup).unwrap(),
        serde_json::to_value(&defaults.backup).unwrap()
    );
}

#[test]
fn validate_names_the_field() {
    let mut config = Config::default();
    config.disks.push(DiskConfig {
        path: "/tmp/x".into(),
        high_watermark: 1.5,
        max_bytes: None,
    });
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("disks[0].high_watermark"), "{err}");

    let mut config = Config::default();
    config.node.http_listen = "nope".into();
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("node.http_listen"), "{err}");

    let mut config = Config::default();
    config.cluster.seeds = vec!["127.0.0.1".into()];
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("cluster.seeds[0]"), "{err}");

    let mut config = Config::default();
    config.cluster.gossip_listen = "0.0.0.0:7071".into();
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("cluster.gossip_advertise"), "{err}");

    // Reachable from other machines: closed unless told otherwise.
    let mut config = Config::default();
    config.node.http_listen = "0.0.0.0:7070".into();
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("auth.admin_token") && err.contains("node.http_listen"),
        "{err}"
    );
    config.auth.admin_token = Some("a".into());
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("auth.cluster_secret"), "{err}");
    config.auth.cluster_secret = Some("s".into());
    config.validate().unwrap();
    let mut config = Config::default();
    config.cluster.gossip_listen = "10.1.2.3:7071".into();
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("cluster.gossip_listen"), "{err}");
    config.auth.insecure = true;
    config.validate().unwrap();

    let mut config = Config::default();
    config.store.url = "ftp://x".into();
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("store.url"), "{err}");

    let mut config = Config::default();
    config.backup.url = Some("ftp://x".into());
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("backup.url"), "{err}");

    let mut config = Config::default();
    config.backup.keep = 0;
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("backup.keep"), "{err}");

    let mut config = Config::default();
    config.http.tls_cert = Some("cert.pem".into());
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("http.tls_key"), "{err}");
    config.http.tls_cert = None;
    config.http.tls_key = Some("key.pem".into());
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("http.tls_cert"), "{err}");

    for (field, set) in [
        (
            "http.header_timeout_ms",
            (|c| c.http.header_timeout_ms = 0) as fn(&mut Config),
        ),
        ("http.body_timeout_ms", |c| c.http.body_timeout_ms = 0),
        ("http.max_connections", |c| c.http.max_connections = 0),
        ("query.max_concurrent_queries", |c| {
            c.query.max_concurrent_queries = 0
        }),
        ("query.max_map_requests", |c| c.query.max_map_requests = 0),
        ("query.hedge_budget", |c| c.query.hedge_budget = 1.5),
        ("node.http_advertise", |c| {
            c.node.http_advertise = Some("no-port".into())
        }),
        ("query.hedge_budget", |c| c.query.hedge_budget = f64::NAN),
        ("cache.warm_queries", |c| c.cache.warm_queries = 10_001),
    ] {
        let mut config = Config::default();
        set(&mut config);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains(field), "{err}");
    }
}

#[test]
fn unknown_field_is_rejected() {
    let err = toml::from_str::<Config>("[node]\nidd = \"x\"\n").unwrap_err();
    assert!(err.to_string().contains("idd"), "{err}");
}

#[test]
fn a_renamed_field_is_read_under_its_old_name() {
    let config: Config = toml::from_str("[cluster]\ndead_node_grace_period_secs = 42\n").unwrap();
    assert_eq!(config.cluster.dead_member_grace_secs, 42);
    assert_eq!(Config::default().cluster.dead_member_grace_secs, 900);
}
