//! Device profiles built from real data, with an on-disk cache.
//!
//! * One Windows profile per `systeminfo` file in
//!   `<shared data>/windows-systeminfo`, its missing updates computed from
//!   `<shared data>/msrc-catalog/definitions.zip`.
//! * One Linux profile from this machine's dpkg/apt state (when `dpkg-query`
//!   exists).
//!
//! Building takes a few seconds (the catalog is 136 MB of CSV), so the result
//! is cached as JSON, keyed on the inputs' sizes and modification times.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::catalog::{read_catalog, read_systeminfo, Catalog, SystemInfo};
use crate::linux::{self, InstalledPackage};
use crate::protocol::{OsFamily, Update};

/// Bump when the profile format or the derivation changes.
pub const CACHE_VERSION: u32 = 4;

/// Environment variable naming the shared data directory.
pub const DATA_DIR_ENV: &str = "PATCHPILOT_SHARED_DATA";

/// The OS identity and update state of one real machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Where it came from: the systeminfo file name, or `dpkg:<host>`.
    pub source: String,
    pub host_name: String,
    pub os_family: OsFamily,
    /// e.g. `Windows 11 Enterprise`, `Debian GNU/Linux 12 (bookworm)`.
    pub os_name: String,
    /// e.g. `10.0.22631`, `12`.
    pub os_version: String,
    /// Windows build, e.g. `22631`.
    pub os_build: Option<String>,
    pub arch: String,
    /// Microsoft catalog product (Windows only).
    pub product: Option<String>,
    /// Installed KBs as `KB1234567` (Windows only).
    pub installed_kbs: Vec<String>,
    /// Installed packages (Linux only).
    pub installed_packages: Vec<InstalledPackage>,
    /// Missing updates, newest first.
    pub updates: Vec<Update>,
    /// Per update: indices of the other updates it supersedes (transitively).
    pub supersedes: Vec<Vec<u32>>,
}

impl Profile {
    /// Number of distinct CVEs over all missing updates.
    pub fn distinct_cves(&self) -> usize {
        let ids: std::collections::HashSet<&str> = self
            .updates
            .iter()
            .flat_map(|u| u.cves.iter().map(|c| c.id.as_str()))
            .collect();
        ids.len()
    }
}

/// The cargo workspace root (the parent of this crate's directory).
pub fn workspace_root() -> &'static Path {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest)
}

/// The shared data directory: `$PATCHPILOT_SHARED_DATA`, else
/// `../shared/data` relative to the workspace root.
pub fn default_data_dir() -> PathBuf {
    match std::env::var_os(DATA_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_root().parent().map_or_else(
            || PathBuf::from("../shared/data"),
            |p| p.join("shared/data"),
        ),
    }
}

/// The default cache file: `$CARGO_TARGET_DIR` (else the workspace's
/// `target/`) `/fleet-profiles-v1.json`.
pub fn default_cache_path() -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_root().join("target"),
    };
    target.join(format!("fleet-profiles-v{CACHE_VERSION}.json"))
}

/// All profiles (Windows then Linux), from the default cache when valid.
pub fn load_profiles(shared_data_dir: &Path) -> anyhow::Result<Vec<Profile>> {
    load_profiles_cached(shared_data_dir, &default_cache_path())
}

/// All profiles, from `cache` when its key matches the inputs; otherwise
/// built and written to `cache` (a failed cache write is not an error).
pub fn load_profiles_cached(shared_data_dir: &Path, cache: &Path) -> anyhow::Result<Vec<Profile>> {
    // Concurrent callers in one process (parallel tests) wait for a single
    // build and then read its cache.
    static BUILD: Mutex<()> = Mutex::new(());
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let key = cache_key(shared_data_dir)?;
    if let Some(profiles) = read_cache(cache, &key) {
        return Ok(profiles);
    }
    let profiles = build_profiles(shared_data_dir)?;
    // The cache is an optimisation only: a read-only target dir must not fail the load.
    let _ = write_cache(cache, &key, &profiles);
    Ok(profiles)
}

/// Builds all profiles from the inputs (no cache).
/// The catalog and apt are read in parallel (each takes about a second).
pub fn build_profiles(shared_data_dir: &Path) -> anyhow::Result<Vec<Profile>> {
    let (windows, linux) = std::thread::scope(|scope| {
        let linux = scope.spawn(|| linux::has_dpkg().then(build_linux_profile).transpose());
        let windows = build_windows_profiles(shared_data_dir);
        let linux = linux
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("reading the Linux profile panicked")));
        (windows, linux)
    });
    let mut profiles = windows?;
    profiles.extend(linux?);
    Ok(profiles)
}

