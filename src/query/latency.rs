//! How long map requests take, as this node sees them when it is a query's
//! root: what the choice of holder and the hedges go by.
//!
//! - **Adaptive selection** (Elasticsearch's adaptive replica selection, in
//!   brief): each member's round trips are averaged (EWMA); a holder much
//!   slower than the best other holder of the same shard is asked last. A
//!   member not heard from for `STALE` has its average forgotten, so a member
//!   that was slow is tried again now and then.
//! - **Hedges** ("The Tail at Scale", Dean and Barroso, 2013): a map request
//!   not answered within the 95th percentile of recent requests of the same
//!   analysis is also sent to the next holders; the first full answer wins and
//!   the other is dropped (which cancels it). Hedges are capped at
//!   `query.hedge_budget` of map requests; past the cap, a request waits for
//!   the holder's patience (four times its p99 as it gossips it, at least
//!   200 ms) before it is hedged, as a hung member's requests must be.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sync::lock;

/// Round trips kept per analysis for the 95th percentile.
const WINDOW: usize = 200;
/// Round trips of an analysis before its 95th percentile is trusted.
const MIN_SAMPLES: usize = 20;
/// The shortest a request is waited for before it is hedged.
const MIN_HEDGE: Duration = Duration::from_millis(1);
/// The shortest patience with a holder (hedge budget spent, or no figures).
pub(crate) const MIN_PATIENCE: Duration = Duration::from_millis(200);
/// How much slower than it was waited for an abandoned request counts.
const ABANDONED: u32 = 4;
/// Weight of a new round trip in a member's average.
const ALPHA: f64 = 0.3;
/// A member's average is forgotten after this long without a round trip.
const STALE: Duration = Duration::from_secs(5);
/// A holder is slow when its average is more than `SLOW_FACTOR` times the
/// best other holder's plus `SLOW_MARGIN`.
const SLOW_FACTOR: f64 = 2.0;
const SLOW_MARGIN: Duration = Duration::from_millis(2);
/// Analyses whose windows are kept; past it the windows start again.
const MAX_CLASSES: usize = 256;
/// Requests counted for the hedge budget before the counts are halved (the
/// budget follows recent traffic).
const BUDGET_SPAN: u64 = 10_000;

/// A member, its fresh average round trip and what it gossips (µs).
type Figures<'a> = (&'a String, Option<f64>, Option<f64>);

/// What a root knows of recent map requests.
#[derive(Default)]
pub(crate) struct Latencies {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Member → (average round trip in µs, when last updated).
    members: HashMap<String, (f64, Instant)>,
    /// Analysis → its recent round trips in µs.
    classes: HashMap<String, VecDeque<u64>>,
    /// Map requests sent and hedges made, for the budget.
    requests: u64,
    hedges: u64,
}

impl Latencies {
    /// Records a round trip to `member` for `analysis`. A request abandoned
    /// for a hedge's answer says only that the member is slower than it was
    /// waited for: it counts `ABANDONED` times that (one lost race leaves a
    /// member's average within reach of the others', two in a row do not).
    pub(crate) fn record(&self, member: &str, analysis: &str, took: Duration, completed: bool) {
        let took = if completed { took } else { took * ABANDONED };
        let micros = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let mut inner = lock(&self.inner);
        let now = Instant::now();
        let entry = inner
            .members
            .entry(member.to_string())
            .or_insert((micros as f64, now));
        entry.0 = if now.duration_since(entry.1) > STALE {
            micros as f64
        } else {
            entry.0 * (1.0 - ALPHA) + micros as f64 * ALPHA
        };
        entry.1 = now;
        if !completed {
            return;
        }
        if !inner.classes.contains_key(analysis) && inner.classes.len() >= MAX_CLASSES {
            inner.classes.clear();
        }
        let window = inner.classes.entry(analysis.to_string()).or_default();
        if window.len() == WINDOW {
            window.pop_front();
        }
        window.push_back(micros);
    }

    /// Counts `count` map requests sent.
    pub(crate) fn sent(&self, count: u64) {
        let mut inner = lock(&self.inner);
        inner.requests += count;
        if inner.requests > BUDGET_SPAN {
            inner.requests /= 2;
            inner.hedges /= 2;
        }
    }

    /// The 95th percentile of recent round trips of `analysis`, once there are
    /// enough of them.
    pub(crate) fn p95(&self, analysis: &str) -> Option<Duration> {
        let inner = lock(&self.inner);
        let window = inner.classes.get(analysis)?;
        if window.len() < MIN_SAMPLES {
            return None;
        }
        let mut sorted: Vec<u64> = window.iter().copied().collect();
        sorted.sort_unstable();
        let p95 = sorted[(sorted.len() * 95 / 100).min(sorted.len() - 1)];
        Some(Duration::from_micros(p95).max(MIN_HEDGE))
    }

