//! Host-side file access beneath a directory that sandboxed code can write.
//!
//! Whatever runs outside a sandbox (agentd's `:create`, snapshot restore)
//! and touches a workdir must never be steered out of it by what the code
//! planted there: a symlink to `/etc`, a `..` chain, a directory swapped for
//! a link between a check and a use. Every path is resolved by the kernel
//! in one step with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`
//! relative to a descriptor of the directory: a resolution that would leave
//! it fails, atomically, whatever is swapped when. Symlinks that stay
//! inside are fine. Special files (fifos, devices, sockets) are refused,
//! and a fifo is never waited on (`O_NONBLOCK`).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

/// `openat2(dir, rel, flags, mode)` with resolution kept beneath `dir`.
pub fn openat_beneath(dir: &OwnedFd, rel: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = CString::new(rel.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    /// `struct open_how` (libc's is non-exhaustive).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: mode as u64,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: a valid C string, a valid open_how of the size passed, and
    // a descriptor we own; the kernel returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Opens `root` itself as the anchor for [`openat_beneath`].
pub fn open_root(root: &Path) -> io::Result<OwnedFd> {
    let fd = nix::fcntl::open(
        root,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    Ok(fd)
}

/// Checks a relative path a model gave: not empty, not absolute, no `..`.
/// The error is a sentence for the model.
pub fn relative(rel: &str) -> Result<&Path, String> {
    if rel.is_empty() || rel.contains('\0') {
        return Err(format!("refused: {rel:?} is not a file name"));
    }
    let path = Path::new(rel);
    if path.is_absolute() {
        return Err(format!(
            "refused: {rel:?} is absolute; give a path relative to the workdir"
        ));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("refused: {rel:?} contains `..`"));
    }
    if !path.components().any(|c| matches!(c, Component::Normal(_))) {
        return Err(format!("refused: {rel:?} names no file"));
    }
    Ok(path)
}

/// What kind of special file `mode` is, if it is one.
pub fn special_kind(mode: u32) -> Option<&'static str> {
    match mode & libc::S_IFMT {
        libc::S_IFIFO => Some("a fifo"),
        libc::S_IFCHR | libc::S_IFBLK => Some("a device"),
        libc::S_IFSOCK => Some("a socket"),
        _ => None,
    }
}

/// Writes `content` to `rel` beneath `root`, creating parent directories;
/// everything created is given to `owner` when set. The error is a
/// sentence for the model.
pub fn create_file(root: &Path, rel: &str, content: &[u8], owner: Option<(u32, u32)>) -> Result<(), String> {
    let path = relative(rel)?;
    let root_fd = open_root(root).map_err(|e| format!("workdir {}: {e}", root.display()))?;
    let why = |e: io::Error| match e.raw_os_error() {
        Some(libc::EXDEV) | Some(libc::ELOOP) => format!("refused: {rel:?} leads outside the workdir"),
        Some(libc::ENXIO) => format!("refused: {rel:?} is a special file"),
        Some(libc::EISDIR) => format!("refused: {rel:?} is a directory"),
        Some(libc::ENOTDIR) => format!("refused: {rel:?}: a parent is not a directory"),
        _ => format!("writing {rel}: {e}"),
    };
    let chown = |fd: &OwnedFd| -> Result<(), String> {
        if let Some((uid, gid)) = owner {
            nix::unistd::fchown(fd, Some(uid.into()), Some(gid.into())).map_err(|e| format!("writing {rel}: {e}"))?;
        }
        Ok(())
    };
    // Parents, one level at a time, each resolved beneath the root.
    let mut prefix = std::path::PathBuf::new();
    let names: Vec<_> = path
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    for name in &names[..names.len() - 1] {
        let parent = prefix.clone();
        prefix.push(name);
        match openat_beneath(&root_fd, &prefix, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let parent_fd = if parent.as_os_str().is_empty() {
                    root_fd.try_clone().map_err(why)?
                } else {
                    openat_beneath(&root_fd, &parent, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(why)?
                };
                nix::sys::stat::mkdirat(
                    &parent_fd,
                    name.as_os_str(),
                    nix::sys::stat::Mode::from_bits_truncate(0o755),
                )
                .map_err(|e| why(e.into()))?;
                let made = openat_beneath(&root_fd, &prefix, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(why)?;
                chown(&made)?;
            }
            Err(e) => return Err(why(e)),
        }
    }
    let fd = openat_beneath(
        &root_fd,
        path,
        libc::O_WRONLY | libc::O_CREAT | libc::O_NONBLOCK | libc::O_NOCTTY,
        0o644,
    )
    .map_err(why)?;
    let meta = nix::sys::stat::fstat(&fd).map_err(|e| why(e.into()))?;
    if let Some(kind) = special_kind(meta.st_mode) {
        return Err(format!("refused: {rel:?} is {kind}"));
    }
    if meta.st_mode & libc::S_IFMT == libc::S_IFDIR {
        return Err(format!("refused: {rel:?} is a directory"));
    }
    chown(&fd)?;
    let mut file = std::fs::File::from(fd);
    file.set_len(0).map_err(why)?;
    std::io::Write::write_all(&mut file, content).map_err(why)?;
    Ok(())
}
