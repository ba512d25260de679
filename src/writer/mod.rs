//! Writers: where finished files go. Object names are computed by [`crate::naming`]; a
//! writer only stores bytes under a name, atomically, and reports errors that say whether a
//! retry may help.

pub mod file;
pub mod s3;

use crate::error::Result;

/// A store for finished files (local directory, S3 bucket).
pub trait Writer: Send + Sync {
    /// Prepares the target (creates the directory, checks or creates the bucket).
    fn init(&self) -> Result<()>;
    /// Stores `data` under `name` (a relative, `/`-separated path made by
    /// [`crate::naming`]). Either the whole object becomes visible or nothing does; writing
    /// the same name again replaces it.
    fn write(&self, name: &str, data: &[u8]) -> Result<()>;
    /// Stores several objects, as [`Writer::write`] each, and returns each one's result in
    /// order. What a flush round hands over at once: a writer that can make a batch
    /// durable for less than one object at a time overrides it (the file writer shares
    /// its syncs); the default writes them one by one.
    /// Whether [`Writer::write_many`] costs less than writing the same objects one by one
    /// (the file writer with its syncs). Only then does a flush gather the files of
    /// several keys into one call, which keeps their records buffered a little longer.
    fn prefers_batches(&self) -> bool {
        false
    }
    fn write_many(&self, objects: &[(&str, &[u8])]) -> Vec<Result<()>> {
        objects
            .iter()
            .map(|(name, data)| self.write(name, data))
            .collect()
    }
    /// Releases resources.
    fn close(&self) -> Result<()>;
    /// Whether the target can take writes now.
    fn is_ready(&self) -> bool;
    /// Where files go, for logs and summaries (`file:///abs/out`, `s3://bucket`).
    fn target(&self) -> String;
}
