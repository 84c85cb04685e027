//! The landlock backend: builds the ruleset in the parent.
//!
//! `restrict_self` restricts only the calling thread, so this module only
//! *builds* a [`RulesetCreated`] (opening every allowed path, which needs
//! allocation and may fail with a useful error); the forked child applies
//! it in [`super::limits::ChildSetup::apply`]. Nothing here may ever call
//! `restrict_self`: doing it in the daemon would sandbox agentd itself.
//!
//! Required rights are demanded with `HardRequirement` unless the policy is
//! best-effort ([`Requirements`]): filesystem rights up to ABI 3 (without
//! `Truncate` a sandboxed process could truncate any file it can see),
//! when network is off TCP bind/connect (ABI 4), and for a landlock-only
//! run the ABI 6 scopes (signals to processes outside the sandbox, abstract
//! UNIX sockets): without them code running as agentd's own uid could
//! `kill -9 -1`. Newer rights (device ioctls, pathname UNIX sockets of ABI
//! 9) are taken when the kernel has them.

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

/// What a ruleset must enforce, beyond the filesystem rights of ABI 3 that
/// every ruleset requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirements {
    /// TCP bind/connect rules (ABI 4): required when network is off.
    pub tcp: bool,
    /// The signal and abstract-socket scopes (ABI 6): required when
    /// Landlock is the only wall (no PID or network namespace around it).
    pub scopes: bool,
}

impl Requirements {
    /// A landlock-only run: everything the kernel must hold by itself.
    pub fn landlock_only(network: bool) -> Requirements {
        Requirements {
            tcp: !network,
            scopes: true,
        }
    }

    /// Inside bwrap's namespaces, which already isolate signals and
    /// abstract sockets (and the network, when off).
    pub fn inside_namespaces(network: bool) -> Requirements {
        Requirements {
            tcp: !network,
            scopes: false,
        }
    }

    /// The protections a kernel with Landlock ABI `abi` cannot give, each
    /// named with the ABI (and Linux version) that brings it.
    pub fn missing(&self, abi: i32) -> Vec<&'static str> {
        let mut m = Vec::new();
        if abi < 1 {
            m.push("Landlock itself (not built into this kernel or not enabled at boot)");
            return m;
        }
        if abi < 3 {
            m.push("truncate rules (ABI 3, Linux 6.2)");
        }
        if self.tcp && abi < 4 {
            m.push("TCP rules (ABI 4, Linux 6.7)");
        }
        if self.scopes && abi < 6 {
            m.push("the signal and abstract-socket scopes (ABI 6, Linux 6.12)");
        }
        m
    }
}

/// The running kernel's release, for messages (`uname -r`).
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| format!("Linux {}", u.release().to_string_lossy()))
        .unwrap_or_else(|_| "this kernel".into())
}

/// Builds the ruleset for `allowed` paths and network on/off.
///
/// A kernel that lacks a required protection is refused with a message
/// naming the kernel and what is missing, unless `best_effort`, which runs
/// with what the kernel has and logs each protection lost (once per
/// process). Read-only paths that do not exist are skipped (a profile may
/// list `/lib64` for machines that have it; granting nothing is safe); a
/// path that exists but cannot be opened is an error, because the landlock
/// crate would silently drop it. Writable paths must exist.
pub fn build(allowed: &Allowed, required: &Requirements, best_effort: bool) -> Result<RulesetCreated, SandboxError> {
    let abi = kernel_abi();
    let missing = required.missing(abi);
    if !missing.is_empty() {
        if !best_effort {
            return Err(SandboxError::LandlockUnsupported {
                abi,
                kernel: kernel_release(),
                missing: missing.join(", "),
            });
        }
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            for lost in &missing {
                tracing::warn!(
                    abi,
                    lost,
                    "landlock best effort: this kernel does not give this protection"
                );
            }
        });
    }
    let level = if best_effort {
        CompatLevel::BestEffort
    } else {
        CompatLevel::HardRequirement
    };
    let mut ruleset = Ruleset::default()
        .set_compatibility(level)
        .handle_access(AccessFs::from_all(REQUIRED_FS_ABI))
        .map_err(|source| unsupported(abi, "filesystem rights of ABI 3 (truncate)", source))?;
    if required.tcp {
        ruleset = ruleset
            .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)
            .map_err(|source| unsupported(abi, "TCP rules of ABI 4 (network: false)", source))?;
    }
    if required.scopes {
        ruleset = ruleset
            .scope(Scope::from_all(ABI::V6))
            .map_err(|source| unsupported(abi, "the scopes of ABI 6", source))?;
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

fn unsupported(abi: i32, missing: &str, source: landlock::RulesetError) -> SandboxError {
    tracing::debug!(%source, "landlock compatibility failure");
    SandboxError::LandlockUnsupported {
        abi,
        kernel: kernel_release(),
        missing: missing.into(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_landlock_only_run_needs_abi_6_and_names_what_an_older_kernel_lacks() {
        let only = Requirements::landlock_only(false);
        assert!(only.missing(6).is_empty());
        assert!(only.missing(7).is_empty());
        // Ubuntu 24.04's 6.8 (ABI 4) and 6.10 (ABI 5): the scopes are missing.
        for abi in [4, 5] {
            assert_eq!(
                only.missing(abi),
                ["the signal and abstract-socket scopes (ABI 6, Linux 6.12)"]
            );
        }
        assert_eq!(only.missing(3).len(), 2);
        assert_eq!(only.missing(0).len(), 1);
        // Networked: no TCP rules needed, scopes still are.
        assert_eq!(Requirements::landlock_only(true).missing(3).len(), 1);
        // Inside bwrap's namespaces the scopes are not needed.
        assert!(Requirements::inside_namespaces(false).missing(4).is_empty());
    }

    #[test]
    fn the_refusal_names_the_kernel_what_is_missing_and_the_fix() {
        let e = SandboxError::LandlockUnsupported {
            abi: 4,
            kernel: "Linux 6.8.0-31-generic".into(),
            missing: Requirements::landlock_only(false).missing(4).join(", "),
        }
        .to_string();
        assert!(e.contains("Linux 6.8.0-31-generic"), "{e}");
        assert!(e.contains("ABI 4"), "{e}");
        assert!(e.contains("signal and abstract-socket scopes"), "{e}");
        assert!(e.contains("bwrap profile"), "{e}");
        assert!(e.contains("best_effort"), "{e}");
    }
}
