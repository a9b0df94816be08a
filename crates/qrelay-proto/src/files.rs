//! Files that hold secrets (private keys, token secrets, the API token, config files
//! holding one): other local users must not read them. One place for the check, the
//! warning and the repair, used by TLS, auth, the config and the control API.

use std::path::Path;

/// Whether `path` can be read by its group or by others.
#[cfg(unix)]
pub fn readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
}

/// Whether `path` can be read by its group or by others.
#[cfg(not(unix))]
pub fn readable_by_others(_: &Path) -> bool {
    false
}

/// Logs a warning when `path`, which holds `what`, is readable by group or others.
pub fn warn_if_shared(path: &Path, what: &str) {
    if readable_by_others(path) {
        tracing::warn!(path = %path.display(), "{what} is readable by other users; chmod 600 it");
    }
}

/// Makes `path`, a file of the relay's own holding `what`, owner-only (0600) when its
/// group or others may read it, and says so.
pub fn make_private(path: &Path, what: &str) -> std::io::Result<()> {
    if readable_by_others(path) {
        tracing::warn!(path = %path.display(), "{what} was readable by other users; making it 0600");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn group_or_other_read_is_noticed_and_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(!readable_by_others(&f));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(readable_by_others(&f));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o604)).unwrap();
        assert!(readable_by_others(&f));
        make_private(&f, "a test secret").unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
