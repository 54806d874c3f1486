//! The admin bearer token: created on first start as 32 random bytes in
//! hex in a file only the server's user can read (mode 0600), read by the
//! server and by `pigeond admin`, compared in constant time.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rand::RngCore;

use super::AdminError;

/// Shortest token accepted from a file an operator wrote by hand.
const MIN_TOKEN_LEN: usize = 16;

/// The token in `path`, creating the file with a new random token if it
/// does not exist.
pub fn load_or_create(path: &Path) -> Result<String, AdminError> {
    match read(path) {
        Err(AdminError::TokenFile { ref source, .. })
            if source.kind() == std::io::ErrorKind::NotFound => {}
        other => return other,
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|source| token_error(path, source))?;
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let created = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    let mut file = match created {
        Ok(file) => file,
        // Another process created it between our read and create: use its.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return read(path),
        Err(source) => return Err(token_error(path, source)),
    };
    file.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| token_error(path, source))?;
    tracing::info!(file = %path.display(), "created the admin token file");
    Ok(token)
}

/// The token in an existing file (surrounding whitespace ignored).
pub fn read(path: &Path) -> Result<String, AdminError> {
    let text = fs::read_to_string(path).map_err(|source| token_error(path, source))?;
    let token = text.trim();
    if token.len() < MIN_TOKEN_LEN || token.chars().any(|c| c.is_whitespace()) {
        return Err(AdminError::BadToken(format!(
            "{} must hold one token of at least {MIN_TOKEN_LEN} characters",
            path.display()
        )));
    }
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                "the admin token file is readable by other users; chmod 600 it"
            );
        }
    }
    Ok(token.to_owned())
}

/// Compare a presented token with the real one without leaking, through
/// timing, how much of it matched.
pub fn matches(presented: &str, expected: &str) -> bool {
    let (a, b) = (presented.as_bytes(), expected.as_bytes());
    let mut diff = u8::from(a.len() != b.len());
    for (i, y) in b.iter().enumerate() {
        let x = a.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0
}

fn token_error(path: &Path, source: std::io::Error) -> AdminError {
    AdminError::TokenFile {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_file_is_created_private_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/admin.token");
        let token = load_or_create(&path).unwrap();
        assert_eq!(token.len(), 64);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create(&path).unwrap(), token);
        assert_eq!(read(&path).unwrap(), token);
    }

    #[test]
    fn a_short_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        fs::write(&path, "abc\n").unwrap();
        assert!(matches!(
            load_or_create(&path),
            Err(AdminError::BadToken(_))
        ));
    }

    #[test]
    fn tokens_match_only_exactly() {
        assert!(matches("abcdef", "abcdef"));
        assert!(!matches("abcdeg", "abcdef"));
        assert!(!matches("abcde", "abcdef"));
        assert!(!matches("abcdefg", "abcdef"));
        assert!(!matches("", "abcdef"));
    }
}
