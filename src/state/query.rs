//! Reads of the state as typed, serializable queries: the same [`Query`] runs locally or is
//! forwarded to the leader, and names the tables whose indexes a blocking read waits on.

use serde::{Deserialize, Serialize};

use super::{KvEntry, State, Table};

/// A read of the DC's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// One KV entry.
    KvGet {
        /// The key.
        key: String,
    },
    /// Every KV entry under a prefix (`?recurse`).
    KvList {
        /// The prefix.
        prefix: String,
    },
    /// The keys under a prefix (`?keys`), cut after `separator` if one is given.
    KvKeys {
        /// The prefix.
        prefix: String,
        /// Group keys up to the first separator after the prefix.
        separator: Option<String>,
    },
}

/// What a [`Query`] returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryResult {
    /// KV entries (empty: not found).
    Kv(Vec<KvEntry>),
    /// Key names.
    Keys(Vec<String>),
}

impl Query {
    /// The tables whose changes can change this query's answer.
    pub fn tables(&self) -> &'static [Table] {
        match self {
            Query::KvGet { .. } | Query::KvList { .. } | Query::KvKeys { .. } => &[Table::Kv],
        }
    }

    /// Answers the query from `state`.
    pub fn run(&self, state: &State) -> QueryResult {
        match self {
            Query::KvGet { key } => {
                QueryResult::Kv(state.kv_get(key).cloned().into_iter().collect())
            }
            Query::KvList { prefix } => QueryResult::Kv(state.kv_prefix(prefix).cloned().collect()),
            Query::KvKeys { prefix, separator } => {
                let mut keys: Vec<String> = Vec::new();
                for e in state.kv_prefix(prefix) {
                    let key = match separator.as_deref().filter(|s| !s.is_empty()) {
                        Some(sep) => match e.key[prefix.len()..].find(sep) {
                            Some(at) => &e.key[..prefix.len() + at + sep.len()],
                            None => &e.key,
                        },
                        None => &e.key,
                    };
                    // Keys come sorted, so grouped keys are adjacent.
                    if keys.last().map(String::as_str) != Some(key) {
                        keys.push(key.to_string());
                    }
                }
                QueryResult::Keys(keys)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;

    #[test]
    fn keys_with_separator_group_like_consul() {
        let mut s = State::default();
        for (i, k) in ["web/a", "web/b/c", "web/b/d", "web/e", "weba"]
            .iter()
            .enumerate()
        {
            s.apply(
                i as u64 + 1,
                Command::KvSet {
                    key: k.to_string(),
                    value: bytes::Bytes::new(),
                    flags: 0,
                },
            );
        }
        let q = Query::KvKeys {
            prefix: "web/".into(),
            separator: Some("/".into()),
        };
        assert_eq!(
            q.run(&s),
            QueryResult::Keys(vec!["web/a".into(), "web/b/".into(), "web/e".into()])
        );
        let all = Query::KvKeys {
            prefix: "web".into(),
            separator: None,
        };
        let QueryResult::Keys(k) = all.run(&s) else {
            panic!()
        };
        assert_eq!(k.len(), 5);
        let get = Query::KvGet { key: "nope".into() };
        assert_eq!(get.run(&s), QueryResult::Kv(vec![]));
    }
}
