//! Host-side file access beneath a directory that sandboxed code can write.
//!
//! Whatever runs outside a sandbox (agentd's `:create`, `mcp-watch`'s
//! tools and resources) and touches such a directory must never be steered
//! out of it by what the code planted there: a symlink to `/etc`, a `..` chain, a directory swapped for
//! a link between a check and a use. Every path is resolved by the kernel
//! in one step with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`
//! relative to a descriptor of the directory: a resolution that would leave
//! it fails, atomically, whatever is swapped when. Symlinks that stay
//! inside are fine. Special files (fifos, devices, sockets) are refused,
//! and a fifo is never waited on (`O_NONBLOCK`).
//!
//! Names are only ever handled lexically here ([`relative`], [`under`]);
//! the one place a name meets the filesystem is [`openat_beneath`]. Walking
//! a tree ([`list_files`]) goes descriptor to descriptor with `O_NOFOLLOW`.
//! (Snapshots' archive and restore, which must keep links as links, do the
//! same in [`crate::snapshots::archive`].)

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode};

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

/// Why a file beneath a root was not given. Each caller words it for its
/// own reader (a model, an MCP client).
#[derive(Debug)]
pub enum Denied {
    /// Resolving it would leave the root (a link or `..` leading out).
    Outside,
    /// A fifo, a device or a socket (what [`special_kind`] says).
    Special(&'static str),
    Directory,
    /// A parent on the way is not a directory.
    ParentNotDirectory,
    Io(io::Error),
}

impl From<io::Error> for Denied {
    fn from(e: io::Error) -> Denied {
        match e.raw_os_error() {
            Some(libc::EXDEV) | Some(libc::ELOOP) => Denied::Outside,
            Some(libc::ENXIO) => Denied::Special("a special file"),
            Some(libc::EISDIR) => Denied::Directory,
            Some(libc::ENOTDIR) => Denied::ParentNotDirectory,
            _ => Denied::Io(e),
        }
    }
}

impl From<nix::Error> for Denied {
    fn from(e: nix::Error) -> Denied {
        io::Error::from(e).into()
    }
}

/// `rel`, or `.` for the root itself (an empty path names nothing to the kernel).
fn or_root(rel: &Path) -> &Path {
    if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    }
}

