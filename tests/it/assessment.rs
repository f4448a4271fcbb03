//! Offline assessment (issue 7 part 2), compared with WES-NG.
//!
//! WES-NG 1.0.3 (the independent tool) and the relay both read
//! `<shared data>/msrc-catalog/definitions.zip` and every `systeminfo` file
//! of `<shared data>/windows-systeminfo`. Where both name the same product,
//! their missing KBs and the CVEs of those KBs must be equal. Where they
//! differ, every difference must be explained by one of the reasons this
//! test declares for the file (and checks against the catalog), and each
//! declared reason must explain at least one difference.
//!
//! Rows without a `BulletinKB` (Edge Chromium, Defender, Azure Linux, …)
//! name no update: WES-NG prints their CVEs on every machine whatever is
//! installed, the relay leaves them out; they are counted, not compared.
//!
//! The same files translated into six other languages (by
//! `tests/tools/translate_systeminfo.py`) must give the English answer.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use relay_core::catalog::{self, Catalog, WindowsProduct};
use relay_tests::harness::RelayProcess;
use relay_tests::profiles::default_data_dir;
use serde_json::{json, Value};

use crate::support::Api;

const WESNG: &str = "wesng==1.0.3";

/// Room for a few hundred assessments a minute from one key.
const LIMITS: &str = "[limits]\nwrite_per_minute = 6000\nwrite_burst = 1000\nread_per_minute = 6000\nread_burst = 1000\n";

/// Why the two tools may disagree on a file; each is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Reason {
    /// WES-NG maps the build to another product: its build table stops at
    /// 22000, so 10 22H2 (19045) becomes 21H2 and every Windows 11 becomes
    /// `Windows 11 for x64-based Systems` (2 rows in the catalog). The relay
    /// is right: the catalog lists each version as its own product.
    /// With `Some(build)`, the relay asked for WES-NG's product (that build)
    /// must give WES-NG's answer exactly.
    WesProduct(Option<u32>),
    /// WES-NG matches product names as substrings, so it also takes in other
    /// products: `Windows Server 2022, 23H2 Edition`, `… Datacenter: Azure
    /// Edition`, `Windows HLK/ADK for Windows Server …`. The relay is right:
    /// those are not the machine's OS.
    WesOtherProducts,
    /// WES-NG follows supersedence only along rows of the machine's product;
    /// the KB it lists is superseded, through links listed on other
    /// products' rows, by an installed KB or by a newer missing one. The
    /// relay is right: an update superseded by an installed one is not
    /// missing, and one superseded by a missing one is replaced by it.
    SupersededOutsideWesView,
    /// WES-NG matches product names case-sensitively; the catalog spells
    /// most Windows 8.1 rows `… x64-based systems`, which WES-NG never
    /// reads. The relay is right.
    CaseOfProductName,
    /// WES-NG's Server Core de-duplication drops, for a CVE that has Server
    /// Core rows, every row without a Server Core twin (KB4016635 and
    /// KB4022723 for CVE-2017-0143 on Server 2016). The relay is right by
    /// the catalog, which lists no update superseding them.
    WesServerCoreDedup,
    /// WES-NG lists `BulletinKB` values that are no KB number (`Release
    /// Notes`, `Update Information`): there is nothing to install, and the
    /// relay leaves them out like the rows without a KB.
    NotAKbNumber,
}

use Reason::*;

