//! Courier bundles against the real binary: the air-gap round trip (a site
//! relay whose webhook cannot be reached exports; a second process verifies
//! and replays to a receiver that checks every signature; an inbound bundle
//! confirms; the next export is empty), and one test per kind of hostile
//! bundle, each asserting the message and that the store is exactly as
//! before (every record of a backup, the key list without its last-use
//! times).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use relay_core::clock::Timestamp;
use relay_core::courier::format::{self, BundleBuilder, Kind};
use relay_tests::harness::{free_port, relay_binary, RelayProcess};
use relay_tests::receiver::Receiver;
use relay_tests::{Fleet, RelayClient};
use serde_json::{json, Value};

use crate::support::{real_profiles, Api};

/// Fast webhook probing, generous limits, no scheduled snapshot during a test.
const QUIET: &str = "[limits]\nread_per_minute = 1000000\nread_burst = 100000\nwrite_per_minute = 1000000\nwrite_burst = 100000\n[webhooks]\nretry_base_s = 1\nretry_cap_s = 2\nprobe_interval_s = 1\ntimeout_s = 2\n[compliance]\ninterval_s = 2592000\n";

fn data_file(relative: &str) -> PathBuf {
    relay_tests::profiles::default_data_dir().join(relative)
}

fn kev_path() -> PathBuf {
    data_file("kev/known_exploited_vulnerabilities.json")
}

/// Runs the binary as the MSP would: no config, no relay.
fn msp(args: &[&str]) -> Output {
    Command::new(relay_binary().expect("the relay binary"))
        .args(args)
        .output()
        .expect("the MSP command runs")
}

fn ok_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// `(tree, key, value)` of one stored record.
type Record = (String, Vec<u8>, Vec<u8>);

/// A site relay that trusts one MSP key.
struct Site {
    relay: RelayProcess,
    api: Api,
    dir: tempfile::TempDir,
    key: PathBuf,
}

