//! The `Analysis` trait user code implements, its error type, and the type-erased
//! form the node keeps in its registry.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Shard;

/// An analysis: `map` runs on each shard and returns a `Partial`; `reduce` merges
/// partials; `finish` turns the last partial into the answer.
///
/// `reduce` must be associative and must not depend on the order or grouping of
/// its input: the node reduces the partials of its shards, and a query spanning
/// several nodes reduces again the partials the nodes send back (a two-level
/// reduce). `reduce(vec![])` returns the identity (the partial of no data).
///
/// `map` runs on tokio's blocking pool, so it may block on file I/O and compute
/// for a while; long loops should call [`Shard::check_cancelled`] now and then so
/// a query past its deadline stops using the CPU.
///
/// ```
/// use dram::query::{Analysis, AnalysisError, Shard};
///
/// /// Counts the files of each shard.
/// struct FileCount;
///
/// impl Analysis for FileCount {
///     type Params = ();
///     type Partial = u64;
///     type Output = u64;
///
///     fn map(&self, _: &(), shard: &Shard) -> Result<u64, AnalysisError> {
///         Ok(shard.files().len() as u64)
///     }
///     fn reduce(&self, _: &(), partials: Vec<u64>) -> Result<u64, AnalysisError> {
///         Ok(partials.into_iter().sum())
///     }
///     fn finish(&self, _: &(), total: u64) -> Result<u64, AnalysisError> {
///         Ok(total)
///     }
/// }
/// ```
pub trait Analysis: Send + Sync + 'static {
    /// The query's parameters, from the request's `"params"` (an absent, `null`
    /// or `{}` `params` is read as `{}`, then as `null`, so `()` and all-default
    /// structs accept each of them).
    type Params: DeserializeOwned + Send + Sync + 'static;
    /// What `map` returns and `reduce` merges; serializable so that it can travel
    /// between nodes.
    type Partial: Serialize + DeserializeOwned + Send + 'static;
    /// The answer, sent as the response's `"result"`.
    type Output: Serialize + 'static;

    /// One line shown by `GET /v1/analyses`.
    fn description(&self) -> String {
        String::new()
    }

    /// Whether an answer may be kept and given again for the same database
    /// version, params and shards (the result cache). True unless the
    /// answer depends on something else: the time, a random draw, data
    /// outside the database.
    fn cacheable(&self) -> bool {
        true
    }

    /// Works on one shard.
    fn map(&self, params: &Self::Params, shard: &Shard) -> Result<Self::Partial, AnalysisError>;

    /// Merges partials (associative; the empty input gives the identity).
    fn reduce(
        &self,
        params: &Self::Params,
        partials: Vec<Self::Partial>,
    ) -> Result<Self::Partial, AnalysisError>;

    /// Turns the reduced partial of every shard into the answer.
    fn finish(
        &self,
        params: &Self::Params,
        partial: Self::Partial,
    ) -> Result<Self::Output, AnalysisError>;
}

/// Why an analysis failed. Any error type converts into it with `?` (as
/// "failed"); `invalid_params` makes the query a 400 instead of a 500.
pub struct AnalysisError {
    kind: AnalysisErrorKind,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AnalysisErrorKind {
    /// The parameters are wrong: the caller's fault (HTTP 400).
    InvalidParams,
    /// The query was cancelled (deadline passed, or the caller went away).
    Cancelled,
    /// The request would change something where only reads are allowed
    /// (HTTP 400 `read_only`).
    ReadOnly,
    /// The query needs more memory than it may use (HTTP 503 `memory_limit`).
    MemoryLimit,
    /// Anything else: the analysis or the data (HTTP 500).
    Failed,
}

impl AnalysisError {
    pub fn invalid_params(message: impl fmt::Display) -> AnalysisError {
        AnalysisError {
            kind: AnalysisErrorKind::InvalidParams,
            message: message.to_string(),
        }
    }

    pub fn failed(message: impl fmt::Display) -> AnalysisError {
        AnalysisError {
            kind: AnalysisErrorKind::Failed,
            message: message.to_string(),
        }
    }

    pub fn read_only(message: impl fmt::Display) -> AnalysisError {
        AnalysisError {
            kind: AnalysisErrorKind::ReadOnly,
            message: message.to_string(),
        }
    }

    pub fn memory_limit(message: impl fmt::Display) -> AnalysisError {
        AnalysisError {
            kind: AnalysisErrorKind::MemoryLimit,
            message: message.to_string(),
        }
    }

    pub fn cancelled() -> AnalysisError {
        AnalysisError {
            kind: AnalysisErrorKind::Cancelled,
            message: "the query was cancelled".into(),
        }
    }

