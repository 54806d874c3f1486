//! Persisted client state: one small JSON file (`profile.json`) in a
//! directory holding the server address, username, user id, device id,
//! token, the acknowledged inbox cursor and one cursor per large group
//! timeline being followed.
//!
//! Every save writes a temporary file, fsyncs it, renames it over the old
//! one and fsyncs the directory, so a crash leaves the old or the new state,
//! never a torn file. The file is created with mode 0600 (the token is a
//! bearer secret) inside a 0700 directory on unix. Owns no network code.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::SdkError;

/// The profile file's name inside the profile directory.
pub const PROFILE_FILE: &str = "profile.json";

/// What a client remembers between runs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// The server the session below belongs to ("host:port").
    #[serde(default)]
    pub server: Option<String>,
    /// The logged-in username.
    #[serde(default)]
    pub username: Option<String>,
    /// The logged-in user's id.
    #[serde(default)]
    pub user_id: Option<u64>,
    /// This installation's device id: random, generated once, never changed.
    pub device_id: String,
    /// The login token (a bearer secret), if logged in.
    #[serde(default)]
    pub token: Option<String>,
    /// When the token expires, ms since the Unix epoch (0: unknown).
    #[serde(default)]
    pub token_expires_at_ms: u64,
    /// The highest seq handed to the application; messages at or below it
    /// are duplicates. Pulls resume above it.
    #[serde(default)]
    pub cursor: u64,
    /// Per large group (by id): the highest timeline seq handed to the
    /// application. Groups without an entry start at
    /// [`crate::timeline::timeline_start`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub group_cursors: BTreeMap<u64, u64>,
    /// Where this profile is saved; None for an in-memory profile.
    #[serde(skip)]
    dir: Option<PathBuf>,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("dir", &self.dir)
            .field("server", &self.server)
            .field("username", &self.username)
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("cursor", &self.cursor)
            .field("group_cursors", &self.group_cursors)
            .finish()
    }
}

impl Profile {
    /// A profile that lives only in memory (saves do nothing), with a fresh
    /// device id. For tests and short-lived tools.
    pub fn in_memory() -> Profile {
        Profile {
            server: None,
            username: None,
            user_id: None,
            device_id: new_device_id(),
            token: None,
            token_expires_at_ms: 0,
            cursor: 0,
            group_cursors: BTreeMap::new(),
            dir: None,
        }
    }

    /// Load the profile in `dir`, or create one (with a new device id) and
    /// save it right away so the device id is stable from then on.
    pub fn open(dir: impl AsRef<Path>) -> Result<Profile, SdkError> {
        let dir = dir.as_ref();
        if let Some(profile) = Profile::load(dir)? {
            return Ok(profile);
        }
        let mut profile = Profile::in_memory();
        profile.dir = Some(dir.to_path_buf());
        profile.save()?;
        Ok(profile)
    }

    /// Load the profile in `dir`, or None if there is none yet.
    pub fn load(dir: impl AsRef<Path>) -> Result<Option<Profile>, SdkError> {
        let dir = dir.as_ref();
        let path = dir.join(PROFILE_FILE);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SdkError::profile(path, e)),
        };
        let mut profile: Profile = serde_json::from_slice(&text)
            .map_err(|e| SdkError::profile(&path, format!("not a valid profile: {e}")))?;
        if profile.device_id.is_empty() {
            return Err(SdkError::profile(path, "device_id is empty"));
        }
        profile.dir = Some(dir.to_path_buf());
        Ok(Some(profile))
    }

    /// The directory this profile is saved in, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Whether a token is stored (the user is logged in on this device).
    pub fn is_logged_in(&self) -> bool {
        self.token.is_some()
    }

    /// Record a successful login. A different server or user than before
    /// starts the cursor over at the server's cursor for this device, since
    /// the old one counted another queue.
    pub fn record_login(
        &mut self,
        server: &str,
        username: &str,
        answer: &pigeon_protocol::pb::LoginResponse,
    ) {
        // A token is only valid on the server that issued it, so a token
        // login echoing ours proves the same server under another address.
        let same_server = self.server.as_deref() == Some(server)
            || (!answer.token.is_empty() && self.token.as_deref() == Some(&answer.token));
        let same_queue = same_server && self.user_id == Some(answer.user_id);
        if !same_queue {
            self.cursor = answer.acked_seq;
            self.group_cursors.clear();
        }
        self.server = Some(server.to_owned());
        if !username.is_empty() {
            self.username = Some(username.to_owned());
        }
        self.user_id = Some(answer.user_id);
        if !answer.token.is_empty() {
            self.token = Some(answer.token.clone());
            self.token_expires_at_ms = answer.token_expires_at_ms;
        }
    }

    /// Forget the token (after logout, or when the server refused it).
    pub fn clear_token(&mut self) {
        self.token = None;
        self.token_expires_at_ms = 0;
    }

    /// Write the profile atomically (temp file, fsync, rename, fsync dir).
    /// Does nothing for an in-memory profile.
    pub fn save(&self) -> Result<(), SdkError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        create_private_dir(dir)?;
        let text = serde_json::to_vec_pretty(self).expect("a profile always serializes");
        let path = dir.join(PROFILE_FILE);
        let tmp = dir.join(format!(
            ".{PROFILE_FILE}.{}.{:08x}.tmp",
            std::process::id(),
            rand::rng().random::<u32>()
        ));
        let written = write_synced(&tmp, &text).and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = written {
            // Best effort: the temp file is garbage whether or not it goes.
            let _ = fs::remove_file(&tmp);
            return Err(SdkError::profile(path, e));
        }
        sync_dir(dir).map_err(|e| SdkError::profile(dir, e))
    }
}