/// The systeminfo files, sorted by name.
pub fn systeminfo_files(shared_data_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let dir = shared_data_dir.join("windows-systeminfo");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("read {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.is_file());
    files.sort();
    Ok(files)
}

/// The catalog zip inside the shared data directory.
pub fn catalog_path(shared_data_dir: &Path) -> PathBuf {
    shared_data_dir.join("msrc-catalog/definitions.zip")
}

/// One profile per systeminfo file, missing updates from the catalog.
pub fn build_windows_profiles(shared_data_dir: &Path) -> anyhow::Result<Vec<Profile>> {
    let catalog = read_catalog(&catalog_path(shared_data_dir))?;
    systeminfo_files(shared_data_dir)?
        .into_iter()
        .map(|path| {
            let info = read_systeminfo(&path)?;
            let source = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            windows_profile(source, info, &catalog)
        })
        .collect()
}

fn windows_profile(source: String, info: SystemInfo, catalog: &Catalog) -> anyhow::Result<Profile> {
    let assessment = crate::catalog::assess(catalog, &info)
        .with_context(|| format!("{source}: no catalog product"))?;
    let updates = crate::catalog::to_updates(&assessment);
    let os_name = info.os_name.trim();
    Ok(Profile {
        host_name: info.host_name.unwrap_or_else(|| source.clone()),
        source,
        os_family: OsFamily::Windows,
        os_name: os_name
            .strip_prefix("Microsoft ")
            .unwrap_or(os_name)
            .to_owned(),
        os_version: info.os_version,
        os_build: Some(info.build.to_string()),
        arch: info.arch.as_str().to_owned(),
        product: Some(assessment.product),
        installed_kbs: info.hotfixes,
        installed_packages: Vec::new(),
        // The missing updates are the newest of each supersedence chain:
        // none supersedes another.
        supersedes: vec![Vec::new(); updates.len()],
        updates,
    })
}

/// This machine as a Linux profile (dpkg packages, apt upgrades).
pub fn build_linux_profile() -> anyhow::Result<Profile> {
    let host_name = linux::host_name();
    let (os_name, os_version) = linux::os_release();
    let updates: Vec<Update> = linux::apt_upgrades()?
        .iter()
        .map(|u| u.to_update())
        .collect();
    Ok(Profile {
        source: format!("dpkg:{host_name}"),
        host_name,
        os_family: OsFamily::Linux,
        os_name,
        os_version,
        os_build: None,
        arch: std::env::consts::ARCH.to_owned(),
        product: None,
        installed_kbs: Vec::new(),
        installed_packages: linux::installed_packages()?,
        supersedes: vec![Vec::new(); updates.len()],
        updates,
    })
}

/// One input file's identity in the cache key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct InputStamp {
    path: String,
    size: u64,
    mtime_s: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CacheKey {
    version: u32,
    inputs: Vec<InputStamp>,
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    key: CacheKey,
    profiles: Vec<Profile>,
}

fn cache_key(shared_data_dir: &Path) -> anyhow::Result<CacheKey> {
    let mut paths = systeminfo_files(shared_data_dir)?;
    paths.push(catalog_path(shared_data_dir));
    if linux::has_dpkg() {
        paths.push(PathBuf::from(linux::DPKG_STATUS));
        paths.extend(linux::apt_package_lists(Path::new(linux::APT_LISTS_DIR)));
    }
    let inputs = paths
        .iter()
        .map(|p| stamp(p))
        .collect::<anyhow::Result<_>>()?;
    Ok(CacheKey {
        version: CACHE_VERSION,
        inputs,
    })
}

fn stamp(path: &Path) -> anyhow::Result<InputStamp> {
    let meta = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    let mtime_s = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    Ok(InputStamp {
        path: path.display().to_string(),
        size: meta.len(),
        mtime_s,
    })
}

fn read_cache(cache: &Path, key: &CacheKey) -> Option<Vec<Profile>> {
    let bytes = std::fs::read(cache).ok()?;
    let file: CacheFile = serde_json::from_slice(&bytes).ok()?;
    (file.key == *key).then_some(file.profiles)
}

fn write_cache(cache: &Path, key: &CacheKey, profiles: &[Profile]) -> anyhow::Result<()> {
    #[derive(Serialize)]
    struct CacheFileRef<'a> {
        key: &'a CacheKey,
        profiles: &'a [Profile],
    }
    if let Some(dir) = cache.parent() {
        std::fs::create_dir_all(dir)?;
    }
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let tmp = cache.with_extension(format!("tmp.{}.{n}", std::process::id()));
    let json = serde_json::to_vec(&CacheFileRef { key, profiles })?;
    let written = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, cache));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(written?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (file prefix, catalog product, missing KBs) for the shared data set.
    const EXPECTED: [(&str, &str, usize); 11] = [
        (
            "10_1809",
            "Windows 10 Version 1809 for x64-based Systems",
            33,
        ),
        (
            "10_21H2",
            "Windows 10 Version 21H2 for x64-based Systems",
            16,
        ),
        (
            "10_22H2",
            "Windows 10 Version 22H2 for x64-based Systems",
            15,
        ),
        (
            "11_21H2",
            "Windows 11 Version 21H2 for x64-based Systems",
            15,
        ),
        (
            "11_22H2",
            "Windows 11 Version 22H2 for x64-based Systems",
            11,
        ),
        (
            "11_23H2",
            "Windows 11 Version 23H2 for x64-based Systems",
            10,
        ),
        (
            "7_sp1",
            "Windows 7 for x64-based Systems Service Pack 1",
            280,
        ),
        ("8.1_u1", "Windows 8.1 for x64-based Systems", 307),
        ("srv_2016", "Windows Server 2016", 39),
        ("srv_2019", "Windows Server 2019", 33),
        ("srv_2022", "Windows Server 2022", 45),
    ];

    #[test]
    fn windows_profiles_from_shared_data() -> anyhow::Result<()> {
        let profiles = load_profiles(&default_data_dir())?;
        let windows: Vec<&Profile> = profiles
            .iter()
            .filter(|p| p.os_family == OsFamily::Windows)
            .collect();
        assert_eq!(windows.len(), EXPECTED.len());
        for (p, (prefix, product, missing)) in windows.iter().zip(EXPECTED) {
            assert!(p.source.starts_with(prefix), "{} vs {prefix}", p.source);
            assert_eq!(p.product.as_deref(), Some(product), "{}", p.source);
            assert_eq!(p.updates.len(), missing, "{}", p.source);
            assert_eq!(p.supersedes.len(), missing, "{}", p.source);
            for u in &p.updates {
                let kb = u.kb.as_deref().unwrap_or_default();
                assert!(
                    !p.installed_kbs.iter().any(|i| i == kb),
                    "{kb} is installed"
                );
                assert!(u
                    .released_at
                    .as_deref()
                    .is_some_and(|r| r.ends_with("T00:00:00Z")));
            }
            assert!(p.distinct_cves() >= 1, "{}", p.source);
        }
        Ok(())
    }

    #[test]
    fn cache_key_covers_the_inputs() -> anyhow::Result<()> {
        let key = cache_key(&default_data_dir())?;
        assert_eq!(key.version, CACHE_VERSION);
        assert!(key
            .inputs
            .iter()
            .any(|s| s.path.ends_with("definitions.zip")));
        let systeminfo = key
            .inputs
            .iter()
            .filter(|s| s.path.contains("windows-systeminfo"));
        assert_eq!(systeminfo.count(), 11);
        Ok(())
    }

    #[test]
    fn cache_round_trip_and_invalidation() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let cache = dir.path().join("profiles.json");
        let key = CacheKey {
            version: CACHE_VERSION,
            inputs: vec![InputStamp {
                path: "x".into(),
                size: 1,
                mtime_s: 2,
            }],
        };
        let profiles = vec![Profile {
            source: "s".into(),
            host_name: "h".into(),
            os_family: OsFamily::Linux,
            os_name: "Debian".into(),
            os_version: "12".into(),
            os_build: None,
            arch: "x86_64".into(),
            product: None,
            installed_kbs: vec![],
            installed_packages: vec![],
            updates: vec![],
            supersedes: vec![],
        }];
        write_cache(&cache, &key, &profiles)?;
        assert_eq!(
            read_cache(&cache, &key).as_deref(),
            Some(profiles.as_slice())
        );
        let other = CacheKey {
            version: CACHE_VERSION + 1,
            ..key
        };
        assert!(read_cache(&cache, &other).is_none());
        Ok(())
    }
}