    pub fn kind(&self) -> AnalysisErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error with `context: ` in front of its message.
    pub fn context(mut self, context: impl fmt::Display) -> AnalysisError {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for AnalysisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for AnalysisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

/// Like `anyhow::Error`, `AnalysisError` does not implement `std::error::Error`
/// itself, so that every error type converts into it.
impl<E: std::error::Error + Send + Sync + 'static> From<E> for AnalysisError {
    fn from(e: E) -> AnalysisError {
        AnalysisError::failed(e)
    }
}

pub(crate) type DynParams = Arc<dyn Any + Send + Sync>;
pub(crate) type DynPartial = Box<dyn Any + Send>;

/// An `Analysis` with its types erased, as the node's registry keeps it.
pub(crate) trait DynAnalysis: Send + Sync {
    fn description(&self) -> String;
    fn cacheable(&self) -> bool;
    /// The type of the analysis behind this one (the engine serves the
    /// built-in `sql` itself).
    fn analysis_type(&self) -> std::any::TypeId;
    fn params(&self, params: Option<serde_json::Value>) -> Result<DynParams, AnalysisError>;
    fn map(&self, params: &DynParams, shard: &Shard) -> Result<DynPartial, AnalysisError>;
    fn reduce(
        &self,
        params: &DynParams,
        partials: Vec<DynPartial>,
    ) -> Result<DynPartial, AnalysisError>;
    fn finish(
        &self,
        params: &DynParams,
        partial: DynPartial,
    ) -> Result<serde_json::Value, AnalysisError>;
    /// A partial as MessagePack, to travel from a leaf to the root.
    fn encode(&self, partial: DynPartial) -> Result<Vec<u8>, AnalysisError>;
    fn decode(&self, bytes: &[u8]) -> Result<DynPartial, AnalysisError>;
}

fn typed<T: 'static>(value: &(dyn Any + Send + Sync)) -> Result<&T, AnalysisError> {
    value
        .downcast_ref::<T>()
        .ok_or_else(|| AnalysisError::failed("internal error: parameters of another analysis"))
}

fn unbox<T: 'static>(partial: DynPartial) -> Result<T, AnalysisError> {
    partial
        .downcast::<T>()
        .map(|b| *b)
        .map_err(|_| AnalysisError::failed("internal error: partial of another analysis"))
}

impl<A: Analysis> DynAnalysis for A {
    fn description(&self) -> String {
        Analysis::description(self)
    }

    fn cacheable(&self) -> bool {
        Analysis::cacheable(self)
    }

    fn analysis_type(&self) -> std::any::TypeId {
        std::any::TypeId::of::<A>()
    }

    fn params(&self, params: Option<serde_json::Value>) -> Result<DynParams, AnalysisError> {
        // Absent, `null` and `{}` all mean "no params": read as `{}`, then as `null`,
        // so that `()` and all-default structs accept each of them.
        let empty = match &params {
            None | Some(serde_json::Value::Null) => true,
            Some(serde_json::Value::Object(map)) => map.is_empty(),
            Some(_) => false,
        };
        let parsed = match params {
            Some(value) if !empty => serde_json::from_value::<A::Params>(value),
            _ => serde_json::from_value::<A::Params>(serde_json::json!({}))
                .or_else(|e| serde_json::from_value(serde_json::Value::Null).map_err(|_| e)),
        };
        let params = parsed.map_err(AnalysisError::invalid_params)?;
        Ok(Arc::new(params))
    }

    fn map(&self, params: &DynParams, shard: &Shard) -> Result<DynPartial, AnalysisError> {
        let partial = Analysis::map(self, typed::<A::Params>(params.as_ref())?, shard)?;
        Ok(Box::new(partial))
    }

    fn reduce(
        &self,
        params: &DynParams,
        partials: Vec<DynPartial>,
    ) -> Result<DynPartial, AnalysisError> {
        let partials = partials
            .into_iter()
            .map(unbox::<A::Partial>)
            .collect::<Result<Vec<_>, _>>()?;
        let reduced = Analysis::reduce(self, typed::<A::Params>(params.as_ref())?, partials)?;
        Ok(Box::new(reduced))
    }

    fn finish(
        &self,
        params: &DynParams,
        partial: DynPartial,
    ) -> Result<serde_json::Value, AnalysisError> {
        let output = Analysis::finish(
            self,
            typed::<A::Params>(params.as_ref())?,
            unbox::<A::Partial>(partial)?,
        )?;
        serde_json::to_value(output)
            .map_err(|e| AnalysisError::failed(format!("cannot serialize the result: {e}")))
    }

    fn encode(&self, partial: DynPartial) -> Result<Vec<u8>, AnalysisError> {
        // Named fields: robust to `skip_serializing_if` in the partial's type.
        rmp_serde::to_vec_named(&unbox::<A::Partial>(partial)?)
            .map_err(|e| AnalysisError::failed(format!("cannot encode a partial: {e}")))
    }

