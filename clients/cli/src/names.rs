//! A small cache of user names by id in the profile directory
//! (`names.json`), so group events can name users the entries only carry
//! by id (members added or removed), even when they are no longer in the
//! group when the event is printed. Learnt from member lists and entries;
//! losing it only makes output show `#id`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The cache file's name inside the profile directory.
pub const NAMES_FILE: &str = "names.json";

/// Names by user id, loaded from and saved to the profile directory.
#[derive(Debug, Default)]
pub struct NameCache {
    path: Option<PathBuf>,
    names: BTreeMap<u64, String>,
    dirty: bool,
}

impl NameCache {
    /// The cache in `dir`; empty if it is missing or unreadable (it is
    /// only a cache).
    pub fn load(dir: &Path) -> NameCache {
        let path = dir.join(NAMES_FILE);
        let names = fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        NameCache {
            path: Some(path),
            names,
            dirty: false,
        }
    }

    /// Every known (id, name).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &str)> {
        self.names.iter().map(|(id, name)| (*id, name.as_str()))
    }

    /// Remember a name; returns whether it was new or changed.
    pub fn learn(&mut self, id: u64, name: &str) -> bool {
        if id == 0 || name.is_empty() || self.names.get(&id).map(String::as_str) == Some(name) {
            return false;
        }
        self.names.insert(id, name.to_owned());
        self.dirty = true;
        true
    }

    /// Write the cache if it changed (temp file, then rename). Best
    /// effort: a failure is reported to the caller, who may ignore it.
    pub fn save(&mut self) -> std::io::Result<()> {
        let (Some(path), true) = (&self.path, self.dirty) else {
            return Ok(());
        };
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec(&self.names).expect("a map of names serializes");
        fs::write(&tmp, text)?;
        fs::rename(&tmp, path)?;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_survive_a_reload_and_unchanged_names_do_not_dirty() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = NameCache::load(dir.path());
        assert!(cache.learn(7, "bob"));
        assert!(!cache.learn(7, "bob"));
        assert!(!cache.learn(0, "nobody"));
        cache.save().unwrap();
        let again = NameCache::load(dir.path());
        assert_eq!(again.iter().collect::<Vec<_>>(), [(7, "bob")]);
    }

    #[test]
    fn a_damaged_cache_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(NAMES_FILE), b"{ nope").unwrap();
        assert_eq!(NameCache::load(dir.path()).iter().count(), 0);
    }
}
