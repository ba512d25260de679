//! The file writer (`WriterType = file`): files under `WriterFilePath`, written to a
//! temporary file in the same directory, then renamed into place, so no reader ever sees
//! half a file. With `WriterFileSync` (the default) the file is synced before the rename
//! and its directory after it: a write reported done survives a power loss. A batch of
//! files ([`Writer::write_many`], what a flush round hands over) shares those syncs.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::Writer;
use crate::error::{Error, Result};

/// How many files [`FileWriter`] keeps open while writing a batch (per flush thread):
/// enough to share the syncs, few enough for many threads under the usual 1024 limit.
const OPEN_FILES: usize = 16;

/// A temporary file written and not yet renamed into place.
struct TempFile {
    path: PathBuf,
    dir: PathBuf,
    tmp: PathBuf,
    file: fs::File,
}

/// Writes objects as files below a root directory.
pub struct FileWriter {
    root: PathBuf,
    /// Directories already created (saves a `mkdir` per file; re-created if removed).
    made: Mutex<HashSet<PathBuf>>,
    /// `fsync` each file and, after the rename, its directory.
    sync: bool,
    /// The root is on tmpfs or ramfs (found by [`Writer::init`]): its files live in
    /// memory, and the kernel's `fsync` there does nothing, so no sync is asked for.
    volatile: AtomicBool,
}

impl FileWriter {
    /// A writer rooted at `root` (created by [`Writer::init`]) that syncs every file and
    /// its directory (`WriterFileSync = true`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FileWriter {
            root: root.into(),
            made: Mutex::new(HashSet::new()),
            sync: true,
            volatile: AtomicBool::new(false),
        }
    }

    /// Whether files and their directories are synced (`WriterFileSync`). Without it a
    /// written file is complete and atomic for every reader, and reaches the disk when
    /// the kernel writes it back (as Fluent Bit's `out_file` does): a power loss in that
    /// window (about 30 s by default on Linux) can lose it.
    pub fn with_sync(mut self, sync: bool) -> Self {
        self.sync = sync;
        self
    }

    /// The path `name` maps to, refusing anything that could leave the root.
    pub fn path_for(&self, name: &str) -> Result<PathBuf> {
        let rel = Path::new(name);
        let safe = !name.is_empty()
            && !name.contains('\0')
            && rel.components().all(|c| matches!(c, Component::Normal(_)));
        if !safe {
            return Err(self.error(name, "object name is not a plain relative path", false));
        }
        Ok(self.root.join(rel))
    }

    /// The directory of `path`, created once (and again if it was removed).
    fn ensure_dir(&self, name: &str, dir: &Path, again: bool) -> Result<()> {
        if again {
            self.made.lock().remove(dir);
        }
        if self.made.lock().contains(dir) {
            return Ok(());
        }
        fs::create_dir_all(dir)
            .map_err(|e| self.error(name, format!("creating {}: {e}", dir.display()), true))?;
        self.made.lock().insert(dir.to_path_buf());
        Ok(())
    }

    /// Writes `data` to a new temporary file beside `name`'s final path.
    fn stage(&self, name: &str, data: &[u8]) -> Result<TempFile> {
        let path = self.path_for(name)?;
        let dir = path
            .parent()
            .ok_or_else(|| self.error(name, "object name has no parent directory", false))?
            .to_path_buf();
        let file_name = path
            .file_name()
            .and_then(|f| f.to_str())
            .ok_or_else(|| self.error(name, "object name has no file name", false))?;
        let tmp = dir.join(format!(".{file_name}.{}.tmp", ulid::Ulid::generate()));
        let create = || -> std::io::Result<fs::File> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(data)?;
            Ok(f)
        };
        self.ensure_dir(name, &dir, false)?;
        let file = match create() {
            // The directory was removed behind our back: make it again and retry once.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.ensure_dir(name, &dir, true)?;
                create()
            }
            other => other,
        };
        match file {
            Ok(file) => Ok(TempFile {
                path,
                dir,
                tmp,
                file,
            }),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(self.error(name, e.to_string(), true))
            }
        }
    }

    /// [`Writer::write_many`] for at most [`OPEN_FILES`] objects.
    fn write_chunk(&self, objects: &[(&str, &[u8])]) -> Vec<Result<()>> {
        let mut staged: Vec<Result<TempFile>> = objects
            .iter()
            .map(|(name, data)| self.stage(name, data))
            .collect();
        let fail = |s: &TempFile, name: &str, e: std::io::Error| {
            let _ = fs::remove_file(&s.tmp);
            self.error(name, e.to_string(), true)
        };
        let sync = self.syncs();
        if sync {
            // Start every file's writeback before waiting for any: the blocks of the whole
            // batch are allocated together, so the first sync's journal commit covers the
            // others' metadata too. Only a hint: a failure here shows in the sync.
            for s in staged.iter().flatten() {
                let _ = rustix::fs::fadvise(&s.file, 0, None, rustix::fs::Advice::DontNeed);
            }
            for (slot, (name, _)) in staged.iter_mut().zip(objects) {
                if let Ok(s) = slot
                    && let Err(e) = s.file.sync_all()
                {
                    *slot = Err(fail(s, name, e));
                }
            }
        }
        let mut renamed: Vec<Result<PathBuf>> = staged
            .into_iter()
            .zip(objects)
            .map(|(slot, (name, _))| {
                let s = slot?;
                match fs::rename(&s.tmp, &s.path) {
                    Ok(()) => Ok(s.dir),
                    Err(e) => Err(fail(&s, name, e)),
                }
            })
            .collect();
        if sync {
            // The renames are only durable once their directories are: one sync each.
            let mut synced: HashMap<PathBuf, std::result::Result<(), String>> = HashMap::new();
            for (slot, (name, _)) in renamed.iter_mut().zip(objects) {
                if let Ok(dir) = slot {
                    let outcome = synced.entry(dir.clone()).or_insert_with(|| {
                        fs::File::open(&*dir)
                            .and_then(|d| d.sync_all())
                            .map_err(|e| format!("syncing directory {}: {e}", dir.display()))
                    });
                    if let Err(e) = outcome {
                        *slot = Err(self.error(name, e.clone(), true));
                    }
                }
            }
        }
        renamed.into_iter().map(|r| r.map(|_| ())).collect()
    }

    /// Whether files and directories are synced: `WriterFileSync`, unless the root is in
    /// memory (tmpfs, ramfs), where there is no disk to sync to.
    fn syncs(&self) -> bool {
        self.sync && !self.volatile.load(Ordering::Relaxed)
    }

    fn error(&self, name: &str, reason: impl Into<String>, retryable: bool) -> Error {
        Error::Write {
            name: name.to_string(),
            target: self.target(),
            reason: reason.into(),
            retryable,
        }
    }
}

