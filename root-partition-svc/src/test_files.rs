//! Files the host tests make (disk images for mtools and qemu-img): in a
//! directory of the test process under the system's temporary directory,
//! each removed when its test is done with it, so test runs leave nothing
//! behind (64 MiB images add up).
use std::path::{Path, PathBuf};

/// A file (or directory) `name` in this process's `prefix` directory,
/// removed when dropped; the directory goes with its last file.
pub struct TempFile(PathBuf);

impl TempFile {
    pub fn new(prefix: &str, name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempFile(dir.join(name))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.0.is_dir() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            let _ = std::fs::remove_file(&self.0);
        }
        if let Some(dir) = self.0.parent() {
            // Fails while other tests still have files there: fine.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl std::ops::Deref for TempFile {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempFile {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}
