//! The binary's own command line: config errors stop it with exit code 64
//! and name the key. (Having this test also makes `cargo test --workspace`
//! build the `patchpilot-relay` binary that the black-box suite starts.)

use std::process::Command;

fn relay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_patchpilot-relay"))
}

#[test]
fn a_bad_config_stops_with_64_and_names_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("relay.toml");
    for (text, key) in [
        ("[limits]\nread_burst = 0\n", "limits.read_burst"),
        ("[server]\nhttp_lisen = \"127.0.0.1:1\"\n", "http_lisen"),
        ("[limits]\nread_burst = \"many\"\n", "read_burst"),
    ] {
        std::fs::write(&path, text).expect("write");
        let out = relay()
            .arg("--config")
            .arg(&path)
            .arg("check-config")
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(64), "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{text}: {stderr}");
    }
}

#[test]
fn the_built_in_config_is_valid_and_keeps_mdns_off() {
    let out = relay().arg("check-config").output().expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("http_listen = \"127.0.0.1:8080\""), "{text}");
    let discovery = text
        .split("[discovery]")
        .nth(1)
        .expect("a discovery section");
    assert!(discovery.contains("enabled = false"), "{text}");
}

#[test]
fn the_cli_refuses_a_data_dir_without_a_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = relay()
        .arg("--data-dir")
        .arg(dir.path().join("nothing-here"))
        .args(["keys", "list"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no store"));
    assert!(
        !dir.path().join("nothing-here").exists(),
        "no empty store is created"
    );
}
