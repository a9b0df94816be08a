//! Permission checks on files that hold secrets (a token secret, a config file with the
//! API token): other local users must not read them.

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

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn group_or_other_read_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(!readable_by_others(&f));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(readable_by_others(&f));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o604)).unwrap();
        assert!(readable_by_others(&f));
    }
}