/// Turns what a client gave (a path relative to `root`, an absolute path
/// inside it, or a `file://` URI of one) into a clean path relative to
/// `root`: no `.`, no `..`, empty for `root` itself. Purely lexical (`..`
/// is applied to the name, never resolved); whether it stays inside on the
/// filesystem is [`openat_beneath`]'s to decide. `root` must be absolute
/// and canonical.
pub fn under(root: &Path, path: &str) -> Result<PathBuf, NotUnder> {
    let raw = if path.starts_with("file://") {
        url::Url::parse(path)
            .ok()
            .and_then(|u| u.to_file_path().ok())
            .ok_or(NotUnder::NotAFileUri)?
    } else {
        PathBuf::from(path)
    };
    let joined = if raw.is_absolute() { raw } else { root.join(raw) };
    let mut normal = PathBuf::new();
    for component in joined.components() {
        match component {
            Component::ParentDir => {
                if !normal.pop() {
                    return Err(NotUnder::Outside);
                }
            }
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    normal
        .strip_prefix(root)
        .map(Path::to_path_buf)
        .map_err(|_| NotUnder::Outside)
}

/// Why [`under`] refused a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotUnder {
    NotAFileUri,
    Outside,
}

/// What `rel` beneath `root` is (links inside followed, never out; never
/// opens the file itself, so a fifo is not touched).
pub fn stat(root: &OwnedFd, rel: &Path) -> Result<FileStat, Denied> {
    let fd = openat_beneath(root, or_root(rel), libc::O_PATH, 0)?;
    Ok(nix::sys::stat::fstat(&fd)?)
}

/// Opens the regular file `rel` beneath `root` for reading.
pub fn open_file(root: &OwnedFd, rel: &Path) -> Result<std::fs::File, Denied> {
    let fd = openat_beneath(
        root,
        or_root(rel),
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
        0,
    )?;
    regular(&fd)?;
    Ok(std::fs::File::from(fd))
}

/// Refuses what is not a regular file, by the descriptor actually opened.
fn regular(fd: &OwnedFd) -> Result<(), Denied> {
    let meta = nix::sys::stat::fstat(fd)?;
    if let Some(kind) = special_kind(meta.st_mode) {
        return Err(Denied::Special(kind));
    }
    if meta.st_mode & libc::S_IFMT == libc::S_IFDIR {
        return Err(Denied::Directory);
    }
    Ok(())
}

/// Opens `rel` beneath `root` for writing, emptied, creating it and its
/// missing parent directories; everything created is given to `owner` when
/// set. `rel` must name a file (not be empty).
pub fn create_file_at(root: &OwnedFd, rel: &Path, owner: Option<(u32, u32)>) -> Result<std::fs::File, Denied> {
    let chown = |fd: &OwnedFd| -> Result<(), Denied> {
        if let Some((uid, gid)) = owner {
            nix::unistd::fchown(fd, Some(uid.into()), Some(gid.into())).map_err(|e| Denied::Io(e.into()))?;
        }
        Ok(())
    };
    // Parents, one level at a time, each resolved beneath the root.
    let mut prefix = PathBuf::new();
    let names: Vec<_> = rel.components().filter(|c| matches!(c, Component::Normal(_))).collect();
    let Some((_, parents)) = names.split_last() else {
        return Err(Denied::Directory);
    };
    for name in parents {
        let parent = prefix.clone();
        prefix.push(name);
        match openat_beneath(root, &prefix, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let parent_fd = openat_beneath(root, or_root(&parent), libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
                nix::sys::stat::mkdirat(&parent_fd, name.as_os_str(), Mode::from_bits_truncate(0o755))?;
                let made = openat_beneath(root, &prefix, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
                chown(&made)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let fd = openat_beneath(
        root,
        rel,
        libc::O_WRONLY | libc::O_CREAT | libc::O_NONBLOCK | libc::O_NOCTTY,
        0o644,
    )?;
    regular(&fd)?;
    chown(&fd)?;
    let file = std::fs::File::from(fd);
    file.set_len(0)?;
    Ok(file)
}

/// Writes `content` to `rel` beneath `root`, creating parent directories;
/// everything created is given to `owner` when set. The error is a
/// sentence for the model.
pub fn create_file(root: &Path, rel: &str, content: &[u8], owner: Option<(u32, u32)>) -> Result<(), String> {
    let path = relative(rel)?;
    let root_fd = open_root(root).map_err(|e| format!("workdir {}: {e}", root.display()))?;
    let why = |d: Denied| match d {
        Denied::Outside => format!("refused: {rel:?} leads outside the workdir"),
        Denied::Special(kind) => format!("refused: {rel:?} is {kind}"),
        Denied::Directory => format!("refused: {rel:?} is a directory"),
        Denied::ParentNotDirectory => format!("refused: {rel:?}: a parent is not a directory"),
        Denied::Io(e) => format!("writing {rel}: {e}"),
    };
    let mut file = create_file_at(&root_fd, path, owner).map_err(why)?;
    std::io::Write::write_all(&mut file, content).map_err(|e| why(e.into()))?;
    Ok(())
}

/// Deeper than any real tree; a bound keeps a hostile one finite.
pub const MAX_DEPTH: usize = 256;

/// How a directory is opened when a link in its place must not be followed.
const DIR_NOFOLLOW: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Opens the directory `name` in `parent`, never following a link.
pub fn open_dir_at(parent: &OwnedFd, name: &std::ffi::CStr) -> io::Result<OwnedFd> {
    Ok(nix::fcntl::openat(parent, name, DIR_NOFOLLOW, Mode::empty())?)
}

/// Opens the directory `dir` itself, refusing it when it is a link (a
/// workdir swapped for a link to elsewhere is not walked).
pub fn open_root_nofollow(dir: &Path) -> io::Result<OwnedFd> {
    Ok(nix::fcntl::open(dir, DIR_NOFOLLOW, Mode::empty())?)
}

/// The names in the directory `dir` (not `.` nor `..`), sorted.
pub fn names(dir: &OwnedFd) -> io::Result<Vec<CString>> {
    let mut names = Vec::new();
    for entry in nix::dir::Dir::from_fd(dir.try_clone()?)?.iter() {
        let name = entry?.file_name().to_owned();
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Every regular file under the directory `rel` beneath `root`, as a path
/// relative to `root` with its size, sorted. Links are not followed (nor
/// listed), subdirectories are opened from their parent's descriptor with
/// `O_NOFOLLOW`, and a directory swapped for something else meanwhile is
/// skipped.
pub fn list_files(root: &OwnedFd, rel: &Path) -> Result<Vec<(PathBuf, u64)>, Denied> {
    let dir = openat_beneath(root, or_root(rel), libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let mut out = Vec::new();
    walk(dir, rel, 0, &mut out);
    out.sort();
    Ok(out)
}

/// What can be read of one directory and below; what cannot (vanished,
/// unreadable, swapped) is left out, as `ls -R` would.
fn walk(fd: OwnedFd, rel: &Path, depth: usize, out: &mut Vec<(PathBuf, u64)>) {
    if depth > MAX_DEPTH {
        return;
    }
    let Ok(names) = names(&fd) else {
        return;
    };
    for name in names {
        let path = rel.join(OsStr::from_bytes(name.to_bytes()));
        let Ok(st) = nix::sys::stat::fstatat(&fd, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else {
            continue;
        };
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => out.push((path, st.st_size as u64)),
            libc::S_IFDIR => {
                if let Ok(sub) = open_dir_at(&fd, &name) {
                    walk(sub, &path, depth + 1, out);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_makes_names_relative_lexically_and_refuses_climbing_out() {
        let root = Path::new("/srv/box");
        assert_eq!(under(root, "a.md").unwrap(), Path::new("a.md"));
        assert_eq!(under(root, "./in/../b.md").unwrap(), Path::new("b.md"));
        assert_eq!(under(root, "/srv/box/in/c.md").unwrap(), Path::new("in/c.md"));
        assert_eq!(under(root, "file:///srv/box/d%20e.md").unwrap(), Path::new("d e.md"));
        assert_eq!(under(root, "/srv/box").unwrap(), Path::new(""));
        for bad in [
            "../x",
            "in/../../x",
            "/srv/boxer/x",
            "/etc/passwd",
            "file:///etc/passwd",
        ] {
            assert_eq!(under(root, bad), Err(NotUnder::Outside), "{bad}");
        }
        assert_eq!(under(root, "file://host/x"), Err(NotUnder::NotAFileUri));
    }

    #[test]
    fn open_and_create_refuse_links_out_and_fifos_but_follow_links_inside() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::write(outside.path().join("t"), "outside").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("out")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("t"), root.join("t")).unwrap();
        std::os::unix::fs::symlink("..", root.join("up")).unwrap();
        nix::unistd::mkfifo(&root.join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        std::fs::write(root.join("mine"), "inside").unwrap();
        std::os::unix::fs::symlink("mine", root.join("alias")).unwrap();
        let fd = open_root(root).unwrap();

        let mut text = String::new();
        io::Read::read_to_string(&mut open_file(&fd, Path::new("alias")).unwrap(), &mut text).unwrap();
        assert_eq!(text, "inside");
        for rel in ["out/t", "t", "up/x", "out/new"] {
            assert!(
                matches!(open_file(&fd, Path::new(rel)), Err(Denied::Outside)),
                "read {rel}"
            );
            assert!(
                matches!(create_file_at(&fd, Path::new(rel), None), Err(Denied::Outside)),
                "write {rel}"
            );
            assert!(matches!(stat(&fd, Path::new(rel)), Err(Denied::Outside)), "stat {rel}");
        }
        assert!(matches!(
            open_file(&fd, Path::new("fifo")),
            Err(Denied::Special("a fifo"))
        ));
        assert!(matches!(
            create_file_at(&fd, Path::new("fifo"), None),
            Err(Denied::Special(_))
        ));
        assert!(matches!(open_file(&fd, Path::new("")), Err(Denied::Directory)));
        assert_eq!(std::fs::read_to_string(outside.path().join("t")).unwrap(), "outside");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);

        let files = list_files(&fd, Path::new("")).unwrap();
        assert_eq!(
            files,
            vec![(PathBuf::from("mine"), 6)],
            "links and the fifo are not listed"
        );
    }
}
