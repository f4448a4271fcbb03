//! Independent Python tools (WES-NG, schemathesis) that some tests compare the
//! relay against, installed from PyPI on first use into a virtual environment
//! under the target directory, so that `cargo test --workspace` needs no setup
//! beyond `python3` with `venv` and pip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{bail, Context};

/// Serialises installs within one test process (several tests may ask at once).
static INSTALL: Mutex<()> = Mutex::new(());

/// Where the environments live: `$PP_PYTOOLS_DIR`, else `<target>/pytools`.
pub fn tools_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("PP_PYTOOLS_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => crate::profiles::workspace_root().join("target"),
    };
    target.join("pytools")
}

/// The path of `executable` inside a virtual environment that has exactly
/// `requirement` (a pinned pip requirement such as `wesng==1.0.3`) installed,
/// creating it on first use. The environment is built in a scratch folder and
/// renamed into place, so an interrupted install is never mistaken for a
/// finished one, and two test processes racing each other both end up with a
/// complete environment.
///
/// # Errors
/// `python3 -m venv` or `pip install` failed (for example with no route to PyPI).
pub fn ensure(requirement: &str, executable: &str) -> anyhow::Result<PathBuf> {
    let _guard = INSTALL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let root = tools_root();
    let name: String = requirement
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let env_dir = root.join(&name);
    let exe = env_dir.join("bin").join(executable);
    if exe.exists() {
        return Ok(exe);
    }
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let scratch = root.join(format!("{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    run(Command::new("python3").args(["-m", "venv"]).arg(&scratch))?;
    run(Command::new(scratch.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        requirement,
    ]))?;
    // pip writes console scripts whose first line names the interpreter by
    // absolute path: point them at the final folder before moving it there.
    retarget_scripts(&scratch, &env_dir)?;
    match std::fs::rename(&scratch, &env_dir) {
        Ok(()) => {}
        Err(_) if exe.exists() => {
            let _ = std::fs::remove_dir_all(&scratch);
            return Ok(exe);
        }
        Err(err) => return Err(err).context("cannot move the tool environment into place"),
    }
    if !exe.exists() {
        bail!("{requirement} installed no `{executable}`");
    }
    Ok(exe)
}

/// Rewrite the scripts in `scratch/bin` that name `scratch` to name `dest`.
fn retarget_scripts(scratch: &Path, dest: &Path) -> anyhow::Result<()> {
    let old = scratch.to_string_lossy().into_owned();
    let new = dest.to_string_lossy().into_owned();
    for entry in std::fs::read_dir(scratch.join("bin"))? {
        let path = entry?.path();
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue; // binaries and links
        };
        if text.starts_with("#!") && text.contains(&old) {
            std::fs::write(&path, text.replace(&old, &new))?;
        }
    }
    Ok(())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_retargeted_to_the_final_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let scratch = dir.path().join("env.partial-1");
        std::fs::create_dir_all(scratch.join("bin")).expect("mkdir");
        let script = scratch.join("bin/tool");
        std::fs::write(
            &script,
            format!("#!{}/bin/python\nimport x\n", scratch.display()),
        )
        .expect("write");
        let dest = dir.path().join("env");
        retarget_scripts(&scratch, &dest).expect("retarget");
        let text = std::fs::read_to_string(&script).expect("read");
        assert_eq!(text, format!("#!{}/bin/python\nimport x\n", dest.display()));
    }
}
