//! Loading the relay's TOML config: the embedded default, or a file whose
//! bad keys and values are reported by name before anything starts.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use relay_core::RelayConfig;

/// The config the relay runs on when no file is named.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/default.toml");

/// Reads and validates the config. `data_dir` overrides `store.data_dir`.
///
/// # Errors
/// The file cannot be read, is not TOML of this shape (the message names the
/// key), or holds an invalid value.
pub fn load(file: Option<&Path>, data_dir: Option<&Path>) -> anyhow::Result<RelayConfig> {
    let (text, origin) = match file {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (
            EMBEDDED_DEFAULT.to_string(),
            "the built-in default config".to_string(),
        ),
    };
    let mut config: RelayConfig = match toml::from_str(&text) {
        Ok(c) => c,
        Err(err) => bail!("{origin}: {}", err.to_string().trim_end()),
    };
    if let Some(dir) = data_dir {
        config.store.data_dir = dir.to_path_buf();
    }
    if let (Some(file), Some(kev)) = (file, config.vulnerabilities.kev_file.as_ref()) {
        // A relative KEV path is relative to the working directory, as the
        // data directory is; say so plainly if it is missing.
        if kev.is_relative() && !kev.exists() {
            tracing::warn!(config = %file.display(), kev = %kev.display(), "the configured KEV file does not exist");
        }
    }
    config
        .validate()
        .with_context(|| format!("{origin} is not valid"))?;
    Ok(config)
}

pub fn socket_path(config: &RelayConfig) -> PathBuf {
    config.store.data_dir.join(relay_core::control::SOCKET_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_matches_the_built_in_defaults() {
        let parsed: RelayConfig =
            toml::from_str(EMBEDDED_DEFAULT).expect("the default config parses");
        let built_in = RelayConfig::default();
        assert_eq!(
            serde_json::to_value(&parsed).expect("serialises"),
            serde_json::to_value(&built_in).expect("serialises")
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, "[server]\nhttp_lisen = \"x\"\n").expect("write");
        let err = format!("{:#}", load(Some(&path), None).expect_err("unknown key"));
        assert!(err.contains("http_lisen"), "{err}");

        std::fs::write(&path, "[limits]\nread_burst = 0\n").expect("write");
        let err = format!("{:#}", load(Some(&path), None).expect_err("bad value"));
        assert!(err.contains("limits.read_burst"), "{err}");

        std::fs::write(&path, "[limits]\nread_burst = \"many\"\n").expect("write");
        let err = format!("{:#}", load(Some(&path), None).expect_err("wrong type"));
        assert!(err.contains("read_burst"), "{err}");
    }
}
