//! The fan-out core, shared by a query's root and the direct client: which
//! holder gets which shards (the least busy, a much slower one last: see
//! `latency`), one map request per holder, a hedge when a holder is slow (its
//! shards asked of their next holders too, the first full answer wins), one
//! retry per failed shard on its next holder, and the request itself
//! (`send_map`, MessagePack back).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use tokio::time::Instant as Deadline;
use tokio_util::sync::CancellationToken;

use super::NodeMeta;
use super::QueryError;
use super::latency::{Latencies, MIN_PATIENCE};
use super::root::{CACHED_SHARDS_HEADER, Gathered, LOAD_STEP, MapRequest, Mapped, RootQuery};
use crate::placement::{score, shard_key};

/// The fan-out core, shared by a query's root and the direct client: each
/// shard goes to its best holder (rendezvous order), one request per holder;
/// a failed request's shards are retried once on their next holder.
pub(crate) struct FanOut<'a> {
    pub database: &'a str,
    pub shards: Vec<String>,
    /// Shard → the members holding a ready copy.
    pub holders: &'a HashMap<String, Vec<String>>,
    /// Map work under way per member (the `load` gossip key); absent is idle.
    pub load: &'a HashMap<String, u64>,
    /// What the root knows of its holders' latency (`None`: no hedges, no
    /// adaptive selection).
    pub hedging: Option<Hedging<'a>>,
    pub allow_partial: bool,
}

/// How a root hedges and picks holders by latency.
pub(crate) struct Hedging<'a> {
    pub latencies: &'a Latencies,
    /// The analysis: its recent round trips set when to hedge.
    pub analysis: &'a str,
    /// Share of map requests that may be hedged early (`query.hedge_budget`).
    pub budget: f64,
    /// A fixed time before every hedge (`query.holder_timeout_ms`), instead
    /// of the 95th percentile and the patience.
    pub fixed: Option<Duration>,
    /// How long each member is waited for once the budget is spent (four
    /// times its gossiped p99, at least 200 ms; 200 ms for a member that
    /// gossips none).
    pub patience: HashMap<String, Duration>,
    /// Each member's own recent map time (ms, its `load` gossip key): its
    /// latency while the root has no figures of its own.
    pub gossiped_ms: &'a HashMap<String, u64>,
    /// Whether a much slower holder is asked last (`query.adaptive_selection`).
    pub adaptive: bool,
}

/// When a request is hedged: early (if the budget allows), else after the
/// holder's patience.
struct HedgeAt {
    early: Option<Duration>,
    patience: Duration,
}

/// A shard whose request failed: (shard, (node, error)).
type ShardFailure = (String, (String, QueryError));

/// One map request's outcome.
struct Answer {
    node: String,
    shards: Vec<String>,
    took: Duration,
    result: Result<Mapped, QueryError>,
}

