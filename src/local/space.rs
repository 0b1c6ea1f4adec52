//! What loads under way hold on this node's disks ([`Claims`]):
//!
//! - space: a load reserves the bytes it still has to write on each disk
//!   before it starts; a second load sees the first one's reservation, so two
//!   loads that fit alone but not together never both start. What a load has
//!   written already shows in the disk's free space, so its reservation
//!   shrinks as it writes;
//! - blobs: the hashes a load relies on are pinned until it ends, and garbage
//!   collection keeps them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{Inner, NodeError};
use crate::storage::StorageError;
use crate::sync::lock;

/// Space reserved and blobs pinned by the loads under way.
#[derive(Default)]
pub(super) struct Claims {
    reservations: Mutex<Reservations>,
    /// Blob hash → loads relying on it.
    pins: Mutex<HashMap<String, usize>>,
}

impl Claims {
    /// Pins blobs for a load: garbage collection keeps them until unpinned.
    pub(super) fn pin(&self, hashes: impl IntoIterator<Item = String>) {
        let mut pins = lock(&self.pins);
        for hash in hashes {
            *pins.entry(hash).or_default() += 1;
        }
    }

    pub(super) fn unpin(&self, hashes: impl IntoIterator<Item = String>) {
        let mut pins = lock(&self.pins);
        for hash in hashes {
            if let Some(count) = pins.get_mut(&hash) {
                *count -= 1;
                if *count == 0 {
                    pins.remove(&hash);
                }
            }
        }
    }

    /// The blobs some load relies on.
    pub(super) fn pinned(&self) -> HashSet<String> {
        lock(&self.pins).keys().cloned().collect()
    }
}

#[derive(Default)]
struct Reservations {
    next_id: u64,
    held: HashMap<u64, Held>,
}

struct Held {
    needed: HashMap<String, u64>,
    written: Arc<AtomicU64>,
}

impl Reservations {
    /// Bytes still promised on `disk`. Written bytes are counted per load, not per
    /// disk, so a load spread over several disks releases them in proportion.
    fn reserved(&self, disk: &str) -> u64 {
        self.held
            .values()
            .map(|held| {
                let total: u64 = held.needed.values().sum();
                let on_disk = held.needed.get(disk).copied().unwrap_or(0);
                if total == 0 {
                    return 0;
                }
                let written = held.written.load(Ordering::Relaxed).min(total);
                on_disk - (on_disk as u128 * written as u128 / total as u128) as u64
            })
            .sum()
    }
}

/// Space held for one load until it is dropped.
pub(super) struct Reservation {
    claims: Arc<Claims>,
    id: u64,
    /// Bytes of new blobs this load has written so far.
    pub(super) written: Arc<AtomicU64>,
}

impl Reservation {
    /// Reserves `needed` bytes per disk id, or fails naming the disk without room.
    pub(super) fn take(
        inner: &Arc<Inner>,
        needed: &HashMap<String, u64>,
    ) -> Result<Reservation, NodeError> {
        let mut reservations = lock(&inner.claims.reservations);
        for (disk_id, bytes) in needed {
            let disk = inner.disk(disk_id)?;
            let available = disk.room().saturating_sub(reservations.reserved(disk_id));
            if *bytes > available {
                return Err(StorageError::DiskFull {
                    disk: disk_id.clone(),
                    needed: *bytes,
                    available,
                }
                .into());
            }
        }
        let id = reservations.next_id;
        reservations.next_id += 1;
        let written = Arc::new(AtomicU64::new(0));
        reservations.held.insert(
            id,
            Held {
                needed: needed.clone(),
                written: written.clone(),
            },
        );
        Ok(Reservation {
            claims: inner.claims.clone(),
            id,
            written,
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        lock(&self.claims.reservations).held.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_shrink_as_bytes_are_written() {
        let mut r = Reservations::default();
        let written = Arc::new(AtomicU64::new(0));
        r.held.insert(
            0,
            Held {
                needed: HashMap::from([("0".to_string(), 300), ("1".to_string(), 100)]),
                written: written.clone(),
            },
        );
        assert_eq!(r.reserved("0"), 300);
        assert_eq!(r.reserved("1"), 100);
        assert_eq!(r.reserved("2"), 0);
        written.store(200, Ordering::Relaxed);
        assert_eq!(r.reserved("0"), 150);
        assert_eq!(r.reserved("1"), 50);
        written.store(1000, Ordering::Relaxed);
        assert_eq!(r.reserved("0"), 0);
    }
}