/// Per file: the product WES-NG names, and the reasons for differences.
const CASES: [(&str, &str, &[Reason]); 11] = [
    (
        "10_1809_x64_education_en-us_systeminfo.txt",
        "Windows 10 Version 1809 for x64-based Systems",
        &[NotAKbNumber],
    ),
    (
        "10_21H2_x64_pro_systeminfo.txt",
        "Windows 10 Version 21H2 for x64-based Systems",
        &[NotAKbNumber],
    ),
    (
        "10_22H2_x64_enterprise_en-us_systeminfo.txt",
        "Windows 10 Version 21H2 for x64-based Systems",
        &[WesProduct(Some(19044))],
    ),
    (
        "11_21H2_x64_enterprise_systeminfo.txt",
        "Windows 11 for x64-based Systems",
        &[WesProduct(None)],
    ),
    (
        "11_22H2_x64_home-single-language_systeminfo.txt",
        "Windows 11 for x64-based Systems",
        &[WesProduct(None)],
    ),
    (
        "11_23H2_x64_enterprise_systeminfo.txt",
        "Windows 11 for x64-based Systems",
        &[WesProduct(None)],
    ),
    (
        "7_sp1_x64_enterprise_en-us_A_systeminfo.txt",
        "Windows 7 for x64-based Systems Service Pack 1",
        &[SupersededOutsideWesView],
    ),
    (
        "8.1_u1_x64_enterprise_en-us_systeminfo.txt",
        "Windows 8.1 for x64-based Systems",
        &[SupersededOutsideWesView, CaseOfProductName],
    ),
    (
        "srv_2016_1607_datacenter_en-us_systeminfo.txt",
        "Windows Server 2016",
        &[WesServerCoreDedup, NotAKbNumber],
    ),
    (
        "srv_2019_rtm_datacenter_en-us_systeminfo.txt",
        "Windows Server 2019",
        &[WesOtherProducts],
    ),
    (
        "srv_2022_systeminfo.txt",
        "Windows Server 2022",
        &[WesOtherProducts],
    ),
];

/// What WES-NG printed for one file.
#[derive(Debug, Default)]
struct WesAnswer {
    product: String,
    /// KB -> CVEs of its rows.
    kbs: HashMap<String, BTreeSet<String>>,
    /// KB -> the products of its rows.
    kb_products: HashMap<String, BTreeSet<String>>,
    /// Rows with no KB.
    rows_without_kb: usize,
}

impl WesAnswer {
    fn cves(&self) -> BTreeSet<String> {
        self.kbs.values().flatten().cloned().collect()
    }
}

fn is_cve(text: &str) -> bool {
    relay_core::inventory::normalize_cve(text).is_some_and(|c| c == text)
}

/// Runs WES-NG on `file`. Its output is kept beside the tool's environment,
/// keyed on the WES-NG version and the exact bytes of the definitions and
/// the file, so a later run with the same inputs reuses it (WES-NG reads the
/// whole 136 MB CSV on every run).
fn run_wes(wes: &Path, definitions: &Path, file: &Path) -> WesAnswer {
    use sha2::{Digest, Sha256};
    let mut key = Sha256::new();
    key.update(WESNG.as_bytes());
    key.update(std::fs::read(definitions).expect("definitions"));
    key.update(std::fs::read(file).expect("systeminfo"));
    let cache = relay_tests::pytools::tools_root().join("wes-output");
    std::fs::create_dir_all(&cache).expect("cache dir");
    let stem = cache.join(hex::encode(key.finalize()));
    let csv_path = stem.with_extension("csv");
    let out_path = stem.with_extension("out");
    if !out_path.exists() {
        let partial = stem.with_extension("csv.partial");
        let _ = std::fs::remove_file(&partial);
        let out = Command::new(wes)
            .arg("--definitions")
            .arg(definitions)
            .arg(file)
            .arg("-o")
            .arg(&partial)
            .output()
            .expect("wes runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "wes failed on {}: {stdout}",
            file.display()
        );
        if partial.exists() {
            std::fs::rename(&partial, &csv_path).expect("keep the csv");
        }
        std::fs::write(&out_path, out.stdout.as_slice()).expect("keep the output");
    }
    let stdout = std::fs::read_to_string(&out_path).expect("wes output");
    let mut answer = WesAnswer {
        product: stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("- Name: "))
            .expect("wes names the product")
            .to_owned(),
        ..WesAnswer::default()
    };
    if !csv_path.exists() {
        assert!(stdout.contains("No vulnerabilities found"), "{stdout}");
        return answer;
    }
    let mut reader = csv::Reader::from_path(&csv_path).expect("wes csv");
    for row in reader.deserialize::<HashMap<String, String>>() {
        let row = row.expect("a wes row");
        let kb = row["BulletinKB"].trim().to_owned();
        if kb.is_empty() {
            answer.rows_without_kb += 1;
            continue;
        }
        let cves = answer.kbs.entry(kb.clone()).or_default();
        if is_cve(&row["CVE"]) {
            cves.insert(row["CVE"].clone());
        }
        answer
            .kb_products
            .entry(kb)
            .or_default()
            .insert(row["AffectedProduct"].clone());
    }
    answer
}

