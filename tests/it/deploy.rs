//! `deploy/`: the systemd unit's command line is one `dram` parses, the
//! Dockerfile runs the same, and `deploy/dram.toml` is a valid config that
//! refuses to start without the secrets its exposed listeners need.

use std::path::{Path, PathBuf};

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file)
}

#[test]
fn the_unit_and_the_dockerfile_run_dram_with_its_config() {
    let unit = std::fs::read_to_string(deploy("dram.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/dram"));
    let args: Vec<&str> = words.collect();
    assert_eq!(args, ["serve", "--config", "/etc/dram/dram.toml"]);
    // The same arguments (the config here) parse: `--help` stops after.
    let config = deploy("dram.toml");
    let parsed = std::process::Command::new(crate::support::dram_binary())
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--help")
        .output()
        .unwrap();
    assert!(parsed.status.success(), "{parsed:?}");
    let dockerfile = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(r#"CMD ["serve", "--config", "/etc/dram/dram.toml"]"#)
            && dockerfile.contains("COPY deploy/dram.toml /etc/dram/dram.toml"),
        "{dockerfile}"
    );

    // The config: refused by name without the secrets (the unit and the
    // container give them in the environment); valid with them.
    let refused = dram::Config::from_file(&config).unwrap_err().to_string();
    assert!(refused.contains("DRAM_ADMIN_TOKEN"), "{refused}");
    let dir = tempfile::tempdir().unwrap();
    let with_secrets = dir.path().join("dram.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &with_secrets,
        format!(
            "{text}\n[auth]\nadmin_token = \"{}\"\ncluster_secret = \"{}\"\n",
            "a".repeat(32),
            "b".repeat(32)
        ),
    )
    .unwrap();
    let config = dram::Config::from_file(&with_secrets).unwrap();
    assert_eq!(config.node.http_listen, "0.0.0.0:7070");
    assert_eq!(config.pg.listen, "0.0.0.0:5433");
}
