//! The file writer (`WriterType = file`): files under `WriterFilePath`, written to a
//! temporary file in the same directory, synced, then renamed into place, so no reader
//! ever sees half a file.

use std::fs;
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};

use super::Writer;
use crate::error::{Error, Result};

/// Writes objects as files below a root directory.
pub struct FileWriter {
    root: PathBuf,
}

impl FileWriter {
    /// A writer rooted at `root` (created by [`Writer::init`]).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FileWriter { root: root.into() }
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
        fs::create_dir_all(dir)
            .map_err(|e| self.error(name, format!("creating {}: {e}", dir.display()), true))?;
        let file_name = path
            .file_name()
            .and_then(|f| f.to_str())
            .ok_or_else(|| self.error(name, "object name has no file name", false))?;
        let tmp = dir.join(format!(".{file_name}.{}.tmp", ulid::Ulid::generate()));
        let result = (|| -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        })();
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
    fn writes_atomically_and_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = FileWriter::new(dir.path().join("out"));
        w.init().expect("init");
        assert!(w.is_ready());
        w.write("a/b/c.parquet", b"one").expect("write");
        w.write("a/b/c.parquet", b"two").expect("rewrite");
        let p = dir.path().join("out/a/b/c.parquet");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        let leftovers: Vec<_> = fs::read_dir(p.parent().expect("dir"))
            .expect("ls")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
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
