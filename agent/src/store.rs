//! The state store: one embedded ACID database (redb) under the root dir.
//!
//! redb over SQLite: pure Rust (no C toolchain or bundled library), a small API of typed tables, and every write
//! transaction is durable (fsync'd) when `commit` returns, which is what "a record is committed before the RPC that
//! created it returns" needs. Records are JSON values keyed by id, so adding a field never needs a migration.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A table of JSON records keyed by id.
#[derive(Clone, Copy)]
pub struct Table(TableDefinition<'static, &'static str, &'static [u8]>);

pub const PODS: Table = Table(TableDefinition::new("pods"));
/// cgroup directories crius created (key: the cgroup path); only these are ever removed again.
pub const CGROUPS: Table = Table(TableDefinition::new("cgroups"));
/// Pulled images (key: image id, the config digest).
pub const IMAGES: Table = Table(TableDefinition::new("images"));
/// Unpacked layers (key: chain id).
pub const LAYERS: Table = Table(TableDefinition::new("layers"));
/// Containers (key: container id).
pub const CONTAINERS: Table = Table(TableDefinition::new("containers"));
const ALL_TABLES: [Table; 5] = [PODS, CGROUPS, IMAGES, LAYERS, CONTAINERS];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state store {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("state store {op} failed")]
    Db {
        op: &'static str,
        #[source]
        source: redb::Error,
    },
    #[error("state store record {key} is corrupt")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

fn db_err(op: &'static str) -> impl FnOnce(redb::Error) -> StoreError {
    move |source| StoreError::Db { op, source }
}

/// The store. Cheap to share behind an `Arc`; redb serializes writers itself.
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) `<root>/state.redb` and makes sure every table exists.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let path = root.join("state.redb");
        let db = Database::create(&path).map_err(|source| StoreError::Open { path, source })?;
        let store = Store { db };
        let txn = store
            .db
            .begin_write()
            .map_err(|e| db_err("begin")(e.into()))?;
        for t in ALL_TABLES {
            txn.open_table(t.0)
                .map_err(|e| db_err("open table")(e.into()))?;
        }
        txn.commit().map_err(|e| db_err("commit")(e.into()))?;
        Ok(store)
    }

    /// Inserts or replaces a record; durable when this returns.
    pub fn put<T: Serialize>(&self, table: Table, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|source| StoreError::Corrupt {
            key: key.to_owned(),
            source,
        })?;
        let txn = self
            .db
            .begin_write()
            .map_err(|e| db_err("begin")(e.into()))?;
        {
            let mut t = txn
                .open_table(table.0)
                .map_err(|e| db_err("open table")(e.into()))?;
            t.insert(key, bytes.as_slice())
                .map_err(|e| db_err("insert")(e.into()))?;
        }
        txn.commit().map_err(|e| db_err("commit")(e.into()))
    }

    /// Deletes a record; deleting a missing key is fine.
    pub fn delete(&self, table: Table, key: &str) -> Result<(), StoreError> {
        let txn = self
            .db
            .begin_write()
            .map_err(|e| db_err("begin")(e.into()))?;
        {
            let mut t = txn
                .open_table(table.0)
                .map_err(|e| db_err("open table")(e.into()))?;
            t.remove(key).map_err(|e| db_err("remove")(e.into()))?;
        }
        txn.commit().map_err(|e| db_err("commit")(e.into()))
    }

    /// Whether a key is present.
    pub fn contains(&self, table: Table, key: &str) -> Result<bool, StoreError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| db_err("begin")(e.into()))?;
        let t = txn
            .open_table(table.0)
            .map_err(|e| db_err("open table")(e.into()))?;
        let found = t.get(key).map_err(|e| db_err("read")(e.into()))?.is_some();
        Ok(found)
    }

    /// One record, if present.
    pub fn get<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| db_err("begin")(e.into()))?;
        let t = txn
            .open_table(table.0)
            .map_err(|e| db_err("open table")(e.into()))?;
        let Some(v) = t.get(key).map_err(|e| db_err("read")(e.into()))? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|source| StoreError::Corrupt {
                key: key.to_owned(),
                source,
            })
    }

    /// Every record of a table.
    pub fn list<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<T>, StoreError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| db_err("begin")(e.into()))?;
        let t = txn
            .open_table(table.0)
            .map_err(|e| db_err("open table")(e.into()))?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(|e| db_err("iterate")(e.into()))? {
            let (k, v) = entry.map_err(|e| db_err("read")(e.into()))?;
            let value =
                serde_json::from_slice(v.value()).map_err(|source| StoreError::Corrupt {
                    key: k.value().to_owned(),
                    source,
                })?;
            out.push(value);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Rec {
        id: String,
        n: u32,
    }

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.put(
                PODS,
                "a",
                &Rec {
                    id: "a".into(),
                    n: 1,
                },
            )
            .unwrap();
            s.put(
                PODS,
                "b",
                &Rec {
                    id: "b".into(),
                    n: 2,
                },
            )
            .unwrap();
            s.put(
                PODS,
                "a",
                &Rec {
                    id: "a".into(),
                    n: 3,
                },
            )
            .unwrap();
            s.delete(PODS, "b").unwrap();
            s.delete(PODS, "missing").unwrap();
            s.put(CGROUPS, "/a/b", &true).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.get::<Rec>(PODS, "a").unwrap().map(|r| r.n), Some(3));
        assert_eq!(s.get::<Rec>(PODS, "b").unwrap(), None);
        let all: Vec<Rec> = s.list(PODS).unwrap();
        assert_eq!(
            all,
            vec![Rec {
                id: "a".into(),
                n: 3
            }]
        );
    }
}
