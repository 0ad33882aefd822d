//! Files that survive a kill at any instant: atomic writes (a temporary file, synced, then
//! renamed over the target), exclusive locks held for a process's lifetime, and the removal of
//! temporary files a killed process left behind. Used by every layer that writes to disk
//! (autotune cache, checkpoints, run directories, the pretrained cache).

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The temporary name `write_atomic` uses for `path`: `<path>.tmp<pid>`.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

/// True for a name `write_atomic` gives its temporary files (`*.tmp<digits>`).
pub fn is_tmp_name(name: &str) -> bool {
    match name.rfind(".tmp") {
        Some(i) => {
            let rest = &name[i + 4..];
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// Writes `bytes` to `path` so that a reader (or a later run after a kill) sees either the
/// old file or the new one, never a part: the bytes go to `<path>.tmp<pid>`, are synced to
/// disk, and the file is renamed over `path`. On failure (disk full) the temporary file is
/// removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| Error::Io {
        path: path.into(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = tmp_path(path);
    let written = (|| {
        use std::io::Write;
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    crash_point("write_atomic");
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

/// Removes the temporary files (`*.tmp<digits>`) in `dir` whose names start with `prefix`:
/// leftovers of a process killed while writing. Call only while holding the lock that makes
/// this process the directory's (or the prefix's) only writer. Returns how many went.
pub fn remove_stale_tmp(dir: &Path, prefix: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix)
            && is_tmp_name(&name)
            && e.file_type().is_ok_and(|t| t.is_file())
            && std::fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// An exclusive advisory lock on a file, held until dropped (or until the process dies, even
/// by SIGKILL: the operating system releases it).
#[derive(Debug)]
pub struct Lock {
    _file: File,
    pub path: PathBuf,
}

fn open_lock_file(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.into(),
            source,
        })?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| Error::Io {
            path: path.into(),
            source,
        })
}

impl Lock {
    /// Takes the lock at once, or returns `None` if another process holds it.
    pub fn try_acquire(path: &Path) -> Result<Option<Lock>> {
        let file = open_lock_file(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Lock {
                _file: file,
                path: path.into(),
            })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(source)) => Err(Error::Io {
                path: path.into(),
                source,
            }),
        }
    }

    /// Takes the lock, waiting for another holder to finish; `on_wait` runs once if it must.
    pub fn acquire(path: &Path, on_wait: impl FnOnce()) -> Result<Lock> {
        if let Some(l) = Lock::try_acquire(path)? {
            return Ok(l);
        }
        on_wait();
        let file = open_lock_file(path)?;
        file.lock().map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
        Ok(Lock {
            _file: file,
            path: path.into(),
        })
    }
}

/// Test hook of debug builds: with `APGA_CRASH_AT=NAME[:N]`, the process dies at once (no
/// destructors, no flushing: as under SIGKILL) the N-th time (default 1st) it passes the
/// point `NAME`, e.g. between a commit's files and its manifest. The kill tests use it to
/// land inside writes that a timed kill would rarely hit. Release builds compile it away.
#[cfg(debug_assertions)]
pub fn crash_point(name: &str) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;
    static WANTED: OnceLock<Option<(String, usize)>> = OnceLock::new();
    static SEEN: AtomicUsize = AtomicUsize::new(0);
    let wanted = WANTED.get_or_init(|| {
        let v = std::env::var("APGA_CRASH_AT").ok()?;
        let (point, n) = match v.rsplit_once(':') {
            Some((p, n)) if n.parse::<usize>().is_ok() => (p.to_string(), n.parse().ok()?),
            _ => (v.clone(), 1),
        };
        Some((point, n))
    });
    if let Some((point, n)) = wanted {
        if point == name && SEEN.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            eprintln!("APGA_CRASH_AT: dying at {name}");
            std::process::abort();
        }
    }
}

/// Release builds: no crash points.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn crash_point(_name: &str) {}
