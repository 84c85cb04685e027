//! The workdir archive format: an agent's workdir as one tar archive, and
//! back. The only module that reads or writes these archives ([`list`] is
//! what `agentd snapshot show` prints).
//!
//! [`archive`] captures contents, modes, mtimes and symlinks (as symlinks);
//! [`restore`] makes the directory exactly that again: entries added since
//! are removed, changed ones replaced, the workdir's own inode kept (a
//! running bwrap bind or an open shell keeps pointing at it). Storing
//! archives is the ledger's job, not this module's.
//!
//! The workdir is written by sandboxed code, so both directions treat it as
//! hostile and never resolve a path through it: every directory is opened
//! relative to its parent's descriptor with `O_NOFOLLOW`, every file is
//! opened the same way and checked with `fstat` on the descriptor actually
//! read (a file swapped for a link to `/etc/shadow` between listing and
//! reading is refused, not followed), and special files (fifos, devices,
//! sockets) are left out of archives and never opened. Restore creates each
//! entry with `O_EXCL` beneath a directory descriptor, so it never writes
//! through a link, gives everything to the workdir's owner (the agent's
//! user), and strips setuid and setgid bits.
//!
//! Hard links are stored as separate files.

use std::ffi::{CString, OsStr};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, fstat, fstatat};

use crate::beneath::{MAX_DEPTH, names, open_dir_at, open_root_nofollow};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archiving {path}: {source}")]
    Archive { path: PathBuf, source: io::Error },
    #[error("restoring {path}: {source}")]
    Restore { path: PathBuf, source: io::Error },
}

/// The archive entry that carries the workdir's own mode.
const ROOT_ENTRY: &str = ".";

fn io_err(e: nix::Error) -> io::Error {
    e.into()
}

fn kind(st: &FileStat) -> u32 {
    st.st_mode & libc::S_IFMT
}

/// Archives everything under `dir`, never following a link; special files
/// are left out (logged).
pub fn archive(dir: &Path) -> Result<Vec<u8>, ArchiveError> {
    let err = |source| ArchiveError::Archive {
        path: dir.to_path_buf(),
        source,
    };
    let root = open_root_nofollow(dir).map_err(err)?;
    let mut builder = tar::Builder::new(Vec::new());
    let st = fstat(&root).map_err(io_err).map_err(err)?;
    append_header(
        &mut builder,
        Path::new(ROOT_ENTRY),
        &st,
        tar::EntryType::Directory,
        0,
        io::empty(),
    )
    .map_err(err)?;
    let mut skipped = Vec::new();
    archive_dir(&mut builder, root, Path::new(""), 0, &mut skipped).map_err(err)?;
    if !skipped.is_empty() {
        tracing::warn!(
            workdir = %dir.display(),
            skipped = ?skipped,
            "workspace snapshot: special files (fifos, devices, sockets) are not archived"
        );
    }
    builder.into_inner().map_err(err)
}