/// The relay's answer: missing KB (digits) -> its CVEs.
fn relay_kbs(answer: &Value) -> HashMap<String, BTreeSet<String>> {
    answer["missing"]
        .as_array()
        .expect("missing")
        .iter()
        .map(|m| {
            let kb = m["kb"]
                .as_str()
                .expect("kb")
                .trim_start_matches("KB")
                .to_owned();
            let cves = m["cves"]
                .as_array()
                .expect("cves")
                .iter()
                .map(|c| c.as_str().expect("cve").to_owned())
                .collect();
            (kb, cves)
        })
        .collect()
}

/// The catalog, indexed for explaining differences.
struct Explainer {
    catalog: Catalog,
    kb_rows: HashMap<u32, Vec<usize>>,
}

impl Explainer {
    fn new(catalog: Catalog) -> Self {
        let mut kb_rows: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, row) in catalog.rows().iter().enumerate() {
            kb_rows.entry(row.kb).or_default().push(i);
        }
        Self { catalog, kb_rows }
    }

    fn ids(&self, kbs: impl IntoIterator<Item = String>) -> Vec<u32> {
        kbs.into_iter()
            .filter_map(|k| self.catalog.kb_id(k.trim_start_matches("KB")))
            .collect()
    }

    /// Why WES-NG lists `kb` and the relay does not.
    fn only_wes(
        &self,
        kb: &str,
        wes: &WesAnswer,
        relay_keys: &HashSet<String>,
        covered: &HashSet<u32>,
    ) -> Option<Reason> {
        let products = &wes.kb_products[kb];
        if products
            .iter()
            .all(|p| !relay_keys.contains(&catalog::product_key(p)))
        {
            return Some(WesOtherProducts);
        }
        if !kb.bytes().all(|b| b.is_ascii_digit()) {
            return Some(NotAKbNumber);
        }
        let id = self.catalog.kb_id(kb)?;
        covered.contains(&id).then_some(SupersededOutsideWesView)
    }

    /// Whether every row of `kb` naming `cve` for the relay's product is
    /// spelled so that WES-NG's case-sensitive filter misses it.
    fn cve_rows_in_other_case(
        &self,
        kb: &str,
        cve: &str,
        wes: &WesAnswer,
        relay_keys: &HashSet<String>,
    ) -> bool {
        let Some(id) = self.catalog.kb_id(kb) else {
            return false;
        };
        self.kb_rows[&id]
            .iter()
            .map(|&i| &self.catalog.rows()[i])
            .filter(|r| self.catalog.str(r.cve) == cve)
            .filter(|r| relay_keys.contains(&catalog::product_key(self.catalog.str(r.product))))
            .all(|r| !self.catalog.str(r.product).contains(&wes.product))
    }

    /// Why the relay lists `kb` and WES-NG does not.
    fn only_relay(
        &self,
        kb: &str,
        wes: &WesAnswer,
        relay_keys: &HashSet<String>,
        server: bool,
    ) -> Option<Reason> {
        let id = self.catalog.kb_id(kb)?;
        let rows: Vec<&catalog::Row> = self.kb_rows[&id]
            .iter()
            .map(|&i| &self.catalog.rows()[i])
            .filter(|r| relay_keys.contains(&catalog::product_key(self.catalog.str(r.product))))
            .collect();
        if rows
            .iter()
            .all(|r| !self.catalog.str(r.product).contains(&wes.product))
        {
            return Some(CaseOfProductName);
        }
        if server {
            // A CVE of this KB has Server Core rows elsewhere, but this KB none.
            let core_of_kb = rows
                .iter()
                .any(|r| self.catalog.str(r.product).contains("Server Core"));
            let cve_has_core = rows.iter().any(|r| {
                self.catalog.rows().iter().any(|o| {
                    o.cve == r.cve
                        && self.catalog.str(o.product).contains(&wes.product)
                        && self.catalog.str(o.product).contains("Server Core")
                })
            });
            if !core_of_kb && cve_has_core {
                return Some(WesServerCoreDedup);
            }
        }
        None
    }
}