impl Site {
    async fn start(extra: &str) -> Site {
        let relay = RelayProcess::start(&format!("{QUIET}{extra}")).expect("relay");
        let api = Api::new(&relay);
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("msp.key");
        let out = msp(&["bundle", "keygen", "-o", key.to_str().expect("utf-8")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let public = format!("{}.pub", key.display());
        relay
            .cli(&["trust", "add", &public, "--name", "msp office"])
            .expect("trust add");
        Site {
            relay,
            api,
            dir,
            key,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn signing_key(&self) -> format::SigningKey {
        let text = std::fs::read_to_string(&self.key).expect("key file");
        format::parse_secret_key(&text).expect("a key")
    }

    /// `bundle build` in a separate process.
    fn build(&self, version: u64, kev: bool, changes: Option<Value>) -> PathBuf {
        let out = self.path(&format!("in-{version}-{}.tar", rand::random::<u32>()));
        let mut args: Vec<String> = vec![
            "bundle".into(),
            "build".into(),
            "--key".into(),
            self.key.display().to_string(),
            "--version".into(),
            version.to_string(),
            "-o".into(),
            out.display().to_string(),
        ];
        if kev {
            args.extend(["--kev".into(), kev_path().display().to_string()]);
        }
        if let Some(changes) = changes {
            let file = self.path(&format!("changes-{version}.json"));
            std::fs::write(&file, changes.to_string()).expect("write changes");
            args.extend(["--changes".into(), file.display().to_string()]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ok_json(&msp(&refs));
        out
    }

    fn import_cli(&self, file: &Path) -> Output {
        Command::new(relay_binary().expect("binary"))
            .arg("--config")
            .arg(self.relay.config_path())
            .arg("import-bundle")
            .arg(file)
            .output()
            .expect("the CLI runs")
    }

    async fn import_api(&self, bytes: Vec<u8>) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .post(format!("{}/api/bundles", self.relay.base_url))
            .bearer_auth(&self.relay.admin_key)
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .expect("the relay answers");
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Every record of the store (from a backup) but the audit trail, and
    /// the keys without their last-use times (which reads of the API move
    /// on their own).
    fn state(&self) -> (Vec<Record>, Value) {
        let file = self.path(&format!("backup-{}.bin", rand::random::<u32>()));
        self.relay
            .cli(&["backup", file.to_str().expect("utf-8")])
            .expect("backup");
        let records = backup_records(&std::fs::read(&file).expect("backup file"))
            .into_iter()
            // The audit trail records the refused attempts (and backups)
            // by design; it is a log of the relay, not its state.
            .filter(|(tree, _, _)| tree != "keys" && tree != "audit")
            .collect();
        let out = self.relay.cli(&["keys", "list"]).expect("keys list");
        let mut keys: Value = serde_json::from_slice(&out.stdout).expect("keys JSON");
        for key in keys["keys"].as_array_mut().expect("a list") {
            key.as_object_mut()
                .expect("an object")
                .remove("last_used_at");
        }
        (records, keys)
    }

    /// Sends `bytes` through the API and the CLI; both must refuse with
    /// `needle` in the message and leave the store exactly as it was.
    async fn refused(&self, bytes: Vec<u8>, status: u16, needle: &str) {
        let before = self.state();
        let (got, body) = self.import_api(bytes.clone()).await;
        assert_eq!(got, status, "{body}");
        let detail = body["detail"].as_str().unwrap_or("");
        assert!(
            detail.contains(needle),
            "API said {detail:?}, wanted {needle:?}"
        );

        let file = self.path(&format!("hostile-{}.tar", rand::random::<u32>()));
        std::fs::write(&file, &bytes).expect("write bundle");
        let out = self.import_cli(&file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the CLI applied a hostile bundle");
        assert!(
            stderr.contains(needle),
            "CLI said {stderr:?}, wanted {needle:?}"
        );

        let after = self.state();
        assert!(
            before.0.iter().any(|(tree, _, _)| tree == "kev"),
            "the backup was read"
        );
        assert_eq!(before.1, after.1, "the keys changed");
        assert_eq!(before.0.len(), after.0.len(), "the record count changed");
        assert!(before.0 == after.0, "a record changed");
    }

    /// A bundle signed with the MSP key from hand-made entries (what
    /// `bundle build` would refuse to make).
    fn signed(&self, version: u64, entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut builder = BundleBuilder::new(Kind::In, None, version, Timestamp(1_800_000_000));
        for (name, bytes) in entries {
            builder.add(name, bytes.clone());
        }
        builder.finish(&self.signing_key()).expect("packs")
    }

    /// A site that has applied bundle 5 (the KEV list and an exclusion).
    async fn with_state(extra: &str) -> Site {
        let site = Site::start(extra).await;
        let changes = json!({"exclusions": {"create": [
            {"kind": "kb", "value": "KB5034441", "reason": "breaks WinRE"}
        ]}});
        let file = site.build(5, true, Some(changes));
        let out = site.import_cli(&file);
        let body = ok_json(&out);
        assert_eq!(body["bundle_version"], 5);
        assert_eq!(body["applied"]["exclusions_created"], 1);
        assert!(body["applied"]["kev_entries"].as_u64().unwrap_or(0) > 1000);
        site
    }
}

/// `(tree, key, value)` of every record in a backup file (see
/// relay-core/src/store/backup.rs for the layout).
fn backup_records(bytes: &[u8]) -> Vec<Record> {
    let u32_at =
        |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
    let mut at = 16 + 4;
    let header = u32_at(at);
    at += 4 + header;
    let mut tree = String::new();
    let mut out = Vec::new();
    loop {
        let tag = bytes[at];
        at += 1;
        match tag {
            0 => return out,
            1 => {
                let n = u32_at(at);
                tree = String::from_utf8_lossy(&bytes[at + 4..at + 4 + n]).into_owned();
                at += 4 + n;
            }
            2 => {
                let k = u32_at(at);
                let key = bytes[at + 4..at + 4 + k].to_vec();
                at += 4 + k;
                let v = u32_at(at);
                let value = bytes[at + 4..at + 4 + v].to_vec();
                at += 4 + v;
                out.push((tree.clone(), key, value));
            }
            other => panic!("unknown backup tag {other}"),
        }
    }
}

/// A ustar archive written by hand, so that it can hold what the courier's
/// own writer refuses to write (names that climb out, duplicates).
fn raw_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, content) in files {
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        header[100..107].copy_from_slice(b"0000644");
        header[108..115].copy_from_slice(b"0000000");
        header[116..123].copy_from_slice(b"0000000");
        header[124..135].copy_from_slice(format!("{:011o}", content.len()).as_bytes());
        header[136..147].copy_from_slice(b"00000000000");
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
        header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(content);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// A signed manifest listing `listed`, packed by hand with `files`.
fn hand_made(
    site: &Site,
    version: u64,
    listed: &[(&str, &[u8])],
    files: &[(&str, &[u8])],
) -> Vec<u8> {
    use sha2::Digest;
    let key = site.signing_key();
    let manifest = format::Manifest {
        format: format::FORMAT,
        kind: Kind::In,
        relay_id: None,
        version,
        created_at: Timestamp(1_800_000_000),
        signer: format::key_hex(&key.verifying_key()),
        entries: listed
            .iter()
            .map(|(path, bytes)| format::EntryDigest {
                path: path.to_string(),
                size: bytes.len() as u64,
                sha256: hex::encode(sha2::Sha256::digest(bytes)),
            })
            .collect(),
    };
    let manifest = serde_json::to_vec(&manifest).expect("manifest");
    let signature = format::sign_manifest(&key, &manifest);
    let mut all: Vec<(&str, &[u8])> = vec![
        (format::MANIFEST, &manifest),
        (format::SIGNATURE, &signature),
    ];
    all.extend_from_slice(files);
    raw_tar(&all)
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn air_gap_round_trip_replays_every_event_and_the_confirmed_export_is_empty() {
    let site = Site::start("").await;
    let api = &site.api;

    // The webhook points at a loopback port nobody listens on: the site
    // has no route to the MSP's receiver.
    let unreachable = format!("http://127.0.0.1:{}/hook", free_port().expect("port"));
    let created = api
        .post(
            "/api/webhooks",
            json!({"url": unreachable, "events": ["*"]}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let webhook_id = created.body["webhook_id"].as_str().expect("id").to_string();
    let secret = created.body["secret"].as_str().expect("secret").to_string();

    let client = RelayClient::new(&site.relay.base_url, 8).expect("client");
    let mut fleet = Fleet::new(real_profiles(), 6, 77).expect("fleet");
    let enrolled = fleet
        .enroll_all(&client, &site.relay.enrollment_token)
        .await
        .expect("enroll");
    assert_eq!(enrolled.failed, 0);
    fleet.checkin_round(&client).await.expect("check-in");
    let test = api
        .post(&format!("/api/webhooks/{webhook_id}/test"), json!({}))
        .await;
    assert_eq!(test.status, 202, "{}", test.text);
    let test_event = test.body["event_id"]
        .as_str()
        .expect("event id")
        .to_string();

    // Export through the API; the relay's public key through the CLI.
    let relay_key = String::from_utf8(site.relay.cli(&["relay-key"]).expect("relay-key").stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    let export = reqwest::Client::new()
        .get(format!("{}/api/bundles/export", site.relay.base_url))
        .bearer_auth(&site.relay.admin_key)
        .send()
        .await
        .expect("export");
    assert_eq!(export.status(), 200);
    let first = site.path("out-1.tar");
    std::fs::write(&first, export.bytes().await.expect("bytes")).expect("write");

    // The MSP's side, in separate processes with no relay.
    let first_s = first.to_str().expect("utf-8");
    let verified = ok_json(&msp(&["bundle", "verify", first_s, "--trust", &relay_key]));
    let events = verified["events"].as_u64().expect("a count") as usize;
    let version = verified["summary"]["export_version"]
        .as_u64()
        .expect("version");
    assert!(
        events >= 7,
        "6 enrollments and a test event at least: {verified}"
    );
    let parts = verified["parts"].to_string();
    assert!(parts.contains("inventory.json") && parts.contains("vulnerabilities.json"));
    let other = site.path("other.key");
    assert!(
        msp(&["bundle", "keygen", "-o", other.to_str().expect("utf-8")])
            .status
            .success()
    );
    let wrong = msp(&[
        "bundle",
        "verify",
        first_s,
        "--trust",
        &format!("{}.pub", site.path("other.key").display()),
    ]);
    assert!(
        !wrong.status.success(),
        "an export verified under a foreign key"
    );

    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let receiver = Receiver::start(any, None).await.expect("receiver");
    let replayed = ok_json(&msp(&[
        "bundle",
        "replay",
        first_s,
        "--trust",
        &relay_key,
        "--to",
        &receiver.url("/hook"),
    ]));
    assert_eq!(
        replayed["accepted"].as_u64(),
        Some(events as u64),
        "{replayed}"
    );

    let receipts = receiver.receipts();
    assert_eq!(receipts.len(), events);
    let now = now_unix();
    for r in &receipts {
        assert!(
            r.signed_by(&secret),
            "a replayed delivery does not verify: {r:?}"
        );
        let t: i64 = r
            .signature
            .split(',')
            .find_map(|p| p.strip_prefix("t="))
            .and_then(|t| t.parse().ok())
            .expect("a t= part");
        assert!(
            (now - t).abs() <= 300,
            "outside a receiver's 5-minute tolerance"
        );
        assert!(r.delivery.starts_with("dlv_"));
        assert_eq!(r.event, r.json()["type"].as_str().unwrap_or(""));
    }
    let ids: Vec<String> = receipts.iter().map(|r| r.event_id()).collect();
    assert!(ids.contains(&test_event));
    let enrolled_events = receipts
        .iter()
        .filter(|r| r.event == "device.enrolled")
        .count();
    assert_eq!(enrolled_events, 6);
    let mut sequences: Vec<u64> = receipts.iter().map(|r| r.sequence()).collect();
    assert!(
        sequences.windows(2).all(|w| w[0] < w[1]),
        "replayed in order"
    );
    sequences.dedup();
    assert_eq!(sequences.len(), events);

    // The MSP confirms in an inbound bundle, through the API.
    let confirm = site.build(1, false, Some(json!({"confirm_export": version})));
    let (status, body) = site
        .import_api(std::fs::read(&confirm).expect("bundle"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["bundle_version"], 1);
    assert_eq!(body["applied"]["export_confirmed"], version);
    let events_log = api.get("/api/relay").await;
    assert_eq!(events_log.status, 200);

    // The next export (through the CLI) carries nothing.
    let second = site.path("out-2.tar");
    site.relay
        .cli(&["export-bundle", second.to_str().expect("utf-8")])
        .expect("export-bundle");
    let verified = ok_json(&msp(&[
        "bundle",
        "verify",
        second.to_str().expect("utf-8"),
        "--trust",
        &relay_key,
    ]));
    assert_eq!(verified["events"], 0, "{verified}");
    assert_eq!(verified["parts"], json!([]), "{verified}");
    assert_eq!(verified["summary"]["confirmed_export_version"], version);
    assert_eq!(verified["summary"]["inbound_version_applied"], 1);

    // And only what happens after the confirmation comes next.
    let test = api
        .post(&format!("/api/webhooks/{webhook_id}/test"), json!({}))
        .await;
    let later = test.body["event_id"]
        .as_str()
        .expect("event id")
        .to_string();
    let third = site.path("out-3.tar");
    site.relay
        .cli(&["export-bundle", third.to_str().expect("utf-8")])
        .expect("export-bundle");
    // Replayed with fresh signatures made from the webhook's secret.
    let secret_file = site.path("whsec.txt");
    std::fs::write(&secret_file, &secret).expect("write secret");
    let rx2 = Receiver::start(any, None).await.expect("receiver");
    let replayed = ok_json(&msp(&[
        "bundle",
        "replay",
        third.to_str().expect("utf-8"),
        "--trust",
        &relay_key,
        "--to",
        &rx2.url("/hook"),
        "--resign-secret-file",
        secret_file.to_str().expect("utf-8"),
    ]));
    assert_eq!(replayed["accepted"], 1, "{replayed}");
    assert_eq!(rx2.receipts()[0].event_id(), later);
    assert!(rx2.receipts()[0].signed_by(&secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_bundle_is_refused_and_nothing_changes() {
    let site = Site::with_state("").await;
    let good = std::fs::read(site.build(6, true, None)).expect("bundle");

    let mut entry = good.clone();
    let at = entry
        .windows(7)
        .position(|w| w == b"CVE-202")
        .expect("a CVE in the KEV entry");
    entry[at + 5] = b'1';
    site.refused(entry, 422, "does not match its digest in the manifest")
        .await;

    let mut manifest = good.clone();
    let at = manifest
        .windows(9)
        .position(|w| w == b"\"version\"")
        .expect("the manifest's version");
    assert_eq!(&manifest[at + 9..at + 12], b": 6");
    manifest[at + 11] = b'7';
    site.refused(manifest, 422, "the signature does not verify")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_bundle_is_refused_and_nothing_changes() {
    let site = Site::with_state("").await;
    let good = std::fs::read(site.build(6, true, None)).expect("bundle");
    site.refused(good[..good.len() / 2 + 100].to_vec(), 422, "truncated")
        .await;
    // Cut on a block boundary inside the KEV entry.
    let cut = (good.len() / 2) / 512 * 512;
    site.refused(good[..cut].to_vec(), 422, "truncated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_signed_by_an_unknown_key_is_refused_and_nothing_changes() {
    let site = Site::with_state("").await;
    let stranger = site.path("stranger.key");
    assert!(
        msp(&["bundle", "keygen", "-o", stranger.to_str().expect("utf-8")])
            .status
            .success()
    );
    let changes = site.path("revoke.json");
    std::fs::write(&changes, json!({"revoke_keys": []}).to_string()).expect("write");
    let out = site.path("stranger.tar");
    ok_json(&msp(&[
        "bundle",
        "build",
        "--key",
        stranger.to_str().expect("utf-8"),
        "--kev",
        kev_path().to_str().expect("utf-8"),
        "--version",
        "99",
        "-o",
        out.to_str().expect("utf-8"),
    ]));
    site.refused(
        std::fs::read(&out).expect("bundle"),
        422,
        "a key this relay does not trust",
    )
    .await;

    // A key that was trusted and then removed is unknown too.
    let public = std::fs::read_to_string(format!("{}.pub", site.key.display())).expect("pub");
    site.relay
        .cli(&["trust", "remove", public.trim()])
        .expect("trust remove");
    let own =
        std::fs::read(site.build(7, false, Some(json!({"revoke_keys": []})))).expect("bundle");
    site.refused(own, 422, "a key this relay does not trust")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_or_replayed_bundle_is_refused_and_nothing_changes() {
    let site = Site::with_state("").await;
    let same = std::fs::read(site.build(5, true, None)).expect("bundle");
    site.refused(same, 422, "not newer than version 5 already applied")
        .await;
    let older = std::fs::read(site.build(2, true, None)).expect("bundle");
    site.refused(older, 422, "version 2, not newer than version 5")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_past_the_size_limit_is_refused_with_413_and_nothing_changes() {
    let site = Site::with_state("[courier]\nmax_bundle_bytes = 2097152\n").await;
    let catalog = data_file("msrc-catalog/definitions.zip");
    let out = site.path("big.tar");
    ok_json(&msp(&[
        "bundle",
        "build",
        "--key",
        site.key.to_str().expect("utf-8"),
        "--catalog",
        catalog.to_str().expect("utf-8"),
        "--version",
        "9",
        "-o",
        out.to_str().expect("utf-8"),
    ]));
    let bytes = std::fs::read(&out).expect("bundle");
    assert!(bytes.len() > 2 << 20);
    site.refused(bytes, 413, "2097152").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_that_climb_out_of_the_archive_are_refused_and_nothing_changes() {
    let site = Site::with_state("").await;
    let kev = std::fs::read(kev_path()).expect("kev");
    for name in ["../kev.json", "/etc/cron.d/kev.json", "a/../../kev.json"] {
        let bytes = hand_made(&site, 8, &[(name, &kev)], &[(name, &kev)]);
        site.refused(bytes, 422, "climbs out of the archive").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_entries_are_refused_and_nothing_changes() {
    let site = Site::with_state("").await;
    let kev = std::fs::read(kev_path()).expect("kev");
    let evil = br#"{"catalogVersion":"x","vulnerabilities":[]}"#;
    let bytes = hand_made(
        &site,
        8,
        &[("kev.json", &kev)],
        &[("kev.json", &kev), ("kev.json", evil)],
    );
    site.refused(bytes, 422, "`kev.json` appears twice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_catalog_and_kev_rows_are_refused_and_nothing_changes() {
    let site = Site::with_state("").await;

    let mut zip = std::io::Cursor::new(Vec::new());
    {
        use std::io::Write;
        let mut w = zip::ZipWriter::new(&mut zip);
        let opts = zip::write::SimpleFileOptions::default();
        w.start_file("CVEs_20260628.csv", opts).expect("zip");
        w.write_all(b"\"DatePosted\",\"CVE\",\"BulletinKB\",\"Title\",\"AffectedProduct\",\"AffectedComponent\",\"Severity\",\"Impact\",\"Supersedes\",\"Exploits\"\n").expect("zip");
        w.write_all(b"\"20240109\",\"CVE-2024-20666\",\"5034441\",\"t\",\"Windows 10 Version 22H2 for x64-based Systems\",\"c\",\"Important\",\"i\",\"\",\"\"\n").expect("zip");
        w.write_all(b"\"2024019\",\"CVE-2024-0001\",\"5034442\",\"t\",\"Windows 10 Version 22H2 for x64-based Systems\",\"c\",\"Important\",\"i\",\"\",\"\"\n").expect("zip");
        w.finish().expect("zip");
    }
    let bytes = site.signed(8, &[("definitions.zip", zip.into_inner())]);
    site.refused(bytes, 422, "line 3, column DatePosted").await;

    let kev = br#"{"catalogVersion":"2026.01.01","vulnerabilities":[{"cveID":"CVE-2021-44228"},{"cveID":"not-a-cve"}]}"#;
    let bytes = site.signed(8, &[("kev.json", kev.to_vec())]);
    site.refused(bytes, 422, "entry 1 has an invalid CVE id")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_change_refuses_the_whole_bundle() {
    let site = Site::with_state("").await;
    let kev = br#"{"catalogVersion":"2099.01.01","vulnerabilities":[{"cveID":"CVE-2021-44228"}]}"#;
    let changes = json!({
        "exclusions": {"create": [{"kind": "package", "value": "openssl"}]},
        "reboots": {"schedule": [{"device_id": "dev_01HZZZZZZZZZZZZZZZZZZZZZZZ", "at": "2099-01-01T00:00:00Z"}]},
    });
    let bytes = site.signed(
        8,
        &[
            ("kev.json", kev.to_vec()),
            ("changes.json", changes.to_string().into_bytes()),
        ],
    );
    site.refused(bytes, 422, "changes.reboots.schedule[0]: no such device")
        .await;

    let unknown = site.signed(9, &[("evil.sh", b"#!/bin/sh".to_vec())]);
    site.refused(unknown, 422, "`evil.sh` is not an entry this release knows")
        .await;

    // An outbound bundle is not an inbound one, even from a trusted key.
    let mut out = BundleBuilder::new(Kind::Out, None, 10, Timestamp(0));
    out.add("export.json", b"{}".to_vec());
    let bytes = out.finish(&site.signing_key()).expect("packs");
    site.refused(bytes, 422, "an outbound bundle where an inbound")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_from_the_office_apply_in_one_step_with_an_event() {
    let site = Site::with_state("").await;
    let api = &site.api;
    let client = RelayClient::new(&site.relay.base_url, 4).expect("client");
    let mut fleet = Fleet::new(real_profiles(), 2, 5).expect("fleet");
    fleet
        .enroll_all(&client, &site.relay.enrollment_token)
        .await
        .expect("enroll");
    fleet.checkin_round(&client).await.expect("check-in");
    let device = fleet.agents()[0].device_id().expect("enrolled").to_string();
    let victim = api
        .post(
            "/api/keys",
            json!({"name": "leaked", "user_id": site.relay.admin_user, "expires_in_days": 30}),
        )
        .await;
    assert_eq!(victim.status, 201, "{}", victim.text);
    let victim_id = victim.body["key_id"].as_str().expect("id").to_string();
    let victim_key = victim.body["key"].as_str().expect("key").to_string();

    let at = Timestamp(now_unix() + 86_400).to_string();
    let changes = json!({
        "exclusions": {
            "delete": [{"kind": "kb", "value": "KB5034441"}],
            "create": [{"kind": "package", "value": "openssl", "os_family": "linux", "reason": "pinned"}],
        },
        "reboots": {"schedule": [{"device_id": device, "at": at, "message": "office says so"}]},
        "revoke_keys": [victim_id],
    });
    let file = site.build(6, false, Some(changes));
    let body = ok_json(&site.import_cli(&file));
    assert_eq!(body["applied"]["exclusions_deleted"], 1, "{body}");
    assert_eq!(body["applied"]["exclusions_created"], 1);
    assert_eq!(body["applied"]["reboots_scheduled"], 1);
    assert_eq!(body["applied"]["keys_revoked"], 1);

    let exclusions = api.get("/api/patch-exclusions").await;
    let values: Vec<&str> = exclusions.body["exclusions"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["value"].as_str())
        .collect();
    assert_eq!(values, ["openssl"]);
    let revoked = Api::with_key(&site.relay, &victim_key)
        .get("/api/devices")
        .await;
    assert_eq!(revoked.status, 401);
    let reboots = api.get("/api/reboot-management").await;
    assert!(reboots.text.contains(&device), "{}", reboots.text);

    // Applying it recorded an event like any other change would.
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let receiver = Receiver::start(any, None).await.expect("receiver");
    let whk = api
        .post(
            "/api/webhooks",
            json!({"url": receiver.url("/hook"), "events": ["bundle.imported"]}),
        )
        .await;
    assert_eq!(
        whk.status, 201,
        "bundle.imported is subscribable: {}",
        whk.text
    );
    let bundle = site.build(7, false, Some(json!({"revoke_keys": []})));
    let (status, body) = site
        .import_api(std::fs::read(bundle).expect("bundle"))
        .await;
    assert_eq!(status, 200, "{body}");
    let arrived = receiver
        .wait_until(Duration::from_secs(15), |r| {
            r.iter().any(|r| r.event == "bundle.imported")
        })
        .await;
    assert!(arrived, "no bundle.imported event was delivered");
    let event = receiver.receipts()[0].json();
    assert_eq!(event["data"]["bundle_version"], 7);
    assert_eq!(event["data"]["applied"]["keys_revoked"], 0);
}