impl FanOut<'_> {
    /// Runs the requests through `send(node, shards)`.
    pub(crate) async fn run<F, Fut>(self, send: F) -> Result<Gathered, QueryError>
    where
        F: Fn(String, Vec<String>) -> Fut,
        Fut: std::future::Future<Output = Result<Mapped, QueryError>>,
    {
        let mut gathered = Gathered::default();
        // Members much slower than the best of this query's holders: last.
        let slow: HashSet<String> = match &self.hedging {
            Some(h) if h.adaptive => {
                let members: HashSet<&String> = self.holders.values().flatten().collect();
                h.latencies
                    .slow(members.into_iter(), h.gossiped_ms)
                    .into_iter()
                    .collect()
            }
            _ => HashSet::new(),
        };
        // Per shard, its holders best first: not slow, the least loaded, ties
        // by rendezvous score (the same holder each time while loads are even:
        // warm caches).
        let mut candidates: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut missing = Vec::new();
        for shard in self.shards {
            let mut list: Vec<String> = self.holders.get(&shard).cloned().unwrap_or_default();
            let key = shard_key(self.database, &shard);
            // Loads compare in steps of `LOAD_STEP`: a request or two in flight
            // does not outweigh cache affinity.
            let load = |node: &String| self.load.get(node).copied().unwrap_or(0) / LOAD_STEP;
            list.sort_by(|a, b| {
                slow.contains(a)
                    .cmp(&slow.contains(b))
                    .then_with(|| load(a).cmp(&load(b)))
                    .then_with(|| score(&key, b, 1).total_cmp(&score(&key, a, 1)))
            });
            if list.is_empty() {
                missing.push(shard);
            } else {
                candidates.insert(shard, list);
            }
        }
        let mut first: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (shard, list) in &candidates {
            first
                .entry(list[0].clone())
                .or_default()
                .push(shard.clone());
        }
        let hedging = self.hedging.as_ref();
        if let Some(h) = hedging {
            h.latencies.sent(first.len() as u64);
        }
        let early = hedging.and_then(|h| match h.fixed {
            Some(_) => None,
            None => h.latencies.p95(h.analysis),
        });
        let take = || hedging.is_some_and(|h| h.latencies.take_hedge(h.budget));
        let requests = first.into_iter().map(|(node, shards)| {
            // The hedge: every shard to its next holder (none if one has no other).
            let hedge = hedging.and_then(|h| {
                let at = match h.fixed {
                    Some(fixed) => HedgeAt {
                        early: None,
                        patience: fixed,
                    },
                    None => HedgeAt {
                        early,
                        // A member that gossips no load yet: the least patience.
                        patience: h.patience.get(&node).copied().unwrap_or(MIN_PATIENCE),
                    },
                };
                let mut elsewhere: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for shard in &shards {
                    let next = candidates[shard].iter().find(|c| **c != node)?;
                    elsewhere
                        .entry(next.clone())
                        .or_default()
                        .push(shard.clone());
                }
                Some((at, elsewhere))
            });
            hedged(&send, node, shards, hedge, &take)
        });
        let mut errors: HashMap<String, (String, QueryError)> = HashMap::new();
        // Shards already asked of two holders: not retried again.
        let mut asked_twice: HashSet<String> = HashSet::new();
        for outcome in futures::future::join_all(requests).await {
            if let Some((node, shards, after)) = outcome.abandoned {
                if let Some(h) = hedging {
                    h.latencies.record(&node, h.analysis, after, false);
                }
                gathered.meta.hedges += 1;
                asked_twice.extend(shards.iter().cloned());
                gathered.meta.nodes.push(NodeMeta {
                    node,
                    shards: shards.len(),
                    took_ms: after.as_millis() as u64,
                    error: Some(format!(
                        "no answer within {:.1} ms: its shards were asked of their next holders",
                        after.as_secs_f64() * 1000.0
                    )),
                });
            }
            for answer in outcome.answers {
                if let (Some(h), Ok(_)) = (hedging, &answer.result) {
                    h.latencies
                        .record(&answer.node, h.analysis, answer.took, true);
                }
                if let Err(e) = gathered.take(answer) {
                    errors.extend(e);
                }
            }
        }
        // A failed shard is asked of its other holders in turn, each once
        // (the view a root chose from can be a moment old: a copy just
        // trashed, a member just stopped); a hedged shard was asked of two
        // already and is not asked again.
        let mut tried: HashMap<String, HashSet<String>> = errors
            .iter()
            .map(|(shard, (node, _))| (shard.clone(), HashSet::from([node.clone()])))
            .collect();
        loop {
            let mut retry: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for shard in errors.keys() {
                if asked_twice.contains(shard) {
                    continue;
                }
                let tried = tried.entry(shard.clone()).or_default();
                if let Some(next) = candidates[shard].iter().find(|c| !tried.contains(*c)) {
                    tried.insert(next.clone());
                    retry.entry(next.clone()).or_default().push(shard.clone());
                    gathered.meta.retries += 1;
                }
            }
            if retry.is_empty() {
                break;
            }
            for answer in send_all(&send, retry).await {
                let shards = answer.shards.clone();
                match gathered.take(answer) {
                    Ok(()) => {
                        for shard in &shards {
                            errors.remove(shard);
                        }
                    }
                    Err(e) => errors.extend(e),
                }
            }
        }
        if !self.allow_partial
            && let Some(shard) = errors.keys().min().cloned()
            && let Some((_, error)) = errors.remove(&shard)
        {
            return Err(error);
        }
        missing.extend(errors.into_keys());
        missing.sort();
        if !missing.is_empty() && !self.allow_partial {
            return Err(QueryError::Unavailable { shards: missing });
        }
        gathered.meta.missing_shards = missing;
        Ok(gathered)
    }
}

