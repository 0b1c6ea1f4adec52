//! Aliases: names that point to a database, moved atomically (the daily-build
//! workflow: publish a new database, then move the alias). Every change gets a
//! hybrid-logical-clock version; removals leave tombstones so that a later merge
//! with other nodes' registries orders them right.

use serde::{Deserialize, Serialize};

use super::{Inner, Local, NodeError};
use crate::catalog::{ALIASES, AliasRecord, DATABASES, DEFINITIONS, DatabaseRecord, Writer};
use crate::names::check_name;
use crate::registry::DefinitionRecord;

/// One action of an atomic alias batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum AliasAction {
    Set(SetAlias),
    Remove(RemoveAlias),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetAlias {
    pub name: String,
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveAlias {
    pub name: String,
}

impl Local {
    /// Every live alias, sorted by name.
    pub fn aliases(&self) -> Result<Vec<AliasRecord>, NodeError> {
        let all: Vec<(String, AliasRecord)> = self.inner.catalog.scan(ALIASES, "")?;
        Ok(all
            .into_iter()
            .map(|(_, a)| a)
            .filter(|a| a.target.is_some())
            .collect())
    }

    pub fn alias(&self, name: &str) -> Result<AliasRecord, NodeError> {
        self.inner
            .catalog
            .get::<AliasRecord>(ALIASES, name)?
            .filter(|a| a.target.is_some())
            .ok_or_else(|| NodeError::not_found("alias", name))
    }

    /// Points `name` at database `target`.
    pub fn set_alias(&self, name: &str, target: &str) -> Result<AliasRecord, NodeError> {
        let mut out = self.apply_aliases(&[AliasAction::Set(SetAlias {
            name: name.to_string(),
            target: target.to_string(),
        })])?;
        out.pop().ok_or_else(|| NodeError::not_found("alias", name))
    }

    pub fn remove_alias(&self, name: &str) -> Result<AliasRecord, NodeError> {
        let mut out = self.apply_aliases(&[AliasAction::Remove(RemoveAlias {
            name: name.to_string(),
        })])?;
        out.pop().ok_or_else(|| NodeError::not_found("alias", name))
    }

    /// Applies every action in one transaction: all of them, or none if any fails.
    /// Returns the records written, in order.
    pub fn apply_aliases(&self, actions: &[AliasAction]) -> Result<Vec<AliasRecord>, NodeError> {
        if actions.is_empty() {
            return Err(NodeError::InvalidInput("no alias actions given".into()));
        }
        let inner = &self.inner;
        inner.catalog.write(|w| {
            let mut written = Vec::with_capacity(actions.len());
            for action in actions {
                let record = match action {
                    AliasAction::Set(set) => inner.set_in(w, &set.name, &set.target)?,
                    AliasAction::Remove(remove) => inner.remove_in(w, &remove.name)?,
                };
                w.put(ALIASES, &record.name, &record)?;
                written.push(record);
            }
            Ok(written)
        })
    }
}

impl Inner {
    fn stamp(&self, name: &str, target: Option<String>) -> AliasRecord {
        let now = self.now_ms();
        AliasRecord {
            name: name.to_string(),
            target,
            version: self.versions.next(now),
            updated_ms: now,
        }
    }

    fn set_in(&self, w: &Writer, name: &str, target: &str) -> Result<AliasRecord, NodeError> {
        check_name("alias", name).map_err(NodeError::InvalidInput)?;
        check_name("database", target).map_err(NodeError::InvalidInput)?;
        // Definitions are cluster-wide: a database defined on any node counts,
        // whether or not this node holds it yet.
        let defined = |name: &str| -> Result<Option<DefinitionRecord>, NodeError> {
            Ok(w.get::<DefinitionRecord>(DEFINITIONS, name)?)
        };
        if defined(name)?.is_some_and(|d| d.definition.is_some())
            || w.get::<DatabaseRecord>(DATABASES, name)?.is_some()
        {
            return Err(NodeError::Conflict(format!(
                "{name:?} is a database; databases and aliases share one namespace"
            )));
        }
        match defined(target)? {
            None => return Err(NodeError::not_found("database", target)),
            Some(record) if record.definition.is_none() => {
                return Err(NodeError::Conflict(format!(
                    "database {target:?} was deleted (it is in the trash)"
                )));
            }
            Some(_) => {}
        }
        Ok(self.stamp(name, Some(target.to_string())))
    }

    fn remove_in(&self, w: &Writer, name: &str) -> Result<AliasRecord, NodeError> {
        check_name("alias", name).map_err(NodeError::InvalidInput)?;
        let existing = w
            .get::<AliasRecord>(ALIASES, name)?
            .filter(|a| a.target.is_some());
        if existing.is_none() {
            return Err(NodeError::not_found("alias", name));
        }
        Ok(self.stamp(name, None))
    }

    /// A database name, or the database an alias points to.
    pub(super) fn resolve(&self, name: &str) -> Result<String, NodeError> {
        self.resolved
            .get_or_read(&self.catalog, name, || self.resolve_uncached(name))
    }

    fn resolve_uncached(&self, name: &str) -> Result<String, NodeError> {
        if self
            .catalog
            .get::<DatabaseRecord>(DATABASES, name)?
            .is_some()
        {
            return Ok(name.to_string());
        }
        match self.catalog.get::<AliasRecord>(ALIASES, name)? {
            Some(AliasRecord {
                target: Some(target),
                ..
            }) => Ok(target),
            _ => Err(NodeError::not_found("database or alias", name)),
        }
    }

    /// Moves the clock past every version on disk (aliases and definitions), so
    /// versions never repeat across restarts.
    pub(super) fn observe_registry_clock(&self) -> Result<(), NodeError> {
        if let Some(max) = self.registry()?.digest().max {
            self.versions.observe(&max);
        }
        Ok(())
    }
}
