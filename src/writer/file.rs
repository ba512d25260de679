//! The file writer (`WriterType = file`): files under `WriterFilePath`, written to a
//! temporary file in the same directory, then renamed into place, so no reader ever sees
//! half a file. With `WriterFileSync` (the default) the file is synced before the rename
//! and its directory after it: a write reported done survives a power loss.

use std::collections::HashSet;
use std::fs;
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};

use parking_lot::Mutex;

use super::Writer;
use crate::error::{Error, Result};

/// Writes objects as files below a root directory.
pub struct FileWriter {
    root: PathBuf,
    /// Directories already created (saves a `mkdir` per file; re-created if removed).
    made: Mutex<HashSet<PathBuf>>,
    /// `fsync` each file and, after the rename, its directory.
    sync: bool,
}

impl FileWriter {
    /// A writer rooted at `root` (created by [`Writer::init`]) that syncs every file and
    /// its directory (`WriterFileSync = true`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FileWriter {
            root: root.into(),
            made: Mutex::new(HashSet::new()),
            sync: true,
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
            .map_err(|e| Error::io("creating output directory", &self.root, e))
    }

    fn write(&self, name: &str, data: &[u8]) -> Result<()> {
        let path = self.path_for(name)?;
        let dir = path
            .parent()
            .ok_or_else(|| self.error(name, "object name has no parent directory", false))?;
        let make_dir = || {
            fs::create_dir_all(dir)
                .map_err(|e| self.error(name, format!("creating {}: {e}", dir.display()), true))
        };
        if !self.made.lock().contains(dir) {
            make_dir()?;
            self.made.lock().insert(dir.to_path_buf());
        }
        let file_name = path
            .file_name()
            .and_then(|f| f.to_str())
            .ok_or_else(|| self.error(name, "object name has no file name", false))?;
        let tmp = dir.join(format!(".{file_name}.{}.tmp", ulid::Ulid::generate()));
        let attempt = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(data)?;
            if self.sync {
                f.sync_all()?;
            }
            fs::rename(&tmp, &path)?;
            if self.sync {
                // The rename itself is only durable once the directory is.
                fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        let mut result = attempt();
        if matches!(&result, Err(e) if e.kind() == std::io::ErrorKind::NotFound) {
            // The directory was removed behind our back: make it again and retry once.
            self.made.lock().remove(dir);
            make_dir()?;
            self.made.lock().insert(dir.to_path_buf());
            result = attempt();
        }
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(self.error(name, e.to_string(), true));
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

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
            let leftovers: Vec<_> = fs::read_dir(p.parent().expect("dir"))
                .expect("ls")
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
                .collect();
            assert!(leftovers.is_empty(), "sync {sync}: {leftovers:?}");
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