impl Gathered {
    /// Keeps an answer's partial, or returns its shards with the error.
    fn take(&mut self, answer: Answer) -> Result<(), Vec<ShardFailure>> {
        let (error, failed) = match answer.result {
            Ok(mapped) => {
                self.partials.push(mapped.partial);
                self.meta.shards += answer.shards.len();
                self.meta.cached_shards += mapped.cached;
                (None, Vec::new())
            }
            Err(e) => {
                let failed = answer
                    .shards
                    .iter()
                    .map(|shard| (shard.clone(), (answer.node.clone(), clone_error(&e))))
                    .collect();
                (Some(e.to_string()), failed)
            }
        };
        self.meta.nodes.push(NodeMeta {
            node: answer.node,
            shards: answer.shards.len(),
            took_ms: answer.took.as_millis() as u64,
            error,
        });
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed)
        }
    }
}

/// Sends one request per node at once.
async fn send_all<F, Fut>(send: &F, by_node: BTreeMap<String, Vec<String>>) -> Vec<Answer>
where
    F: Fn(String, Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<Mapped, QueryError>>,
{
    let requests = by_node
        .into_iter()
        .map(|(node, shards)| send_one(send, node, shards));
    futures::future::join_all(requests).await
}

async fn send_one<F, Fut>(send: &F, node: String, shards: Vec<String>) -> Answer
where
    F: Fn(String, Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<Mapped, QueryError>>,
{
    let started = Instant::now();
    let result = send(node.clone(), shards.clone()).await;
    Answer {
        node,
        shards,
        took: started.elapsed(),
        result,
    }
}

/// What a hedged request gave: the answers to keep, and the holder given up
/// on (its shards, how long it had) when another answer won.
struct Hedged {
    answers: Vec<Answer>,
    abandoned: Option<(String, Vec<String>, Duration)>,
}

/// One holder's request; past `hedge`'s time without an answer, its shards
/// are asked of the other holders too, and the first full answer wins (the
/// other request is dropped, which cancels its work). The early hedge is made
/// only if `take` grants it from the budget; else the holder's patience runs.
async fn hedged<F, Fut>(
    send: &F,
    node: String,
    shards: Vec<String>,
    hedge: Option<(HedgeAt, BTreeMap<String, Vec<String>>)>,
    take: &impl Fn() -> bool,
) -> Hedged
where
    F: Fn(String, Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<Mapped, QueryError>>,
{
    let kept = |answers| Hedged {
        answers,
        abandoned: None,
    };
    let original = send_one(send, node.clone(), shards.clone());
    let Some((at, elsewhere)) = hedge else {
        return kept(vec![original.await]);
    };
    tokio::pin!(original);
    let mut waited = Duration::ZERO;
    if let Some(early) = at.early.filter(|early| *early < at.patience) {
        tokio::select! {
            answer = &mut original => return kept(vec![answer]),
            () = tokio::time::sleep(early) => {}
        }
        waited = early;
    }
    if waited.is_zero() || !take() {
        tokio::select! {
            answer = &mut original => return kept(vec![answer]),
            () = tokio::time::sleep(at.patience - waited) => {}
        }
        waited = at.patience;
    }
    let others = send_all(send, elsewhere);
    tokio::pin!(others);
    let abandoned = Some((node, shards, waited));
    tokio::select! {
        answer = &mut original => {
            if answer.result.is_ok() {
                return kept(vec![answer]);
            }
            Hedged { answers: others.await, abandoned }
        }
        answers = &mut others => {
            if answers.iter().all(|a| a.result.is_ok()) {
                return Hedged { answers, abandoned };
            }
            let answer = original.await;
            if answer.result.is_ok() {
                kept(vec![answer])
            } else {
                Hedged { answers, abandoned }
            }
        }
    }
}

/// Partials at most this large are decoded on the runtime's thread.
const INLINE_DECODE_BYTES: usize = 64 << 10;

/// `POST {address}/v1/internal/map` for `shards`, decoded (`address`: the
/// holder's base URL, or `host:port` for plain HTTP).
pub(crate) async fn send_map(
    client: &reqwest::Client,
    node: &str,
    address: &str,
    secret: Option<&str>,
    query: &RootQuery,
    shards: &[String],
) -> Result<Mapped, QueryError> {
    let remote = |message: String| QueryError::Remote {
        node: node.to_string(),
        status: 502,
        code: "leaf_failed".into(),
        message,
    };
    if address.is_empty() {
        return Err(remote("no HTTP address known".into()));
    }
    let left = query
        .deadline
        .saturating_duration_since(Deadline::now())
        .max(std::time::Duration::from_millis(1));
    let body = MapRequest {
        database: query.database.clone(),
        version: query.version.clone(),
        analysis: query.analysis_name.clone(),
        params: query.raw_params.clone(),
        shards: shards.to_vec(),
        timeout_ms: left.as_millis() as u64,
        cache: query.partials,
    };
    let url = crate::net::base_url(address);
    let request = || {
        let mut request = client
            .post(format!("{url}/v1/internal/map"))
            .timeout(left)
            .json(&body);
        if let Some(secret) = secret {
            request = request.bearer_auth(secret);
        }
        request.send()
    };
    // A map is idempotent (it only reads): one that failed before any answer
    // came back — a pooled connection the holder had closed (it restarted,
    // or went idle), a refused connection — is sent once more at once, on a
    // fresh connection, before its shards go to another holder.
    let response = match request().await {
        Ok(response) => response,
        Err(e) if !e.is_timeout() && e.status().is_none() => {
            tracing::debug!(node, error = %e, "map request failed before an answer; sent again");
            request().await.map_err(|e| remote(e.to_string()))?
        }
        Err(e) => return Err(remote(e.to_string())),
    };
    let status = response.status();
    let cached = response
        .headers()
        .get(CACHED_SHARDS_HEADER)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    let bytes = response.bytes().await.map_err(|e| remote(e.to_string()))?;
    if !status.is_success() {
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        return Err(QueryError::Remote {
            node: node.to_string(),
            status: status.as_u16(),
            code: body["error"]["code"]
                .as_str()
                .unwrap_or("leaf_failed")
                .to_string(),
            message: body["error"]["message"]
                .as_str()
                .map_or_else(|| format!("HTTP {status}"), str::to_string),
        });
    }
    let analysis = query.analysis.clone();
    // A small partial is decoded here: a trip to the blocking pool would
    // cost more than the decoding.
    let partial = if bytes.len() <= INLINE_DECODE_BYTES {
        analysis
            .decode(&bytes)
            .map_err(|e| QueryError::from_analysis(&query.analysis_name, None, e))?
    } else {
        super::leaf::blocking(&query.analysis_name, &CancellationToken::new(), move || {
            analysis.decode(&bytes)
        })
        .await?
    };
    Ok(Mapped { partial, cached })
}

/// A copy of an error to report for each shard of a failed request.
fn clone_error(e: &QueryError) -> QueryError {
    QueryError::Remote {
        node: match e {
            QueryError::Remote { node, .. } => node.clone(),
            _ => String::new(),
        },
        status: e.http_status(),
        code: e.code().to_string(),
        message: match e {
            QueryError::Remote { message, .. } => message.clone(),
            other => other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::analysis::DynPartial;
    use std::sync::Mutex;

    fn holders(pairs: &[(&str, &[&str])]) -> HashMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(shard, nodes)| {
                (
                    shard.to_string(),
                    nodes.iter().map(|n| n.to_string()).collect(),
                )
            })
            .collect()
    }

    /// Runs a fan-out where `failing` members fail; returns what was sent where.
    async fn fan_out(
        shards: &[&str],
        holders: &HashMap<String, Vec<String>>,
        load: &HashMap<String, u64>,
        failing: &[&str],
        allow_partial: bool,
    ) -> (Result<Gathered, QueryError>, Vec<(String, Vec<String>)>) {
        let sent = Mutex::new(Vec::new());
        let plan = FanOut {
            database: "db",
            shards: shards.iter().map(|s| s.to_string()).collect(),
            holders,
            load,
            hedging: None,
            allow_partial,
        };
        let result = plan
            .run(|node, shards| {
                sent.lock().unwrap().push((node.clone(), shards.clone()));
                let fails = failing.contains(&node.as_str());
                async move {
                    if fails {
                        Err(QueryError::Remote {
                            node,
                            status: 502,
                            code: "leaf_failed".into(),
                            message: "connection refused".into(),
                        })
                    } else {
                        Ok(Mapped {
                            partial: Box::new(shards.len()) as DynPartial,
                            cached: 0,
                        })
                    }
                }
            })
            .await;
        (result, sent.into_inner().unwrap())
    }

    #[tokio::test]
    async fn one_request_per_holder_the_least_loaded_first_then_rendezvous() {
        let map = holders(&[("0", &["a", "b"]), ("1", &["a", "b"]), ("2", &["a", "b"])]);
        let (result, sent) = fan_out(&["0", "1", "2"], &map, &HashMap::new(), &[], false).await;
        let gathered = result.unwrap();
        assert_eq!(gathered.meta.shards, 3);
        assert_eq!(gathered.meta.retries, 0);
        let requests: usize = sent.len();
        assert!(requests <= 2, "one request per holder: {sent:?}");
        // The same choice every time while loads are even.
        let (_, again) = fan_out(&["0", "1", "2"], &map, &HashMap::new(), &[], false).await;
        let sorted = |mut v: Vec<(String, Vec<String>)>| {
            v.sort();
            v
        };
        assert_eq!(sorted(sent), sorted(again));
        // b busy: everything goes to a.
        let load = HashMap::from([("b".to_string(), 8)]);
        let (_, busy) = fan_out(&["0", "1", "2"], &map, &load, &[], false).await;
        assert_eq!(
            busy,
            [("a".to_string(), vec!["0".into(), "1".into(), "2".into()])]
        );
    }

    /// Runs a fan-out of shards 0 and 1 (held by a and b; b busier, so a is
    /// asked first unless `adaptive` finds it much slower) where `hung` never
    /// answers and the others answer after `answers_after_ms`; returns the
    /// members asked, in order, and the meta.
    async fn hedge_run(
        latencies: &Latencies,
        budget: f64,
        fixed: Option<Duration>,
        hung: Option<&str>,
        answers_after_ms: u64,
        adaptive: bool,
    ) -> (Vec<String>, super::super::root::GatheredMeta) {
        let map = holders(&[("0", &["a", "b"]), ("1", &["a", "b"])]);
        let load = HashMap::from([("b".to_string(), LOAD_STEP)]);
        let gossiped = HashMap::new();
        let sent = Mutex::new(Vec::new());
        let plan = FanOut {
            database: "db",
            shards: vec!["0".into(), "1".into()],
            holders: &map,
            load: &load,
            hedging: Some(Hedging {
                latencies,
                analysis: "count",
                budget,
                fixed,
                patience: HashMap::from([
                    ("a".to_string(), Duration::from_millis(300)),
                    ("b".to_string(), Duration::from_millis(300)),
                ]),
                gossiped_ms: &gossiped,
                adaptive,
            }),
            allow_partial: false,
        };
        let gathered = plan
            .run(|node, shards| {
                sent.lock().unwrap().push(node.clone());
                let silent = hung == Some(node.as_str());
                async move {
                    if silent {
                        std::future::pending::<()>().await;
                    }
                    tokio::time::sleep(Duration::from_millis(answers_after_ms)).await;
                    Ok(Mapped {
                        partial: Box::new(shards.len()) as DynPartial,
                        cached: 0,
                    })
                }
            })
            .await
            .unwrap();
        assert_eq!(gathered.meta.shards, 2);
        assert_eq!(gathered.meta.retries, 0);
        (sent.into_inner().unwrap(), gathered.meta)
    }

    fn waited(meta: &super::super::root::GatheredMeta, node: &str) -> String {
        meta.nodes
            .iter()
            .find(|n| n.node == node)
            .and_then(|n| n.error.clone())
            .unwrap_or_default()
    }

    /// A hung holder past its fixed timeout or its patience: its shards are
    /// asked of their next holders, whose answer wins; a holder that answers
    /// in time is not hedged.
    #[tokio::test]
    async fn a_silent_holder_is_hedged_to_the_next_one() {
        let fixed = Some(Duration::from_millis(100));
        let (sent, meta) = hedge_run(&Latencies::default(), 0.05, fixed, Some("a"), 0, false).await;
        assert_eq!(sent, ["a", "b"]);
        assert_eq!(meta.hedges, 1);
        assert!(
            waited(&meta, "a").contains("no answer within 100.0 ms"),
            "{meta:?}"
        );
        let (sent, meta) = hedge_run(&Latencies::default(), 0.05, fixed, None, 10, false).await;
        assert_eq!(sent, ["a"]);
        assert_eq!(meta.hedges, 0);
        // No figures yet for early hedges: the holder's patience.
        let (sent, meta) = hedge_run(&Latencies::default(), 0.05, None, Some("a"), 0, false).await;
        assert_eq!(sent, ["a", "b"]);
        assert!(
            waited(&meta, "a").contains("no answer within 300.0 ms"),
            "{meta:?}"
        );
    }

    /// With recent figures, a request slower than their 95th percentile is
    /// hedged at once while the budget allows, after the patience once spent.
    #[tokio::test]
    async fn early_hedges_follow_the_p95_within_the_budget() {
        let latencies = Latencies::default();
        for _ in 0..100 {
            latencies.record("a", "count", Duration::from_millis(4), true);
            latencies.record("b", "count", Duration::from_millis(4), true);
        }
        latencies.sent(100);
        // The budget: one hedge and 5% of the requests sent (107 by the 7th
        // run): 7 early hedges, then the patience.
        let mut early = 0;
        for _ in 0..8 {
            let (_, meta) = hedge_run(&latencies, 0.05, None, Some("a"), 4, false).await;
            assert_eq!(meta.hedges, 1);
            if waited(&meta, "a").contains("within 4.0 ms") {
                early += 1;
            } else {
                assert!(waited(&meta, "a").contains("within 300.0 ms"), "{meta:?}");
            }
        }
        assert_eq!(early, 7);
        // Budget 0: never early.
        let fresh = Latencies::default();
        for _ in 0..100 {
            fresh.record("a", "count", Duration::from_millis(4), true);
            fresh.record("b", "count", Duration::from_millis(4), true);
        }
        fresh.sent(1_000);
        let (_, meta) = hedge_run(&fresh, 0.0, None, Some("a"), 0, false).await;
        assert!(waited(&meta, "a").contains("within 300.0 ms"), "{meta:?}");
    }

    /// A holder much slower than the other (adaptive selection) is asked last,
    /// busy or not.
    #[tokio::test]
    async fn a_much_slower_holder_is_asked_last() {
        let latencies = Latencies::default();
        for _ in 0..10 {
            latencies.record("a", "count", Duration::from_millis(50), true);
            latencies.record("b", "count", Duration::from_millis(1), true);
        }
        let (sent, meta) = hedge_run(&latencies, 0.05, None, None, 1, true).await;
        assert_eq!(sent, ["b"], "a is idle but much slower than b");
        assert_eq!(meta.hedges, 0);
    }

    #[tokio::test]
    async fn a_failed_holder_is_retried_on_each_other_holder_and_missing_shards_fail_or_are_listed()
    {
        let map = holders(&[("0", &["a", "b"]), ("1", &["a"])]);
        let load = HashMap::from([("b".to_string(), LOAD_STEP)]);
        let (result, sent) = fan_out(&["0", "1"], &map, &load, &["a"], true).await;
        let gathered = result.unwrap();
        assert_eq!(gathered.meta.retries, 1, "{sent:?}");
        assert_eq!(gathered.meta.shards, 1);
        assert_eq!(gathered.meta.missing_shards, ["1"], "no other holder of 1");
        assert!(
            gathered
                .meta
                .nodes
                .iter()
                .any(|n| n.node == "a" && n.error.is_some())
        );
        // Without allow_partial the holder's error is the answer.
        let (result, _) = fan_out(&["0", "1"], &map, &load, &["a"], false).await;
        assert!(matches!(result, Err(QueryError::Remote { .. })));
        // Two holders failing in turn: the third answers.
        let three = holders(&[("0", &["a", "b", "c"])]);
        let ordered = HashMap::from([
            ("b".to_string(), LOAD_STEP),
            ("c".to_string(), 2 * LOAD_STEP),
        ]);
        let (result, sent) = fan_out(&["0"], &three, &ordered, &["a", "b"], false).await;
        let gathered = result.unwrap();
        assert_eq!(gathered.meta.retries, 2, "{sent:?}");
        assert_eq!(gathered.meta.shards, 1);
        assert!(gathered.meta.missing_shards.is_empty());
        // A shard nobody holds: 503 naming it.
        let (result, _) = fan_out(&["0", "9"], &map, &load, &[], false).await;
        match result {
            Err(QueryError::Unavailable { shards }) => assert_eq!(shards, ["9"]),
            other => panic!("{:?}", other.err()),
        }
    }
}
