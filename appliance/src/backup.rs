//! `backup`, `verify-backup` and `restore`: the store as one file.
//!
//! A backup asks the running relay for a consistent snapshot over the
//! control socket (or opens the store itself when no relay runs). A restore
//! runs only while the relay is stopped: it checks the whole file first,
//! imports it beside the current store, opens the result as the relay
//! would, and only then swaps the two directories in one atomic rename.
//! The store it replaced is kept as `store.pre-restore-<time>`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use relay_core::clock::Clock;
use relay_core::store::{restore_backup, verify_backup, BackupSummary};
use relay_core::{Relay, RelayConfig};

/// Writes a backup of the store to `file` and checks what was written.
///
/// # Errors
/// `file` exists, the relay cannot be reached, or the copy does not verify.
pub async fn backup(config: &RelayConfig, file: &Path) -> anyhow::Result<()> {
    if file.exists() {
        bail!("{} exists already; name a new file", file.display());
    }
    crate::control_client::download(config, "/backup", file).await?;
    let summary = verify_backup(file)
        .with_context(|| format!("the backup written to {} does not verify", file.display()))?;
    println!("backup written: {}", file.display());
    print_summary(&summary);
    Ok(())
}

/// Checks a backup file without touching any store.
///
/// # Errors
/// The file is not a sound relay backup.
pub fn verify(file: &Path) -> anyhow::Result<()> {
    let summary = verify_backup(file)?;
    println!("backup is sound: {}", file.display());
    print_summary(&summary);
    Ok(())
}

fn print_summary(summary: &BackupSummary) {
    let taken = relay_core::clock::Timestamp(summary.header.created_at);
    println!("  relay:   {}", summary.header.relay_id);
    println!("  taken:   {taken}");
    println!("  trees:   {}", summary.trees);
    println!("  records: {}", summary.records);
    println!("  bytes:   {}", summary.bytes);
    println!("  sha256:  {}", summary.sha256);
}

/// Replaces the store with the one in `file`.
///
/// # Errors
/// The relay is running, the file is not a sound backup (the current store
/// is then untouched), or the restored store cannot be opened or swapped in.
pub async fn restore(config: &RelayConfig, file: &Path) -> anyhow::Result<()> {
    let socket = crate::settings::socket_path(config);
    if tokio::net::UnixStream::connect(&socket).await.is_ok() {
        bail!(
            "the relay is running (its control socket {} answers); stop it first \
             (systemctl stop patchpilot-relay) and run restore again",
            socket.display()
        );
    }
    let summary = verify_backup(file)
        .with_context(|| "restore refused; the current store was not touched")?;

    let data_dir = &config.store.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let live = data_dir.join("store");
    let _lock = lock_store(&live)?;
    let staging = data_dir.join(format!(".restore-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let staged = stage(config, file, &staging, &summary);
    if staged.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    let opened = staged?;
    give_to_owner_of(data_dir, &staging)?;

    let kept = swap_in(&staging.join("store"), &live)?;
    let _ = std::fs::remove_dir_all(&staging);
    let token_note = forget_stale_token(data_dir, &opened);
    println!("restored {} into {}", file.display(), live.display());
    print_summary(&summary);
    println!(
        "  devices: {}, users: {}, keys: {}",
        opened.devices, opened.users, opened.keys
    );
    if let Some(kept) = kept {
        println!("the replaced store is kept at {}", kept.display());
    }
    if let Some(note) = token_note {
        println!("{note}");
    }
    Ok(())
}

/// What the restored store holds, read by opening it as the relay would.
struct Opened {
    devices: usize,
    users: usize,
    keys: usize,
    token_matches: Option<bool>,
}

fn stage(
    config: &RelayConfig,
    file: &Path,
    staging: &Path,
    summary: &BackupSummary,
) -> anyhow::Result<Opened> {
    std::fs::create_dir_all(staging)?;
    restore_backup(file, &staging.join("store"))
        .with_context(|| "restore refused; the current store was not touched")?;
    let mut probe = config.clone();
    probe.store.data_dir = staging.to_path_buf();
    let relay = Relay::open(probe, Clock::system())
        .context("the restored store does not open; the current store was not touched")?;
    if relay.relay_id != summary.header.relay_id {
        bail!(
            "the restored store belongs to {} but the backup names {}; the current store was not touched",
            relay.relay_id,
            summary.header.relay_id
        );
    }
    let token = std::fs::read_to_string(config.store.data_dir.join("enrollment-token")).ok();
    Ok(Opened {
        devices: relay.fleet.len(),
        users: relay.users().len(),
        keys: relay.keys().len(),
        token_matches: token.map(|t| relay.enrollment_token_is(t.trim())),
    })
}

/// A restore run as root on the appliance must leave a store the service
/// user can open: the restored files take the data directory's owner.
fn give_to_owner_of(data_dir: &Path, tree: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(data_dir)?;
    let me = std::fs::metadata(tree)?;
    if owner.uid() == me.uid() && owner.gid() == me.gid() {
        return Ok(());
    }
    chown_tree(tree, owner.uid(), owner.gid()).with_context(|| {
        format!(
            "cannot give the restored store to the owner of {}",
            data_dir.display()
        )
    })
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Holds sled's own lock on the live store (if there is one), so that a
/// relay cannot start on it while it is being replaced.
fn lock_store(live: &Path) -> anyhow::Result<Option<std::fs::File>> {
    let db = live.join("db");
    let Ok(file) = std::fs::OpenOptions::new().read(true).write(true).open(&db) else {
        return Ok(None);
    };
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
        |_| {
            anyhow::anyhow!(
                "the store {} is in use by a running relay; stop it first",
                live.display()
            )
        },
    )?;
    Ok(Some(file))
}

/// Puts `new` at `live` in one atomic step; returns where the old store went.
fn swap_in(new: &Path, live: &Path) -> anyhow::Result<Option<PathBuf>> {
    if !live.exists() {
        std::fs::rename(new, live)
            .with_context(|| format!("cannot move the restored store to {}", live.display()))?;
        return Ok(None);
    }
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        new,
        rustix::fs::CWD,
        live,
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .with_context(|| format!("cannot swap the restored store into {}", live.display()))?;
    let stamp = Clock::system().now().unix();
    let kept = live.with_file_name(format!("store.pre-restore-{stamp}"));
    std::fs::rename(new, &kept)
        .with_context(|| format!("cannot keep the replaced store at {}", kept.display()))?;
    Ok(Some(kept))
}

/// The token file in the data directory belongs to the replaced store; a
/// restored store that does not accept it gets no stale file.
fn forget_stale_token(data_dir: &Path, opened: &Opened) -> Option<String> {
    match opened.token_matches {
        Some(false) => {
            let _ = std::fs::remove_file(data_dir.join("enrollment-token"));
            Some(
                "the site enrollment token is the backed-up relay's; if you do not have it, \
                 run `patchpilot-relay rotate-enrollment-token`"
                    .into(),
            )
        }
        _ => None,
    }
}
