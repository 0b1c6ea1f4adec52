//! The HTTP server's open connections: at most `http.max_connections`, at
//! most `http.max_connections_per_ip` from one address. A connection past a
//! cap is admitted by closing the oldest *idle* connection (waiting for its
//! next request, or for its first) — of that address for its own cap — so
//! that clients holding connections open without using them cannot lock
//! everyone else out; only when every connection is busy is the new one
//! closed at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::sync::lock;

/// The open connections.
pub(crate) struct Connections {
    max: usize,
    max_per_ip: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    open: HashMap<u64, Open>,
}

struct Open {
    ip: IpAddr,
    /// Requests being answered on it.
    busy: usize,
    /// Since when it has had no request in flight.
    idle_since: Instant,
    /// Fired to close it (gracefully: it is idle).
    close: CancellationToken,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `http.max_connections` are open and busy.
    Full,
    /// `http.max_connections_per_ip` from its address are open and busy.
    FullForAddress,
}

impl Connections {
    pub(crate) fn new(max: usize, max_per_ip: usize) -> Arc<Connections> {
        Arc::new(Connections {
            max,
            max_per_ip,
            state: Mutex::default(),
        })
    }

    /// Admits a connection from `ip`, closing the oldest idle connection
    /// where a cap is reached; refused when none is idle.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refusal> {
        let mut state = lock(&self.state);
        let from_ip = state.open.values().filter(|c| c.ip == ip).count();
        if from_ip >= self.max_per_ip {
            state
                .evict_oldest_idle(|c| c.ip == ip)
                .ok_or(Refusal::FullForAddress)?;
        }
        if state.open.len() >= self.max {
            state.evict_oldest_idle(|_| true).ok_or(Refusal::Full)?;
        }
        let id = state.next_id;
        state.next_id += 1;
        let close = CancellationToken::new();
        state.open.insert(
            id,
            Open {
                ip,
                busy: 0,
                idle_since: Instant::now(),
                close: close.clone(),
            },
        );
        Ok(Admitted {
            id,
            connections: self.clone(),
            close,
        })
    }

    fn set_busy(&self, id: u64, delta: isize) {
        if let Some(open) = lock(&self.state).open.get_mut(&id) {
            open.busy = open.busy.saturating_add_signed(delta);
            if open.busy == 0 {
                open.idle_since = Instant::now();
            }
        }
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        lock(&self.state).open.len()
    }
}

impl State {
    /// Closes the idle connection (among those `matching`) idle longest;
    /// `None` when none is idle.
    fn evict_oldest_idle(&mut self, matching: impl Fn(&Open) -> bool) -> Option<()> {
        let id = self
            .open
            .iter()
            .filter(|(_, c)| c.busy == 0 && matching(c))
            .min_by_key(|(_, c)| c.idle_since)
            .map(|(id, _)| *id)?;
        let evicted = self.open.remove(&id)?;
        evicted.close.cancel();
        Some(())
    }
}

/// An admitted connection: counted until dropped.
pub(crate) struct Admitted {
    id: u64,
    connections: Arc<Connections>,
    close: CancellationToken,
}

impl Admitted {
    /// Fires when the connection is to close (evicted while idle).
    pub(crate) fn closing(&self) -> &CancellationToken {
        &self.close
    }

    /// What marks the connection's requests in flight.
    pub(crate) fn requests(&self) -> RequestTracker {
        RequestTracker {
            id: self.id,
            connections: self.connections.clone(),
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        lock(&self.connections.state).open.remove(&self.id);
    }
}

/// Marks requests on one connection (cloned into its service).
#[derive(Clone)]
pub(crate) struct RequestTracker {
    id: u64,
    connections: Arc<Connections>,
}

impl RequestTracker {
    pub(crate) fn request(&self) -> Busy {
        self.connections.set_busy(self.id, 1);
        Busy {
            id: self.id,
            connections: self.connections.clone(),
        }
    }
}

/// A request in flight; the connection is idle again once every one drops.
pub(crate) struct Busy {
    id: u64,
    connections: Arc<Connections>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.connections.set_busy(self.id, -1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn past_the_cap_the_oldest_idle_connection_makes_room() {
        let connections = Connections::new(3, 10);
        let first = connections.admit(ip(1)).unwrap();
        let second = connections.admit(ip(1)).unwrap();
        let third = connections.admit(ip(2)).unwrap();
        let _working = second.requests().request();
        let _also = third.requests().request();
        // Full: the idle one (first) is closed for the newcomer.
        let fourth = connections.admit(ip(3)).unwrap();
        assert!(first.closing().is_cancelled());
        assert!(!second.closing().is_cancelled() && !third.closing().is_cancelled());
        assert_eq!(connections.open(), 3);
        // Every connection busy: the next one is refused.
        let _busy = fourth.requests().request();
        assert_eq!(connections.admit(ip(4)).err(), Some(Refusal::Full));
        drop(first);
        assert_eq!(
            connections.open(),
            3,
            "an evicted connection is not counted twice"
        );
    }

    #[test]
    fn one_address_cannot_hold_more_than_its_cap() {
        let connections = Connections::new(100, 2);
        let a = connections.admit(ip(1)).unwrap();
        let b = connections.admit(ip(1)).unwrap();
        let _a_busy = a.requests().request();
        // Its third: its own idle one (b) goes, not anyone else's.
        let other = connections.admit(ip(2)).unwrap();
        let c = connections.admit(ip(1)).unwrap();
        assert!(b.closing().is_cancelled());
        assert!(!other.closing().is_cancelled());
        let _c_busy = c.requests().request();
        assert_eq!(
            connections.admit(ip(1)).err(),
            Some(Refusal::FullForAddress)
        );
        // Other addresses are still welcome.
        assert!(connections.admit(ip(3)).is_ok());
    }
}