/// A new random device id: 32 hex digits (within the server's charset).
pub fn new_device_id() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn create_private_dir(dir: &Path) -> Result<(), SdkError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| SdkError::profile(dir, e))
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    // Directories cannot be opened for fsync on this platform; the rename
    // itself is atomic there.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pigeon_protocol::pb::LoginResponse;

    fn login(user_id: u64, token: &str, acked_seq: u64) -> LoginResponse {
        LoginResponse {
            user_id,
            token: token.into(),
            token_expires_at_ms: 99,
            acked_seq,
            ..Default::default()
        }
    }

    #[test]
    fn open_creates_a_profile_with_a_stable_device_id() {
        let dir = tempfile::tempdir().unwrap();
        let first = Profile::open(dir.path()).unwrap();
        assert_eq!(first.device_id.len(), 32);
        let again = Profile::open(dir.path()).unwrap();
        assert_eq!(first.device_id, again.device_id);
        assert_ne!(first.device_id, Profile::in_memory().device_id);
    }

    #[test]
    fn saved_state_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut profile = Profile::open(dir.path().join("nested/p")).unwrap();
        profile.record_login("127.0.0.1:7443", "alice", &login(7, "tok", 0));
        profile.cursor = 42;
        profile.save().unwrap();
        let loaded = Profile::load(dir.path().join("nested/p")).unwrap().unwrap();
        assert_eq!(loaded, profile);
        assert_eq!(loaded.cursor, 42);
        assert_eq!(loaded.token.as_deref(), Some("tok"));
        assert_eq!(loaded.user_id, Some(7));
        assert_eq!(loaded.username.as_deref(), Some("alice"));
    }

    #[test]
    fn group_cursors_survive_a_reload_and_reset_with_the_user() {
        let dir = tempfile::tempdir().unwrap();
        let mut profile = Profile::open(dir.path()).unwrap();
        profile.record_login("h:1", "alice", &login(7, "t1", 0));
        profile.group_cursors.insert(u64::MAX, 12);
        profile.save().unwrap();
        let mut loaded = Profile::load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.group_cursors.get(&u64::MAX), Some(&12));
        loaded.record_login("h:1", "bob", &login(8, "t2", 0));
        assert!(loaded.group_cursors.is_empty());
    }

    #[test]
    fn profile_without_group_cursors_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(PROFILE_FILE),
            br#"{"device_id": "d1", "cursor": 4}"#,
        )
        .unwrap();
        let profile = Profile::load(dir.path()).unwrap().unwrap();
        assert_eq!(profile.cursor, 4);
        assert!(profile.group_cursors.is_empty());
    }

    #[test]
    fn missing_profile_loads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Profile::load(dir.path()).unwrap().is_none());
    }

    #[test]
    fn corrupt_profile_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(PROFILE_FILE), b"{ not json").unwrap();
        let err = Profile::open(dir.path()).unwrap_err();
        assert!(matches!(err, SdkError::Profile { .. }), "{err:?}");
    }

    #[test]
    fn save_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut profile = Profile::open(dir.path()).unwrap();
        for cursor in 1..5 {
            profile.cursor = cursor;
            profile.save().unwrap();
        }
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [PROFILE_FILE]);
    }

    #[cfg(unix)]
    #[test]
    fn profile_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let profile_dir = dir.path().join("p");
        Profile::open(&profile_dir).unwrap();
        let file_mode = fs::metadata(profile_dir.join(PROFILE_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(file_mode & 0o777, 0o600);
        let dir_mode = fs::metadata(&profile_dir).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }

    #[test]
    fn relogin_as_the_same_user_keeps_the_cursor() {
        let mut profile = Profile::in_memory();
        profile.record_login("h:1", "alice", &login(7, "t1", 0));
        profile.cursor = 10;
        profile.record_login("h:1", "alice", &login(7, "t2", 3));
        assert_eq!(profile.cursor, 10);
        assert_eq!(profile.token.as_deref(), Some("t2"));
    }

    #[test]
    fn login_as_another_user_or_server_starts_from_the_servers_cursor() {
        let mut profile = Profile::in_memory();
        profile.record_login("h:1", "alice", &login(7, "t1", 0));
        profile.cursor = 10;
        profile.record_login("h:1", "bob", &login(8, "t2", 2));
        assert_eq!(profile.cursor, 2);
        profile.cursor = 10;
        profile.record_login("h:2", "bob", &login(8, "t3", 0));
        assert_eq!(profile.cursor, 0);
    }

    #[test]
    fn token_accepted_under_another_address_keeps_the_cursor() {
        let mut profile = Profile::in_memory();
        profile.record_login("127.0.0.1:7443", "alice", &login(7, "t1", 0));
        profile.cursor = 10;
        profile.record_login("localhost:7443", "", &login(7, "t1", 4));
        assert_eq!(profile.cursor, 10);
        assert_eq!(profile.server.as_deref(), Some("localhost:7443"));
    }

    #[test]
    fn token_login_answer_without_token_keeps_the_stored_one() {
        let mut profile = Profile::in_memory();
        profile.record_login("h:1", "alice", &login(7, "t1", 0));
        profile.record_login("h:1", "", &login(7, "", 0));
        assert_eq!(profile.token.as_deref(), Some("t1"));
        assert_eq!(profile.username.as_deref(), Some("alice"));
        profile.clear_token();
        assert!(!profile.is_logged_in());
    }

    #[test]
    fn in_memory_profile_saves_nothing() {
        let profile = Profile::in_memory();
        profile.save().unwrap();
        assert!(profile.dir().is_none());
    }
}