    fn decode(&self, bytes: &[u8]) -> Result<DynPartial, AnalysisError> {
        let partial: A::Partial = rmp_serde::from_slice(bytes)
            .map_err(|e| AnalysisError::failed(format!("cannot decode a partial: {e}")))?;
        Ok(Box::new(partial))
    }
}

/// The analyses a node serves, by name.
#[derive(Clone, Default)]
pub struct Analyses {
    by_name: BTreeMap<String, Arc<dyn DynAnalysis>>,
}

impl fmt::Debug for Analyses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.by_name.keys()).finish()
    }
}

/// What `GET /v1/analyses` shows of one analysis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AnalysisInfo {
    pub name: String,
    pub description: String,
}

impl Analyses {
    /// Adds an analysis; the name must be a valid name and not taken.
    pub fn insert(&mut self, name: &str, analysis: impl Analysis) -> Result<(), String> {
        crate::names::check_name("analysis", name)?;
        if self.by_name.contains_key(name) {
            return Err(format!("analysis {name:?} is registered twice"));
        }
        self.by_name.insert(name.to_string(), Arc::new(analysis));
        Ok(())
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<dyn DynAnalysis>> {
        self.by_name.get(name).cloned()
    }

    pub fn list(&self) -> Vec<AnalysisInfo> {
        self.by_name
            .iter()
            .map(|(name, analysis)| AnalysisInfo {
                name: name.clone(),
                description: analysis.description(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sum;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SumParams {
        #[serde(default)]
        offset: i64,
    }

    impl Analysis for Sum {
        type Params = SumParams;
        type Partial = i64;
        type Output = i64;
        fn map(&self, _: &SumParams, _: &Shard) -> Result<i64, AnalysisError> {
            Ok(1)
        }
        fn reduce(&self, _: &SumParams, partials: Vec<i64>) -> Result<i64, AnalysisError> {
            Ok(partials.into_iter().sum())
        }
        fn finish(&self, params: &SumParams, total: i64) -> Result<i64, AnalysisError> {
            Ok(total + params.offset)
        }
    }

    struct Unit;

    impl Analysis for Unit {
        type Params = ();
        type Partial = ();
        type Output = ();
        fn map(&self, _: &(), _: &Shard) -> Result<(), AnalysisError> {
            Ok(())
        }
        fn reduce(&self, _: &(), _: Vec<()>) -> Result<(), AnalysisError> {
            Ok(())
        }
        fn finish(&self, _: &(), _: ()) -> Result<(), AnalysisError> {
            Ok(())
        }
    }

    #[test]
    fn erased_analysis_round_trips_typed_values() {
        let sum: Arc<dyn DynAnalysis> = Arc::new(Sum);
        let params = sum.params(Some(serde_json::json!({"offset": 10}))).unwrap();
        let partials: Vec<DynPartial> = vec![Box::new(2i64), Box::new(3i64)];
        let reduced = sum.reduce(&params, partials).unwrap();
        let again = sum.reduce(&params, vec![reduced, Box::new(4i64)]).unwrap();
        assert_eq!(sum.finish(&params, again).unwrap(), serde_json::json!(19));
        let empty = sum.reduce(&params, vec![]).unwrap();
        assert_eq!(sum.finish(&params, empty).unwrap(), serde_json::json!(10));
    }

    #[test]
    fn absent_params_default_and_bad_params_are_invalid() {
        let sum: Arc<dyn DynAnalysis> = Arc::new(Sum);
        assert!(sum.params(None).is_ok());
        assert!(sum.params(Some(serde_json::Value::Null)).is_ok());
        assert!(sum.params(Some(serde_json::json!({}))).is_ok());
        assert!(sum.params(Some(serde_json::json!("text"))).is_err());
        // `()` params take absent, null and {} alike, and nothing else.
        let unit: Arc<dyn DynAnalysis> = Arc::new(Unit);
        for empty in [
            None,
            Some(serde_json::Value::Null),
            Some(serde_json::json!({})),
        ] {
            assert!(unit.params(empty.clone()).is_ok(), "{empty:?}");
        }
        assert!(unit.params(Some(serde_json::json!({"a": 1}))).is_err());
        let err = sum
            .params(Some(serde_json::json!({"offset": "x"})))
            .err()
            .unwrap();
        assert_eq!(err.kind(), AnalysisErrorKind::InvalidParams);
        assert!(err.message().contains("invalid type"), "{err}");
        let wrong_partial = sum.finish(&params_of(&sum), Box::new("text"));
        assert!(wrong_partial.is_err());
    }

    fn params_of(analysis: &Arc<dyn DynAnalysis>) -> DynParams {
        analysis.params(None).unwrap()
    }

    #[test]
    fn names_are_checked_and_unique() {
        let mut analyses = Analyses::default();
        analyses.insert("sum", Sum).unwrap();
        assert!(analyses.insert("sum", Sum).is_err());
        assert!(analyses.insert("bad name", Sum).is_err());
        assert_eq!(analyses.list()[0].name, "sum");
    }
}
