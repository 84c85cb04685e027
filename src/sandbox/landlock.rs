//! The landlock backend: builds the ruleset in the parent.
//!
//! `restrict_self` restricts only the calling thread, so this module only
//! *builds* a [`RulesetCreated`] (opening every allowed path, which needs
//! allocation and may fail with a useful error); the forked child applies
//! it in [`super::limits::ChildSetup::apply`]. Nothing here may ever call
//! `restrict_self`: doing it in the daemon would sandbox agentd itself.
//!
//! Required rights are demanded with `HardRequirement` unless the policy is
//! best-effort: filesystem rights up to ABI 3 (without `Truncate` a
//! sandboxed process could truncate any file it can see) and, when network
//! is off, TCP bind/connect (ABI 4). Newer rights (device ioctls, pathname
//! UNIX sockets) and the ABI 6 scopes (abstract UNIX sockets, signals to
//! processes outside the sandbox) are taken when the kernel has them.

use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, Scope,
};

use super::SandboxError;

/// The ABI whose filesystem rights are required.
const REQUIRED_FS_ABI: ABI = ABI::V3;
/// The newest ABI this module asks for, best effort.
const WANTED_ABI: ABI = ABI::V9;

/// The Landlock ABI version of the running kernel: 0 when unsupported or
/// disabled, otherwise 1, 2, …
pub fn kernel_abi() -> i32 {
    // SAFETY: landlock_create_ruleset with a NULL attr, size 0 and the
    // VERSION flag only returns the ABI number (or -1 with errno).
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    if v < 0 { 0 } else { v as i32 }
}

/// Paths as the landlock ruleset sees them.
#[derive(Debug, Clone, Default)]
pub struct Allowed {
    pub read_only: Vec<PathBuf>,
    pub writable: Vec<PathBuf>,
}

/// Builds the ruleset for `allowed` paths and network on/off.
///
/// Read-only paths that do not exist are skipped (a profile may list
/// `/lib64` for machines that have it; granting nothing is safe); a path
/// that exists but cannot be opened is an error, because the landlock crate
/// would silently drop it. Writable paths must exist.
pub fn build(allowed: &Allowed, network: bool, best_effort: bool) -> Result<RulesetCreated, SandboxError> {
    let abi = kernel_abi();
    if abi == 0 && !best_effort {
        return Err(SandboxError::LandlockUnsupported {
            abi,
            missing: "Landlock itself (not built into this kernel or not enabled at boot)",
        });
    }
    if best_effort {
        let missing = match abi {
            0 => Some("Landlock itself: no filesystem restriction at all"),
            1 | 2 => Some("truncate rules (ABI 3)"),
            3 if !network => Some("TCP rules (ABI 4); seccomp or the network namespace still deny sockets"),
            _ => None,
        };
        if let Some(missing) = missing {
            tracing::warn!(
                abi,
                missing,
                "landlock best effort: this kernel does not enforce the whole policy"
            );
        }
    }
    let required = if best_effort {
        CompatLevel::BestEffort
    } else {
        CompatLevel::HardRequirement
    };
    let mut ruleset = Ruleset::default()
        .set_compatibility(required)
        .handle_access(AccessFs::from_all(REQUIRED_FS_ABI))
        .map_err(|source| unsupported(abi, "filesystem rights of ABI 3 (truncate)", source))?;
    if !network {
        ruleset = ruleset
            .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)
            .map_err(|source| unsupported(abi, "TCP rules of ABI 4 (network: false)", source))?;
    }
    let ruleset = ruleset
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(WANTED_ABI))?
        .scope(Scope::from_all(WANTED_ABI))?;
    let mut created = ruleset.create().map_err(|source| {
        if best_effort {
            SandboxError::Landlock(source)
        } else {
            unsupported(abi, "a Landlock ruleset", source)
        }
    })?;
    // Rules only grant; BestEffort here trims rights the kernel lacks
    // instead of failing on them.
    created = created.set_compatibility(CompatLevel::BestEffort);
    for p in &allowed.read_only {
        if let Some(rule) = rule_for(p, AccessFs::from_read(WANTED_ABI), false)? {
            created = created.add_rule(rule)?;
        }
    }
    for p in &allowed.writable {
        if let Some(rule) = rule_for(p, AccessFs::from_all(WANTED_ABI), true)? {
            created = created.add_rule(rule)?;
        }
    }
    Ok(created)
}

fn unsupported(abi: i32, missing: &'static str, source: landlock::RulesetError) -> SandboxError {
    tracing::debug!(%source, "landlock compatibility failure");
    SandboxError::LandlockUnsupported { abi, missing }
}

fn rule_for(
    path: &Path,
    access: BitFlags<AccessFs>,
    must_exist: bool,
) -> Result<Option<PathBeneath<PathFd>>, SandboxError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => return Ok(None),
        Err(source) => {
            return Err(SandboxError::Path {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let fd = PathFd::new(path).map_err(|e| SandboxError::Path {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    // Directory-only rights on a file would make the kernel reject the
    // rule; the crate would trim them and report the ruleset as partial.
    let mut access = if meta.is_dir() {
        access
    } else {
        access & AccessFs::from_file(WANTED_ABI)
    };
    // A socket listed read-only (the tool bridge) may be connected to:
    // kernels with pathname UNIX socket rules (ABI 9) ask for this right.
    if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
        access |= AccessFs::ResolveUnix;
    }
    Ok(Some(PathBeneath::new(fd, access)))
}
