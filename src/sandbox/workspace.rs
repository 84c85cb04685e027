//! Workspace snapshots: an agent's workdir as one tar archive, and back.
//!
//! [`archive`] captures contents, modes, mtimes and symlinks (as symlinks,
//! never followed); [`restore`] makes the directory exactly that again:
//! entries added since are removed, changed ones replaced, the workdir's
//! own inode kept (a running bwrap bind or an open shell keeps pointing at
//! it). Storing archives is the ledger's job, not this module's.
//!
//! Hard links are stored as separate files; sockets cannot be archived.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("archiving {path}: {source}")]
    Archive { path: PathBuf, source: io::Error },
    #[error("restoring {path}: {source}")]
    Restore { path: PathBuf, source: io::Error },
}

/// The archive entry that carries the workdir's own mode.
const ROOT_ENTRY: &str = ".";

/// Archives everything under `dir` (not following symlinks).
pub fn archive(dir: &Path) -> Result<Vec<u8>, WorkspaceError> {
    let err = |source| WorkspaceError::Archive {
        path: dir.to_path_buf(),
        source,
    };
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Complete);
    builder.append_dir(ROOT_ENTRY, dir).map_err(err)?;
    builder.append_dir_all("", dir).map_err(err)?;
    builder.into_inner().map_err(err)
}

/// Puts `dir` back exactly as it was when `bytes` was archived.
pub fn restore(dir: &Path, bytes: &[u8]) -> Result<(), WorkspaceError> {
    let err = |source| WorkspaceError::Restore {
        path: dir.to_path_buf(),
        source,
    };
    // Validate before destroying anything: a corrupt archive must leave the
    // current workdir alone.
    let mut root_mode = None;
    for entry in tar::Archive::new(bytes).entries().map_err(err)? {
        let entry = entry.map_err(err)?;
        let path = entry.path().map_err(err)?;
        if path.as_os_str() == ROOT_ENTRY {
            root_mode = Some(entry.header().mode().map_err(err)?);
        }
    }
    std::fs::create_dir_all(dir).map_err(err)?;
    clear_dir(dir).map_err(err)?;
    let mut archive = tar::Archive::new(bytes);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    // SAFETY: geteuid cannot fail.
    archive.set_preserve_ownerships(unsafe { libc::geteuid() } == 0);
    for entry in archive.entries().map_err(err)? {
        let mut entry = entry.map_err(err)?;
        if entry.path().map_err(err)?.as_os_str() == ROOT_ENTRY {
            continue;
        }
        // unpack_in refuses `..` and absolute paths: a tampered archive
        // cannot write outside `dir`.
        entry.unpack_in(dir).map_err(err)?;
        if entry.header().entry_type().is_dir() {
            let path = dir.join(entry.path().map_err(err)?);
            make_writable(&path).map_err(err)?;
        }
    }
    // Directories were created writable so their contents could be
    // unpacked; their recorded modes are applied deepest first.
    fix_dir_modes(dir, bytes).map_err(err)?;
    if let Some(mode) = root_mode {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    }
    Ok(())
}

/// Removes everything inside `dir`, first making directories writable so
/// read-only ones can be emptied.
fn clear_dir(dir: &Path) -> io::Result<()> {
    make_writable(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            clear_dir(&path)?;
            std::fs::remove_dir(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

fn make_writable(dir: &Path) -> io::Result<()> {
    let mode = std::fs::symlink_metadata(dir)?.permissions().mode();
    if mode & 0o700 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o700))?;
    }
    Ok(())
}

fn fix_dir_modes(dir: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut dirs = Vec::new();
    for entry in tar::Archive::new(bytes).entries()? {
        let entry = entry?;
        if entry.header().entry_type().is_dir() {
            let path = entry.path()?.into_owned();
            if path.as_os_str() != ROOT_ENTRY {
                dirs.push((path, entry.header().mode()?));
            }
        }
    }
    dirs.sort_by(|a, b| b.0.cmp(&a.0));
    for (rel, mode) in &dirs {
        std::fs::set_permissions(dir.join(rel), std::fs::Permissions::from_mode(*mode))?;
    }
    Ok(())
}
