//! Group commit: one flusher thread owns `flush` + `fsync`; writers wait for
//! the first flush that started after their write.
//!
//! sled's `flush` ends in `sync_file_range`, which is not a durability
//! barrier, and its `flush_async` wedges under concurrent callers. So no
//! request handler ever flushes: each asks the flusher for a ticket and
//! awaits it. Every waiter that arrives while a flush is running is served
//! by the next one, so one fsync covers a whole batch of check-ins.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use tokio::sync::watch;

/// Hands out tickets and reports which have been made durable.
#[derive(Clone)]
pub struct Durability {
    inner: Arc<Inner>,
    done: watch::Receiver<Progress>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Progress {
    durable: u64,
    failures: u64,
}

struct Inner {
    closed: std::sync::atomic::AtomicBool,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
    requested: AtomicU64,
    wake: Mutex<bool>,
    cond: Condvar,
    flushes: AtomicU64,
}

/// The flush or fsync failed: the write may not survive a power cut.
#[derive(Debug, thiserror::Error)]
#[error("the store could not be made durable")]
pub struct NotDurable;

impl Durability {
    /// Starts the flusher thread for the database at `dir`.
    pub(crate) fn start(db: sled::Db, dir: PathBuf) -> Self {
        let inner = Arc::new(Inner {
            closed: std::sync::atomic::AtomicBool::new(false),
            thread: Mutex::new(None),
            requested: AtomicU64::new(0),
            wake: Mutex::new(false),
            cond: Condvar::new(),
            flushes: AtomicU64::new(0),
        });
        let (tx, rx) = watch::channel(Progress::default());
        let worker = Arc::clone(&inner);
        let spawned = thread::Builder::new()
            .name("store-flusher".into())
            .spawn(move || flusher_loop(&worker, &db, &dir, &tx));
        match spawned {
            Ok(handle) => *inner.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle),
            Err(err) => tracing::error!(error = %err, "cannot start the store flusher thread"),
        }
        Self { inner, done: rx }
    }

    /// Stops the flusher after one last flush, releasing its handle on the
    /// database so that the store can be opened again in this process.
    pub(crate) fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.notify();
        let handle = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    /// Waits until everything written before this call is on disk.
    ///
    /// # Cancel safety
    /// Cancelling the wait leaves the write in place; it becomes durable with
    /// the next flush all the same.
    ///
    /// # Errors
    /// [`NotDurable`] when the flush or fsync that covered this ticket failed.
    pub async fn sync(&self) -> Result<(), NotDurable> {
        let ticket = self.inner.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let failures_before = self.done.borrow().failures;
        self.inner.notify();

        let mut rx = self.done.clone();
        loop {
            let progress = *rx.borrow_and_update();
            if progress.durable >= ticket {
                return Ok(());
            }
            if progress.failures > failures_before {
                return Err(NotDurable);
            }
            if rx.changed().await.is_err() {
                return Err(NotDurable);
            }
        }
    }

    /// How many flush+fsync rounds have run (for metrics and benchmarks).
    pub fn flushes(&self) -> u64 {
        self.inner.flushes.load(Ordering::Relaxed)
    }
}

impl Inner {
    fn notify(&self) {
        let mut pending = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        *pending = true;
        self.cond.notify_one();
    }

    fn wait_for_work(&self) {
        let mut pending = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        while !*pending {
            pending = self.cond.wait(pending).unwrap_or_else(|p| p.into_inner());
        }
        *pending = false;
    }
}

fn flusher_loop(inner: &Inner, db: &sled::Db, dir: &Path, done: &watch::Sender<Progress>) {
    let mut synced_blobs = HashSet::new();
    loop {
        inner.wait_for_work();
        let closing = inner.closed.load(Ordering::SeqCst);
        // Every ticket handed out before this load was written before it.
        let covered = inner.requested.load(Ordering::SeqCst);
        let result = flush_and_fsync(db, dir, &mut synced_blobs);
        inner.flushes.fetch_add(1, Ordering::Relaxed);

        let mut progress = *done.borrow();
        match result {
            Ok(()) => progress.durable = covered,
            Err(err) => {
                tracing::error!(error = %err, "store flush failed; writes are not acknowledged");
                progress.failures += 1;
            }
        }
        if done.send(progress).is_err() || closing {
            return;
        }
    }
}

/// sled's flush moves its buffers into the files; the fsyncs then push the
/// files (and any large values sled wrote as separate blob files) to disk.
fn flush_and_fsync(
    db: &sled::Db,
    dir: &Path,
    synced_blobs: &mut HashSet<PathBuf>,
) -> std::io::Result<()> {
    db.flush().map_err(std::io::Error::other)?;
    File::open(dir.join("db"))?.sync_data()?;
    sync_new_blobs(&dir.join("blobs"), synced_blobs)
}

fn sync_new_blobs(blobs: &Path, synced: &mut HashSet<PathBuf>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(blobs) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    let mut present = HashSet::new();
    let mut added = false;
    for entry in entries {
        let path = entry?.path();
        if !synced.contains(&path) {
            match File::open(&path) {
                Ok(file) => file.sync_data()?,
                // sled removed a blob it no longer needs: nothing to sync.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            }
            added = true;
        }
        present.insert(path);
    }
    if added {
        File::open(blobs)?.sync_all()?;
    }
    *synced = present;
    Ok(())
}