impl Writer for FileWriter {
    fn init(&self) -> Result<()> {
        fs::create_dir_all(&self.root)
            .map_err(|e| Error::io("creating output directory", &self.root, e))?;
        if in_memory(&self.root) {
            self.volatile.store(true, Ordering::Relaxed);
            if self.sync {
                log::info!(
                    "{}: the output directory is on tmpfs/ramfs (in memory): there is no disk \
                     to sync its files to, so none is asked for",
                    self.target()
                );
            }
        }
        Ok(())
    }

    fn prefers_batches(&self) -> bool {
        self.syncs()
    }

    fn write(&self, name: &str, data: &[u8]) -> Result<()> {
        self.write_many(&[(name, data)])
            .pop()
            .unwrap_or_else(|| Err(self.error(name, "no result for the object", true)))
    }

    /// Writes the objects as a batch: every temporary file first, then (with
    /// `WriterFileSync`) their writeback started together and each synced, then the
    /// renames, then one sync per directory. The journal commits that make a file and its
    /// rename durable are shared by the batch, instead of two per file.
    fn write_many(&self, objects: &[(&str, &[u8])]) -> Vec<Result<()>> {
        let mut results = Vec::with_capacity(objects.len());
        // A bounded number of files open at once, whatever the caller hands in.
        for chunk in objects.chunks(OPEN_FILES) {
            results.extend(self.write_chunk(chunk));
        }
        results
    }

    fn close(&self) -> Result<()> {
        Ok(())
    }

    fn is_ready(&self) -> bool {
        self.root.is_dir()
    }

    fn target(&self) -> String {
        let abs = std::path::absolute(&self.root).unwrap_or_else(|_| self.root.clone());
        format!("file://{}", abs.display())
    }
}

/// Whether `dir` is on a file system that lives in memory (tmpfs, ramfs).
#[cfg(target_os = "linux")]
fn in_memory(dir: &Path) -> bool {
    const TMPFS_MAGIC: u32 = 0x0102_1994;
    const RAMFS_MAGIC: u32 = 0x8584_58f6;
    rustix::fs::statfs(dir).is_ok_and(|fs| {
        // The magic numbers are 32-bit; the field's width differs between targets.
        let kind = fs.f_type as u32;
        kind == TMPFS_MAGIC || kind == RAMFS_MAGIC
    })
}