fn archive_dir(
    b: &mut tar::Builder<Vec<u8>>,
    fd: OwnedFd,
    rel: &Path,
    depth: usize,
    skipped: &mut Vec<PathBuf>,
) -> io::Result<()> {
    if depth > MAX_DEPTH {
        return Err(io::Error::other("directory tree too deep"));
    }
    let parent = fd;
    for name in names(&parent)? {
        let path = rel.join(OsStr::from_bytes(name.to_bytes()));
        let st = match fstatat(&parent, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Removed meanwhile: it is simply not in the snapshot.
            Err(nix::errno::Errno::ENOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        match kind(&st) {
            libc::S_IFDIR => {
                let sub = match open_dir_at(&parent, &name) {
                    Ok(sub) => sub,
                    // Swapped for something else meanwhile: not followed.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR | libc::ENOENT)) => {
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let st = fstat(&sub).map_err(io_err)?;
                append_header(b, &path, &st, tar::EntryType::Directory, 0, io::empty())?;
                archive_dir(b, sub, &path, depth + 1, skipped)?;
            }
            libc::S_IFREG => {
                let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
                let file = match openat(&parent, name.as_c_str(), flags, Mode::empty()) {
                    Ok(f) => f,
                    Err(nix::errno::Errno::ELOOP | nix::errno::Errno::ENOENT | nix::errno::Errno::ENXIO) => continue,
                    Err(e) => return Err(e.into()),
                };
                // What is read is what was opened: a regular file.
                let st = fstat(&file).map_err(io_err)?;
                if kind(&st) != libc::S_IFREG {
                    skipped.push(path);
                    continue;
                }
                let mut data = Vec::new();
                std::fs::File::from(file)
                    .take(st.st_size as u64)
                    .read_to_end(&mut data)?;
                append_header(b, &path, &st, tar::EntryType::Regular, data.len() as u64, &data[..])?;
            }
            libc::S_IFLNK => {
                let target = nix::fcntl::readlinkat(&parent, name.as_c_str()).map_err(io_err)?;
                let mut h = header_for(&st, tar::EntryType::Symlink, 0);
                b.append_link(&mut h, &path, Path::new(&target))?;
            }
            _ => skipped.push(path),
        }
    }
    Ok(())
}

fn header_for(st: &FileStat, ty: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(ty);
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(st.st_uid as u64);
    h.set_gid(st.st_gid as u64);
    h.set_mtime(st.st_mtime.max(0) as u64);
    h.set_size(size);
    h
}

fn append_header(
    b: &mut tar::Builder<Vec<u8>>,
    path: &Path,
    st: &FileStat,
    ty: tar::EntryType,
    size: u64,
    data: impl Read,
) -> io::Result<()> {
    let mut h = header_for(st, ty, size);
    h.set_cksum();
    b.append_data(&mut h, path, data)
}

/// The entries of an archive: path and size, in archive order.
pub fn list(bytes: &[u8]) -> io::Result<Vec<(String, u64)>> {
    let mut files = Vec::new();
    for entry in tar::Archive::new(bytes).entries()? {
        let entry = entry?;
        files.push((entry.path()?.display().to_string(), entry.header().size().unwrap_or(0)));
    }
    Ok(files)
}

/// Puts `dir` back exactly as it was when `bytes` was archived.
pub fn restore(dir: &Path, bytes: &[u8]) -> Result<(), ArchiveError> {
    let err = |source| ArchiveError::Restore {
        path: dir.to_path_buf(),
        source,
    };
    // Validate before destroying anything: a corrupt archive must leave the
    // current workdir alone.
    let mut entries = Vec::new();
    for entry in tar::Archive::new(bytes).entries().map_err(err)? {
        let mut entry = entry.map_err(err)?;
        let path = entry.path().map_err(err)?.into_owned();
        let header = entry.header().clone();
        let link = entry.link_name().map_err(err)?.map(|l| l.into_owned());
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(err)?;
        entries.push((path, header, link, data));
    }
    std::fs::create_dir_all(dir).map_err(err)?;
    let root = open_root_nofollow(dir).map_err(err)?;
    let owner = fstat(&root).map_err(io_err).map_err(err)?;
    clear(&root, 0).map_err(err)?;
    let mut dirs = Vec::new();
    for (path, header, link, data) in &entries {
        let mode = header.mode().map_err(err)? & 0o777;
        let mtime = header.mtime().map_err(err)? as i64;
        if path.as_os_str() == ROOT_ENTRY {
            dirs.push((None, mode, mtime));
            continue;
        }
        let (parent, name) = parent_of(&root, path).map_err(err)?;
        let ty = header.entry_type();
        let made = if ty.is_dir() {
            nix::sys::stat::mkdirat(&parent, name.as_c_str(), Mode::from_bits_truncate(0o700))
                .map_err(io_err)
                .and_then(|()| open_dir_at(&parent, &name))
        } else if ty.is_symlink() {
            let target = link
                .as_ref()
                .ok_or_else(|| io::Error::other("symlink without a target"))
                .map_err(err)?;
            nix::unistd::symlinkat(target.as_path(), &parent, name.as_c_str())
                .map_err(io_err)
                .map_err(err)?;
            nix::unistd::fchownat(
                &parent,
                name.as_c_str(),
                Some(owner.st_uid.into()),
                Some(owner.st_gid.into()),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(io_err)
            .map_err(err)?;
            continue;
        } else if ty.is_file() {
            let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            openat(&parent, name.as_c_str(), flags, Mode::from_bits_truncate(0o600))
                .map_err(io_err)
                .and_then(|fd| {
                    let mut f = std::fs::File::from(fd);
                    f.write_all(data)?;
                    Ok(OwnedFd::from(f))
                })
        } else {
            // Only what archive() writes is restored.
            continue;
        }
        .map_err(err)?;
        nix::unistd::fchown(&made, Some(owner.st_uid.into()), Some(owner.st_gid.into()))
            .map_err(io_err)
            .map_err(err)?;
        if ty.is_dir() {
            dirs.push((Some(made), mode, mtime));
        } else {
            finish(&made, mode, mtime).map_err(err)?;
        }
    }
    // Directories were made writable so their contents could be created;
    // their recorded modes and times are applied last, deepest first.
    for (fd, mode, mtime) in dirs.into_iter().rev() {
        finish(fd.as_ref().unwrap_or(&root), mode, mtime).map_err(err)?;
    }
    Ok(())
}

/// Mode (setuid and setgid never restored) and modification time.
fn finish(fd: &OwnedFd, mode: u32, mtime: i64) -> io::Result<()> {
    nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(mode)).map_err(io_err)?;
    let t = nix::sys::time::TimeSpec::new(mtime, 0);
    nix::sys::stat::futimens(fd, &t, &t).map_err(io_err)
}

/// The directory an archive path's last component goes in, opened beneath
/// `root` one component at a time without following links.
fn parent_of(root: &OwnedFd, path: &Path) -> io::Result<(OwnedFd, CString)> {
    let names: Vec<&OsStr> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n),
            std::path::Component::CurDir => None,
            _ => Some(OsStr::new("..")),
        })
        .collect();
    if names.is_empty() || names.contains(&OsStr::new("..")) {
        return Err(io::Error::other(format!("unsafe path in archive: {}", path.display())));
    }
    let mut dir = root.try_clone()?;
    for n in &names[..names.len() - 1] {
        let c = CString::new(n.as_bytes()).map_err(|_| io::Error::other("NUL in archive path"))?;
        dir = open_dir_at(&dir, &c)?;
    }
    let last = CString::new(names[names.len() - 1].as_bytes()).map_err(|_| io::Error::other("NUL in archive path"))?;
    Ok((dir, last))
}

/// Removes everything inside the directory `fd`, never following a link.
fn clear(fd: &OwnedFd, depth: usize) -> io::Result<()> {
    if depth > MAX_DEPTH {
        return Err(io::Error::other("directory tree too deep"));
    }
    // Emptying needs write and search permission on the directory itself.
    nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(0o700)).map_err(io_err)?;
    for name in names(fd)? {
        let st = fstatat(fd, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW).map_err(io_err)?;
        if kind(&st) == libc::S_IFDIR {
            let sub = open_dir_at(fd, &name)?;
            clear(&sub, depth + 1)?;
            nix::unistd::unlinkat(fd, name.as_c_str(), nix::unistd::UnlinkatFlags::RemoveDir).map_err(io_err)?;
        } else {
            nix::unistd::unlinkat(fd, name.as_c_str(), nix::unistd::UnlinkatFlags::NoRemoveDir).map_err(io_err)?;
        }
    }
    Ok(())
}
