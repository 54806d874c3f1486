//! Where in the data directory sled's files are, so that a compacted copy
//! can replace them in one atomic step.
//!
//! A store that was never compacted has sled's files (`conf`, `db`,
//! `blobs/`, `snap.*`) directly in the data directory: generation 0, the
//! layout every earlier pigeond wrote and every backup has. A compaction
//! writes a complete, fsynced copy into `sled.<n>/` and then points
//! [`POINTER_FILE`] at it, written to a temporary name, fsynced and renamed
//! over the old pointer; the rename is the moment the copy becomes the
//! store. On every open, [`tidy`] removes what that step left behind: a
//! `sled.<n>.partial` copy that never finished, an older generation, or
//! generation 0's files once a pointer exists. So a crash at any point of
//! a compaction opens either the old store or the new one, both complete.
//!
//! Owns only these names; knows nothing of what sled keeps in them.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::store::StoreError;

/// Names the current generation's directory when it is not generation 0.
pub(super) const POINTER_FILE: &str = "sled.current";
const POINTER_TMP: &str = "sled.current.tmp";
/// A generation's directory is `sled.<n>`.
const GENERATION_PREFIX: &str = "sled.";
/// sled's own names in a generation's directory.
const SLED_FILES: &[&str] = &["conf", "db", "blobs"];

/// Whether `name` is one of sled's files (generation 0's, in the data
/// directory itself).
fn is_sled_file(name: &str) -> bool {
    SLED_FILES.contains(&name) || name.starts_with("snap.")
}

fn io_error(what: &str, path: &Path, error: io::Error) -> StoreError {
    StoreError::Io(format!("{what} {}: {error}", path.display()))
}

/// The directory of generation `n` under `data`.
pub(super) fn generation_dir(data: &Path, n: u64) -> PathBuf {
    if n == 0 {
        data.to_owned()
    } else {
        data.join(format!("{GENERATION_PREFIX}{n}"))
    }
}

/// The current generation and its directory.
pub(crate) fn current(data: &Path) -> Result<(u64, PathBuf), StoreError> {
    let pointer = data.join(POINTER_FILE);
    let text = match fs::read_to_string(&pointer) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, data.to_owned())),
        Err(e) => return Err(io_error("cannot read", &pointer, e)),
    };
    let n = parse_generation(text.trim())
        .filter(|&n| n > 0)
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "{} should name a directory `sled.<n>` but holds {:?}",
                pointer.display(),
                text.trim()
            ))
        })?;
    let dir = generation_dir(data, n);
    if !dir.is_dir() {
        return Err(StoreError::Corrupt(format!(
            "{} names {}, which does not exist: the store's data is gone. \
             Restore the last backup",
            pointer.display(),
            dir.display()
        )));
    }
    Ok((n, dir))
}

/// `sled.<n>` → n.
fn parse_generation(name: &str) -> Option<u64> {
    name.strip_prefix(GENERATION_PREFIX)?.parse().ok()
}

/// Removes everything of generations other than `current`: unfinished
/// copies, retired generations, and generation 0's files when `current`
/// is above it. Call with the data directory locked, before sled opens.
pub(super) fn tidy(data: &Path, current: u64) -> Result<(), StoreError> {
    let entries = match fs::read_dir(data) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error("cannot list", data, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io_error("cannot list", data, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let stale = match name.strip_suffix(".partial") {
            Some(copy) => parse_generation(copy).is_some(),
            None => parse_generation(name).is_some_and(|n| n != current),
        };
        let legacy = current > 0 && is_sled_file(name);
        if stale || legacy || name == POINTER_TMP {
            remove(&entry.path())?;
        }
    }
    Ok(())
}

/// Removes generation `n`'s sled files (a whole `sled.<n>` directory, or
/// generation 0's files in the data directory itself).
pub(super) fn remove_generation(data: &Path, n: u64) -> Result<(), StoreError> {
    if n > 0 {
        return remove(&generation_dir(data, n));
    }
    for entry in fs::read_dir(data).map_err(|e| io_error("cannot list", data, e))? {
        let entry = entry.map_err(|e| io_error("cannot list", data, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_sled_file(name) {
            remove(&entry.path())?;
        }
    }
    Ok(())
}

fn remove(path: &Path) -> Result<(), StoreError> {
    let result = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("cannot remove", path, e)),
    }
}

/// Makes generation `n` (a complete, fsynced `sled.<n>`) the store: the
/// pointer is written beside, fsynced, renamed into place and the rename
/// fsynced. Before the rename a crash opens the old generation; after it,
/// the new one.
pub(super) fn switch_to(data: &Path, n: u64) -> Result<(), StoreError> {
    let tmp = data.join(POINTER_TMP);
    let mut file = fs::File::create(&tmp).map_err(|e| io_error("cannot create", &tmp, e))?;
    file.write_all(format!("{GENERATION_PREFIX}{n}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error("cannot write", &tmp, e))?;
    let pointer = data.join(POINTER_FILE);
    fs::rename(&tmp, &pointer).map_err(|e| io_error("cannot rename to", &pointer, e))?;
    fs::File::open(data)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("cannot fsync", data, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        fs::write(path, b"x").unwrap();
    }

    #[test]
    fn a_directory_without_a_pointer_is_generation_zero() {
        let data = tempfile::tempdir().unwrap();
        assert_eq!(current(data.path()).unwrap(), (0, data.path().to_owned()));
    }

    #[test]
    fn the_pointer_names_the_generation_and_tidy_removes_the_rest() {
        let data = tempfile::tempdir().unwrap();
        let d = data.path();
        for name in [
            "db",
            "conf",
            "snap.0000001",
            "pigeond.lock",
            "pigeon.manifest",
        ] {
            touch(&d.join(name));
        }
        fs::create_dir(d.join("blobs")).unwrap();
        for dir in ["sled.1", "sled.2", "sled.3.partial"] {
            fs::create_dir(d.join(dir)).unwrap();
            touch(&d.join(dir).join("db"));
        }
        switch_to(d, 2).unwrap();
        assert_eq!(current(d).unwrap(), (2, d.join("sled.2")));
        tidy(d, 2).unwrap();
        let mut left: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["pigeon.manifest", "pigeond.lock", "sled.2", "sled.current"]
        );
        assert!(d.join("sled.2").join("db").exists());
    }

    #[test]
    fn tidy_of_generation_zero_keeps_its_files_and_drops_copies() {
        let data = tempfile::tempdir().unwrap();
        let d = data.path();
        touch(&d.join("db"));
        touch(&d.join("conf"));
        fs::create_dir(d.join("sled.1.partial")).unwrap();
        tidy(d, 0).unwrap();
        assert!(d.join("db").exists() && d.join("conf").exists());
        assert!(!d.join("sled.1.partial").exists());
    }

    #[test]
    fn a_pointer_to_nothing_or_garbage_is_refused() {
        let data = tempfile::tempdir().unwrap();
        let d = data.path();
        fs::write(d.join(POINTER_FILE), "sled.7\n").unwrap();
        assert!(matches!(current(d), Err(StoreError::Corrupt(_))));
        fs::write(d.join(POINTER_FILE), "elsewhere\n").unwrap();
        assert!(matches!(current(d), Err(StoreError::Corrupt(_))));
    }
}
