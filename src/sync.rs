//! Small helpers for the standard library's locks.

use std::sync::{Mutex, MutexGuard};

/// Locks a std mutex, recovering from poisoning (a panicked holder cannot leave
/// these maps in a state worse than stale).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
