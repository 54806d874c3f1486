//! When to compact the store (see [`Store::compact`]): the collector asks
//! after every sweep. Reading the disk use is cheap; counting the live data
//! reads the store, so it happens only above `compact_min_disk_bytes` and
//! stops as soon as the count shows the files are not `compact_ratio`
//! times larger (or the live data more than a compaction should copy).

use crate::config::StoreSettings;
use crate::store::{CompactReport, Store, StoreError};

/// Compacts `store` if `settings` say it pays now; `None` if not.
/// `last_after` is the disk use the last compaction of this process left
/// (updated here): sled's fresh files are already 3–5 times the live data,
/// so the store is compacted again only once its files have doubled since,
/// never over and over at the same size.
pub fn maybe_compact(
    store: &dyn Store,
    settings: &StoreSettings,
    last_after: &mut Option<u64>,
) -> Result<Option<CompactReport>, StoreError> {
    if !settings.auto_compact {
        return Ok(None);
    }
    // A limit of 0 stops at the first record: only the disk use is read.
    let disk = store.space(0)?.disk_bytes;
    if disk < settings.compact_min_disk_bytes {
        return Ok(None);
    }
    if last_after.is_some_and(|after| disk < after.saturating_mul(2)) {
        return Ok(None);
    }
    let worth = disk / u64::from(settings.compact_ratio.max(1));
    let limit = worth.min(settings.compact_max_live_bytes);
    match store.space(limit)?.live_bytes {
        Some(live) => {
            tracing::info!(
                disk_bytes = disk,
                live_bytes = live,
                "the store's files hold much more than its live data: compacting"
            );
            let report = store.compact()?;
            *last_after = Some(report.disk_after);
            Ok(Some(report))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Durability, SledStore};

    fn settings(min_disk: u64) -> StoreSettings {
        StoreSettings {
            auto_compact: true,
            compact_min_disk_bytes: min_disk,
            compact_ratio: 8,
            compact_max_live_bytes: 1 << 30,
        }
    }

    #[test]
    fn compacts_only_when_the_files_outgrow_the_live_data() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), Durability::Fsync).unwrap();
        // A store of a few users: its files are far larger than its records.
        for i in 0..10 {
            store.create_user(&format!("u{i}"), "hash", 1).unwrap();
        }
        let disk = store.space(0).unwrap().disk_bytes;
        let mut last = None;
        let below_minimum = maybe_compact(&store, &settings(disk + 1), &mut last);
        assert!(below_minimum.unwrap().is_none());
        let off = StoreSettings {
            auto_compact: false,
            ..settings(0)
        };
        assert!(maybe_compact(&store, &off, &mut last).unwrap().is_none());
        let tight = StoreSettings {
            compact_max_live_bytes: 10,
            ..settings(0)
        };
        assert!(maybe_compact(&store, &tight, &mut last).unwrap().is_none());
        let report = maybe_compact(&store, &settings(0), &mut last)
            .unwrap()
            .expect("compacted");
        assert!(report.records >= 10, "{report:?}");
        assert_eq!(last, Some(report.disk_after));
        assert!(dir.path().join("sled.1").exists(), "switched to the copy");
        assert!(store.user_by_name("u9").unwrap().is_some());
        // The fresh files are still far larger than ten users: no second
        // compaction until they have doubled.
        let again = maybe_compact(&store, &settings(0), &mut last);
        assert!(again.unwrap().is_none());
        assert!(dir.path().join("sled.1").exists(), "still generation 1");
    }
}