#[cfg(not(target_os = "linux"))]
fn in_memory(_dir: &Path) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The temporary files left in `dir`.
    fn temporary_files(dir: &Path) -> Vec<std::ffi::OsString> {
        fs::read_dir(dir)
            .expect("ls")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .filter(|name| name.to_string_lossy().ends_with(".tmp"))
            .collect()
    }

    #[test]
    fn writes_atomically_and_replaces_with_and_without_sync() {
        for sync in [true, false] {
            let dir = tempfile::tempdir().expect("tempdir");
            let w = FileWriter::new(dir.path().join("out")).with_sync(sync);
            w.init().expect("init");
            assert!(w.is_ready());
            w.write("a/b/c.parquet", b"one").expect("write");
            w.write("a/b/c.parquet", b"two").expect("rewrite");
            w.write("a/d.parquet", b"three").expect("write");
            let p = dir.path().join("out/a/b/c.parquet");
            assert_eq!(fs::read(&p).expect("read"), b"two", "sync {sync}");
            assert_eq!(
                fs::read(dir.path().join("out/a/d.parquet")).expect("read"),
                b"three"
            );
            let leftovers = temporary_files(p.parent().expect("dir"));
            assert!(leftovers.is_empty(), "sync {sync}: {leftovers:?}");
        }
    }

    #[test]
    fn a_batch_writes_every_object_and_a_failure_stays_its_own() {
        for sync in [true, false] {
            let dir = tempfile::tempdir().expect("tempdir");
            let w = FileWriter::new(dir.path()).with_sync(sync);
            // More objects than files kept open at once, over a few directories, one of
            // which cannot be made (a plain file stands where it must go).
            fs::write(dir.path().join("blocked"), b"file, not dir").expect("blocker");
            let names: Vec<String> = (0..OPEN_FILES + 20)
                .map(|i| match i {
                    7 => "blocked/x.parquet".to_string(),
                    _ => format!("d{}/f{i}.parquet", i % 5),
                })
                .collect();
            let data: Vec<Vec<u8>> = (0..names.len()).map(|i| format!("#{i}").into()).collect();
            let objects: Vec<(&str, &[u8])> = names
                .iter()
                .zip(&data)
                .map(|(n, d)| (n.as_str(), d.as_slice()))
                .collect();
            let results = w.write_many(&objects);
            assert_eq!(results.len(), objects.len(), "sync {sync}");
            for (i, ((name, data), result)) in objects.iter().zip(&results).enumerate() {
                if i == 7 {
                    let err = result.as_ref().expect_err("blocked");
                    assert!(err.is_retryable(), "sync {sync}");
                    assert!(err.to_string().contains("blocked/x.parquet"), "{err}");
                    continue;
                }
                result.as_ref().expect("written");
                let read = fs::read(dir.path().join(name)).expect("read");
                assert_eq!(&read, data, "sync {sync}: {name}");
            }
            for d in 0..5 {
                let tmp = temporary_files(&dir.path().join(format!("d{d}")));
                assert!(tmp.is_empty(), "sync {sync}: {tmp:?}");
            }
        }
    }

    #[test]
    fn asks_for_batches_only_when_it_syncs_to_a_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = FileWriter::new(dir.path().join("out"));
        plain.init().expect("init");
        assert_eq!(plain.prefers_batches(), !in_memory(dir.path()));
        let unsynced = FileWriter::new(dir.path().join("out")).with_sync(false);
        unsynced.init().expect("init");
        assert!(!unsynced.prefers_batches());
        let shm = Path::new("/dev/shm");
        if in_memory(shm) {
            let mem = tempfile::tempdir_in(shm).expect("tempdir in /dev/shm");
            let w = FileWriter::new(mem.path().join("out"));
            w.init().expect("init");
            assert!(!w.prefers_batches(), "tmpfs has nothing to sync");
            w.write("a/b.parquet", b"x").expect("write");
            assert_eq!(
                fs::read(mem.path().join("out/a/b.parquet")).expect("read"),
                b"x"
            );
        }
    }

    #[test]
    fn recreates_a_directory_removed_behind_its_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = FileWriter::new(dir.path());
        w.write("a/b/one.parquet", b"1").expect("write");
        fs::remove_dir_all(dir.path().join("a")).expect("rm");
        w.write("a/b/two.parquet", b"2").expect("write after rm");
        assert_eq!(
            fs::read(dir.path().join("a/b/two.parquet")).expect("read"),
            b"2"
        );
    }

    #[test]
    fn refuses_names_that_escape_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = FileWriter::new(dir.path());
        for bad in ["../x", "/etc/passwd", "a/../../x", "", "a/\0b", "./x"] {
            let err = w.write(bad, b"x").expect_err(bad);
            assert!(!err.is_retryable(), "{bad}");
        }
    }

    #[test]
    fn failure_is_retryable_and_names_the_object() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocker = dir.path().join("blocker");
        fs::write(&blocker, b"file, not dir").expect("write");
        let w = FileWriter::new(&blocker);
        let err = w
            .write("x/y.parquet", b"data")
            .expect_err("parent is a file");
        assert!(err.is_retryable());
        assert!(err.to_string().contains("x/y.parquet"));
    }
}
