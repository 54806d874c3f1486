//! Each user's max seq as the writer last left it, in memory.
//!
//! A max seq is the larger of the queue's last entry and the user's
//! `userid_maxseq` record, which only a Collect writes (see the module docs
//! of `sled_store`). Finding the last entry costs a reverse range scan, and
//! sled clones a whole node for each scan, about as much as the insert of
//! the record it replaces; so the writer keeps the answer here once it has
//! found it, and raises it with every batch it commits.
//!
//! Only the writer adds to the map, and only after its batch is committed
//! (logged, or applied in a transaction): a value here is never below the
//! store's, or the next send would reuse a seq, and never above it, or the
//! next send would leave a gap. Readers take a value when there is one and
//! otherwise work it out from the store without adding it, since theirs
//! could be older than one the writer adds meanwhile.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::store::{Seq, UserId};

/// Users held at most. Past it the map starts again empty: a miss costs
/// one reverse scan, and 2^20 users take about 20 MiB.
const CAPACITY: usize = 1 << 20;

/// See the module docs.
#[derive(Default)]
pub(super) struct Tops(Mutex<HashMap<UserId, Seq>>);

impl Tops {
    /// The user's max seq, if the writer has it.
    pub(super) fn get(&self, user: UserId) -> Option<Seq> {
        self.lock().get(&user).copied()
    }

    /// Records max seqs a committed batch worked out (writer only).
    pub(super) fn note(&self, seqs: impl ExactSizeIterator<Item = (UserId, Seq)>) {
        let mut map = self.lock();
        if map.len() + seqs.len() > CAPACITY {
            map.clear();
        }
        map.extend(seqs);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Seq>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noted_seqs_are_read_back_and_replaced() {
        let tops = Tops::default();
        assert_eq!(tops.get(1), None);
        tops.note([(1, 5), (2, 7)].into_iter());
        tops.note([(1, 6)].into_iter());
        assert_eq!(
            (tops.get(1), tops.get(2), tops.get(3)),
            (Some(6), Some(7), None)
        );
    }

    #[test]
    fn a_full_map_starts_again() {
        let tops = Tops::default();
        tops.note((0..CAPACITY).map(|u| (u as u64, 1)));
        assert_eq!(tops.get(0), Some(1));
        tops.note([(u64::MAX, 2)].into_iter());
        assert_eq!((tops.get(0), tops.get(u64::MAX)), (None, Some(2)));
    }
}