    /// Takes one hedge from the budget (`budget`: the share of map requests
    /// that may be hedged); false when it is spent.
    pub(crate) fn take_hedge(&self, budget: f64) -> bool {
        let mut inner = lock(&self.inner);
        // One hedge is always allowed, then `budget` per request sent.
        if budget <= 0.0 || (inner.hedges as f64) >= budget * inner.requests as f64 + 1.0 {
            return false;
        }
        inner.hedges += 1;
        true
    }

    /// Members whose recent average is much slower than the best of
    /// `members`' (see `SLOW_FACTOR`). The root's own fresh figures count
    /// first; a member without them is judged by what it gossips
    /// (`gossiped_ms`: its own recent map time), and one with neither is
    /// never slow (it is tried).
    pub(crate) fn slow<'a>(
        &self,
        members: impl Iterator<Item = &'a String>,
        gossiped_ms: &HashMap<String, u64>,
    ) -> Vec<String> {
        let inner = lock(&self.inner);
        let now = Instant::now();
        let figures: Vec<Figures<'_>> = members
            .map(|m| {
                let fresh = inner
                    .members
                    .get(m)
                    .filter(|(_, at)| now.duration_since(*at) <= STALE)
                    .map(|(micros, _)| *micros);
                let gossiped = gossiped_ms.get(m).map(|ms| *ms as f64 * 1000.0);
                (m, fresh, gossiped)
            })
            .collect();
        let best_of = |pick: fn(&Figures<'_>) -> Option<f64>| {
            figures
                .iter()
                .filter_map(pick)
                .fold(None, |best: Option<f64>, x| {
                    Some(best.map_or(x, |b| b.min(x)))
                })
        };
        let Some(best) = best_of(|f| f.1).or_else(|| best_of(|f| f.2)) else {
            return Vec::new();
        };
        let limit = best * SLOW_FACTOR + SLOW_MARGIN.as_micros() as f64;
        figures
            .into_iter()
            .filter(|(_, fresh, gossiped)| fresh.or(*gossiped).is_some_and(|a| a > limit))
            .map(|(m, _, _)| m.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_p95_needs_enough_round_trips_and_follows_them() {
        let latencies = Latencies::default();
        for i in 0..(MIN_SAMPLES - 1) {
            latencies.record("a", "count", Duration::from_millis(i as u64), true);
        }
        assert_eq!(latencies.p95("count"), None);
        // The window keeps the last 200: older round trips leave it.
        for _ in 0..WINDOW {
            latencies.record("a", "count", Duration::from_millis(2), true);
        }
        assert_eq!(latencies.p95("count"), Some(Duration::from_millis(2)));
        for i in 0..WINDOW as u64 {
            latencies.record("b", "count", Duration::from_millis(i % 100), true);
        }
        assert_eq!(latencies.p95("count"), Some(Duration::from_millis(95)));
        // Another analysis has its own figures; abandoned requests are not in them.
        latencies.record("a", "sql", Duration::from_millis(50), false);
        assert_eq!(latencies.p95("sql"), None);
    }

    #[test]
    fn hedges_stay_within_the_budget() {
        let latencies = Latencies::default();
        assert!(latencies.take_hedge(0.05), "the first is allowed");
        assert!(!latencies.take_hedge(0.05));
        latencies.sent(1_000);
        let taken = (0..200).filter(|_| latencies.take_hedge(0.05)).count();
        assert_eq!(taken, 50, "5% of 1,000 requests, the first included");
        assert!(!latencies.take_hedge(0.0), "no budget, no hedge");
    }

    #[test]
    fn a_much_slower_member_is_slow_and_is_forgotten_when_stale() {
        let latencies = Latencies::default();
        let members = ["a".to_string(), "b".to_string(), "c".to_string()];
        for _ in 0..10 {
            latencies.record("a", "count", Duration::from_millis(1), true);
            latencies.record("b", "count", Duration::from_micros(1_500), true);
            latencies.record("c", "count", Duration::from_millis(50), true);
        }
        assert_eq!(latencies.slow(members.iter(), &HashMap::new()), ["c"]);
        // Without figures of its own, what a member gossips counts.
        let gossiped = HashMap::from([("d".to_string(), 40)]);
        let with_d = ["a".to_string(), "d".to_string()];
        assert_eq!(latencies.slow(with_d.iter(), &gossiped), ["d"]);
        // Without any figures, a member is tried, never slow.
        let with_e = ["a".to_string(), "e".to_string()];
        assert!(latencies.slow(with_e.iter(), &HashMap::new()).is_empty());
        // A member that lost hedges is slow: it was slower than it was waited
        // for, by how much nobody knows.
        let racing = Latencies::default();
        let pair = ["a".to_string(), "f".to_string()];
        for _ in 0..10 {
            racing.record("a", "count", Duration::from_micros(1_500), true);
        }
        racing.record("f", "count", Duration::from_millis(3), false);
        assert_eq!(racing.slow(pair.iter(), &HashMap::new()), ["f"]);
        // Stale figures are forgotten.
        lock(&latencies.inner).members.get_mut("c").unwrap().1 =
            Instant::now() - STALE - Duration::from_secs(1);
        assert!(latencies.slow(members.iter(), &HashMap::new()).is_empty());
    }
}