fn relay_product(build: u32, arch: catalog::Arch, server: bool) -> WindowsProduct {
    catalog::products::windows_product(build, arch, server).expect("a known build")
}

async fn assess_text(api: &Api, body: Vec<u8>) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/api/assessments", api.base))
        .bearer_auth(&api.key)
        .header("content-type", "text/plain; charset=utf-8")
        .body(body)
        .send()
        .await
        .expect("the relay answers");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("a body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn systeminfo_files() -> Vec<PathBuf> {
    let dir = default_data_dir().join("windows-systeminfo");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("systeminfo dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_wesng_agree_or_the_difference_is_named() {
    let definitions = default_data_dir().join("msrc-catalog/definitions.zip");
    let wes = relay_tests::pytools::ensure(WESNG, "wes").expect("WES-NG installs from PyPI");
    let relay = RelayProcess::start(LIMITS).expect("the relay starts");
    let api = Api::new(&relay);

    // No catalog yet: 409 naming what is missing.
    let first = &systeminfo_files()[0];
    let (status, body) = assess_text(&api, std::fs::read(first).expect("read")).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("catalog")),
        "{body}"
    );

    let out = relay
        .cli(&["import-catalog", definitions.to_str().expect("utf-8")])
        .expect("import-catalog through the running relay");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("catalog 2026-06-28 imported"), "{printed}");

    let explainer = Explainer::new(
        catalog::parse_definitions(&std::fs::read(&definitions).expect("definitions"))
            .expect("catalog"),
    );
    let files = systeminfo_files();
    assert_eq!(files.len(), CASES.len());
    // WES-NG reads the whole 136 MB CSV on every run (several seconds):
    // three runs at a time.
    let mut wes_answers: Vec<WesAnswer> = Vec::new();
    for chunk in files.chunks(3) {
        let answers: Vec<WesAnswer> = std::thread::scope(|s| {
            let runs: Vec<_> = chunk
                .iter()
                .map(|f| s.spawn(|| run_wes(&wes, &definitions, f)))
                .collect();
            runs.into_iter()
                .map(|r| r.join().expect("a wes run"))
                .collect()
        });
        wes_answers.extend(answers);
    }
    for ((file, (name, wes_product, reasons)), wes_answer) in
        files.iter().zip(CASES).zip(wes_answers)
    {
        assert!(file.ends_with(name), "{} vs {name}", file.display());
        let (status, relay_answer) = assess_text(&api, std::fs::read(file).expect("read")).await;
        assert_eq!(status, 200, "{name}: {relay_answer}");
        assert_eq!(wes_answer.product, wes_product, "{name}: WES-NG's product");
        let info = relay_tests::catalog::read_systeminfo(file).expect("systeminfo");
        let product = relay_product(info.build, info.arch, info.server);
        assert_eq!(relay_answer["product"], product.name.as_str(), "{name}");

        let relay_kb_cves = relay_kbs(&relay_answer);
        let relay_set: BTreeSet<&String> = relay_kb_cves.keys().collect();
        let wes_set: BTreeSet<&String> = wes_answer.kbs.keys().collect();
        let relay_cves: BTreeSet<String> = relay_kb_cves.values().flatten().cloned().collect();
        let all_open: BTreeSet<String> = relay_answer["cves"]
            .as_array()
            .expect("cves")
            .iter()
            .map(|c| c["cve_id"].as_str().expect("id").to_owned())
            .collect();
        assert!(
            relay_cves.is_subset(&all_open),
            "{name}: missing KBs' CVEs are open"
        );
        println!(
            "{name}: relay {} KBs/{} CVEs ({} open), WES-NG {} KBs/{} CVEs (+{} rows without a KB)",
            relay_set.len(),
            relay_cves.len(),
            all_open.len(),
            wes_set.len(),
            wes_answer.cves().len(),
            wes_answer.rows_without_kb
        );

        let mut found: BTreeSet<Reason> = BTreeSet::new();
        if product.name != wes_answer.product {
            let declared = reasons.iter().find(|r| matches!(r, WesProduct(_)));
            let Some(WesProduct(build)) = declared else {
                panic!(
                    "{name}: products differ ({} vs {}) without a declared reason",
                    product.name, wes_answer.product
                );
            };
            found.insert(WesProduct(*build));
            if let Some(build) = build {
                let installed: Vec<String> = info.hotfixes.clone();
                let reply = api
                    .post(
                        "/api/assessments",
                        json!({"os_build": build, "installed_kbs": installed}),
                    )
                    .await;
                assert_eq!(reply.status, 200, "{}", reply.text);
                assert_eq!(reply.body["product"], wes_answer.product.as_str(), "{name}");
                let as_wes = relay_kbs(&reply.body);
                // Up to the KB values that are no KB number (see NotAKbNumber).
                let numbered: HashMap<&String, &BTreeSet<String>> = wes_answer
                    .kbs
                    .iter()
                    .filter(|(kb, _)| kb.bytes().all(|b| b.is_ascii_digit()))
                    .collect();
                assert_eq!(
                    as_wes.keys().collect::<BTreeSet<_>>(),
                    numbered.keys().copied().collect::<BTreeSet<_>>(),
                    "{name}: the relay on WES-NG's product gives WES-NG's KBs"
                );
                let as_wes_cves: BTreeSet<String> = as_wes.values().flatten().cloned().collect();
                let wes_cves: BTreeSet<String> =
                    numbered.values().copied().flatten().cloned().collect();
                assert_eq!(as_wes_cves, wes_cves, "{name}: and their CVEs");
            }
            assert_eq!(found.iter().copied().collect::<Vec<_>>(), reasons, "{name}");
            continue;
        }

        // Same product: every difference needs a reason.
        let relay_keys: HashSet<String> = explainer
            .catalog
            .product_keys_of(&product)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let mut roots = explainer.ids(info.hotfixes.iter().cloned());
        roots.extend(explainer.ids(relay_kb_cves.keys().cloned()));
        let covered = explainer.catalog.superseded_by(roots);
        let mut unexplained = Vec::new();
        let mut explained_cves: BTreeSet<String> = BTreeSet::new();
        for kb in wes_set.difference(&relay_set) {
            match explainer.only_wes(kb, &wes_answer, &relay_keys, &covered) {
                Some(r) => {
                    found.insert(r);
                    explained_cves.extend(wes_answer.kbs[*kb].iter().cloned());
                }
                None => unexplained.push(format!("only WES-NG: KB{kb}")),
            }
        }
        for kb in relay_set.difference(&wes_set) {
            match explainer.only_relay(kb, &wes_answer, &relay_keys, info.server) {
                Some(r) => {
                    found.insert(r);
                    explained_cves.extend(relay_kb_cves[*kb].iter().cloned());
                }
                None => unexplained.push(format!("only relay: KB{kb}")),
            }
        }
        let wes_cves = wes_answer.cves();
        for cve in wes_cves.symmetric_difference(&relay_cves) {
            if explained_cves.contains(cve) {
                continue;
            }
            // A CVE of a KB both list, read by the relay from rows WES-NG
            // skips for the case of their product name.
            let kbs: Vec<&String> = relay_kb_cves
                .iter()
                .filter(|(_, cves)| cves.contains(cve))
                .map(|(kb, _)| kb)
                .collect();
            if !wes_cves.contains(cve)
                && !kbs.is_empty()
                && kbs
                    .iter()
                    .all(|kb| explainer.cve_rows_in_other_case(kb, cve, &wes_answer, &relay_keys))
            {
                found.insert(CaseOfProductName);
                continue;
            }
            unexplained.push(format!("CVE {cve}"));
        }
        assert!(
            unexplained.is_empty(),
            "{name}: unexplained differences {unexplained:?}"
        );
        assert_eq!(
            found.iter().copied().collect::<Vec<_>>(),
            reasons,
            "{name}: the declared reasons are the ones found"
        );
        if reasons.iter().all(|r| *r == NotAKbNumber) {
            let numbered: BTreeSet<&String> = wes_set
                .iter()
                .copied()
                .filter(|kb| kb.bytes().all(|b| b.is_ascii_digit()))
                .collect();
            assert_eq!(relay_set, numbered, "{name}: the same missing KBs");
            assert!(relay_cves.is_subset(&wes_cves), "{name}: the same CVEs");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translated_systeminfo_gives_the_english_answer() {
    let definitions = default_data_dir().join("msrc-catalog/definitions.zip");
    let relay = RelayProcess::start(LIMITS).expect("the relay starts");
    let api = Api::new(&relay);
    relay
        .cli(&["import-catalog", definitions.to_str().expect("utf-8")])
        .expect("import-catalog");
    let english_dir = default_data_dir().join("windows-systeminfo");
    let out = tempfile::tempdir().expect("tempdir");
    let script =
        relay_tests::profiles::workspace_root().join("tests/tools/translate_systeminfo.py");
    let status = Command::new("python3")
        .arg(&script)
        .arg(&english_dir)
        .arg(out.path())
        .status()
        .expect("python3 runs");
    assert!(status.success(), "the translation script ran");
    let languages = ["de", "fr", "es", "it", "pt", "nl"];
    for file in systeminfo_files() {
        let name = file.file_name().expect("name").to_owned();
        let (status, english) = assess_text(&api, std::fs::read(&file).expect("read")).await;
        assert_eq!(status, 200, "{english}");
        assert_eq!(english["systeminfo"]["language"], "en");
        for lang in languages {
            let translated = std::fs::read(out.path().join(lang).join(&name)).expect("translated");
            assert_ne!(
                translated,
                std::fs::read(&file).expect("read"),
                "{lang} differs"
            );
            let (status, answer) = assess_text(&api, translated).await;
            assert_eq!(status, 200, "{lang} {name:?}: {answer}");
            assert_eq!(answer["systeminfo"]["language"], lang, "{name:?}");
            for field in ["product", "build", "installed_kbs", "missing", "cves"] {
                assert_eq!(answer[field], english[field], "{lang} {name:?} {field}");
            }
            for field in ["host_name", "install_date", "os_name", "os_version"] {
                assert_eq!(
                    answer["systeminfo"][field], english["systeminfo"][field],
                    "{lang} {name:?} {field}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_devices_show_their_assessment() {
    let definitions = default_data_dir().join("msrc-catalog/definitions.zip");
    let (relay, _fleet, _client) = crate::support::relay_with_fleet(11, 7, "").await;
    let api = Api::new(&relay);
    relay
        .cli(&["import-catalog", definitions.to_str().expect("utf-8")])
        .expect("import-catalog");

    let (status, body) = assess_text(&api, b"Host Name: x\nnothing else\n".to_vec()).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["field"], "systeminfo", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("OS version")),
        "{body}"
    );
    for (bad, field) in [
        (json!({"os_build": "ten"}), "os_build"),
        (json!({"os_build": 12345}), "os_build"),
        (
            json!({"os_build": "10.0.19045", "installed_kbs": ["KBx"]}),
            "installed_kbs",
        ),
        (json!({"os_build": 19045, "arch": "sparc"}), "arch"),
        (json!({"installed_kbs": []}), "body"),
    ] {
        let reply = api.post("/api/assessments", bad.clone()).await;
        assert_eq!(reply.status, 422, "{bad}: {}", reply.text);
        assert_eq!(
            reply.body["errors"][0]["field"], field,
            "{bad}: {}",
            reply.text
        );
    }
    let reply = api
        .post(
            "/api/assessments",
            json!({"os_build": "10.0.22631.2861", "installed_kbs": []}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        reply.body["product"],
        "Windows 11 Version 23H2 for x64-based Systems"
    );
    assert_eq!(reply.body["catalog_version"], "2026-06-28");
    let reply = api
        .post(
            "/api/assessments",
            json!({"os_build": 20348, "os_name": "Microsoft Windows Server 2022 Standard"}),
        )
        .await;
    assert_eq!(
        reply.body["product"], "Windows Server 2022",
        "{}",
        reply.text
    );

    // Known-exploited flags come from the KEV catalog the relay holds.
    let kev_file = default_data_dir().join("kev/known_exploited_vulnerabilities.json");
    relay
        .cli(&["import-kev", kev_file.to_str().expect("utf-8")])
        .expect("import-kev");
    let kev: Value = serde_json::from_slice(&std::fs::read(&kev_file).expect("kev")).expect("json");
    let kev: HashSet<&str> = kev["vulnerabilities"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|v| v["cveID"].as_str().expect("id"))
        .collect();
    let win7 =
        default_data_dir().join("windows-systeminfo/7_sp1_x64_enterprise_en-us_A_systeminfo.txt");
    let (status, body) = assess_text(&api, std::fs::read(win7).expect("read")).await;
    assert_eq!(status, 200, "{body}");
    let mut flagged = 0;
    for c in body["cves"].as_array().expect("cves") {
        let id = c["cve_id"].as_str().expect("id");
        assert_eq!(c["known_exploited"] == true, kev.contains(id), "{id}");
        flagged += usize::from(c["known_exploited"] == true);
    }
    assert!(
        flagged > 10,
        "an unpatched Windows 7 has known-exploited CVEs open: {flagged}"
    );

    // A catalog with a malformed row is refused whole, naming the place,
    // and the catalog in use stays.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad_zip = dir.path().join("definitions.zip");
    {
        use std::io::Write;
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&bad_zip).expect("create"));
        let opts = zip::write::SimpleFileOptions::default();
        zip.start_file("CVEs_20270101.csv", opts).expect("zip");
        zip.write_all(
            b"\"DatePosted\",\"CVE\",\"BulletinKB\",\"Title\",\"AffectedProduct\",\"AffectedComponent\",\"Severity\",\"Impact\",\"Supersedes\",\"Exploits\"\n\
              \"20270112\",\"CVE-2027-0001\",\"5100001\",\"t\",\"Windows Server 2022\",\"\",\"Critical\",\"\",\"\",\"\"\n\
              \"2027-01-12\",\"CVE-2027-0002\",\"5100002\",\"t\",\"Windows Server 2022\",\"\",\"Critical\",\"\",\"\",\"\"\n",
        )
        .expect("zip");
        zip.finish().expect("zip");
    }
    let err = relay
        .cli(&["import-catalog", bad_zip.to_str().expect("utf-8")])
        .expect_err("a malformed catalog is refused");
    assert!(
        format!("{err:#}").contains("CVEs_20270101.csv line 3, column DatePosted"),
        "{err:#}"
    );
    let reply = api
        .post(
            "/api/assessments",
            json!({"os_build": 20348, "os_name": "Windows Server 2022"}),
        )
        .await;
    assert_eq!(
        reply.body["catalog_version"], "2026-06-28",
        "{}",
        reply.text
    );

    // Enrolled Windows devices that report a build get the assessment in
    // their detail, equal to what the relay answers for the same input.
    let devices = api.all("/api/devices", "devices", 100).await;
    let mut windows = 0;
    for d in devices.iter().filter(|d| d["os_family"] == "windows") {
        let id = d["device_id"].as_str().expect("id");
        let detail = api.get(&format!("/api/devices/{id}")).await;
        assert_eq!(detail.status, 200, "{}", detail.text);
        let assessment = &detail.body["assessment"];
        assert!(assessment.is_object(), "{}", detail.text);
        let reply = api
            .post(
                "/api/assessments",
                json!({
                    "os_build": detail.body["os_build"],
                    "installed_kbs": detail.body["installed_kbs"],
                    "os_name": detail.body["os_name"],
                }),
            )
            .await;
        assert_eq!(reply.body["missing"], assessment["missing"], "{id}");
        // The simulated agent reports exactly the updates the relay works out.
        let reported: BTreeSet<&str> = detail.body["updates"]
            .as_array()
            .expect("updates")
            .iter()
            .map(|u| u["kb"].as_str().expect("kb"))
            .collect();
        let assessed: BTreeSet<&str> = assessment["missing"]
            .as_array()
            .expect("missing")
            .iter()
            .map(|m| m["kb"].as_str().expect("kb"))
            .collect();
        assert!(
            reported.is_subset(&assessed),
            "{id}: {reported:?} vs {assessed:?}"
        );
        windows += 1;
    }
    assert!(windows >= 1, "the fleet has Windows devices");
}
