//! The LAN gossip keyring (Consul's `serf/local.keyring` and `consul keyring`): the keys an
//! agent accepts gossip under, the primary one first (it seals with that one), kept in its
//! data dir so that a restarted agent still speaks the DC's current key.
//!
//! An operation (install, use, remove a key) given to one agent is applied there and
//! published in its gossip state as one value, the key sealed under that agent's primary
//! key. Every member applies the operations it has not applied yet, oldest first, and
//! publishes what it then holds as key fingerprints (never keys) with the newest operation
//! it applied, or why it could not; the agent that was asked waits until every live member
//! shows the operation applied. Rotating is then three operations, each confirmed by every
//! member before the next: install the new key (everyone accepts both), use it (everyone
//! seals with it), remove the old one; no member ever receives a datagram sealed under a
//! key it does not hold.
//!
//! Pure: the keyring's rules, the gossip encodings and the confirmation count; the file is
//! read and written by [`Stored`], the gossip I/O is [`super::Gossip`]'s.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::sealed::Sealer;
use crate::config::GossipKey;

/// The keyring's file in the agent's data dir.
pub const KEYRING_FILE: &str = "keyring.json";
/// The gossip key of the newest operation a member published.
pub(super) const KEY_OP: &str = "keyring-op";
/// The gossip key of what a member holds: `<newest op applied> <fingerprint>,...`,
/// primary first.
pub(super) const KEY_HELD: &str = "keyring";
/// The gossip key of the operation a member could not apply: `<op id> <why>`.
pub(super) const KEY_FAILED: &str = "keyring-error";
/// Bound into a sealed operation, so that it cannot pass for a gossip datagram.
const OP_AAD: &[u8] = b"consulate-keyring-op-v1";

/// What an operation does to a keyring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyVerb {
    /// Accept gossip sealed under the key too.
    Install,
    /// Seal with the key (it must be installed).
    Use,
    /// Stop accepting the key (never the primary one).
    Remove,
}

impl KeyVerb {
    /// Its name in gossip and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyVerb::Install => "install",
            KeyVerb::Use => "use",
            KeyVerb::Remove => "remove",
        }
    }

    fn parse(s: &str) -> Option<KeyVerb> {
        [KeyVerb::Install, KeyVerb::Use, KeyVerb::Remove]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// One keyring operation as it travels in gossip: `id` orders operations DC-wide (the
/// issuing agent's clock in microseconds, above every operation it applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOp {
    /// Its order.
    pub id: u64,
    /// What it does.
    pub verb: KeyVerb,
    /// The key it is about.
    pub key: GossipKey,
}

/// Why a keyring operation failed (none is worth retrying as it stands).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// The agent has no gossip key: its gossip is not encrypted.
    #[error("gossip encryption is not enabled on this agent (no encrypt key, no keyring)")]
    NotEnabled,
    /// Using a key that is not installed (memberlist's words).
    #[error("Requested key is not in the keyring")]
    NotInstalled,
    /// Removing the key gossip is sealed with (memberlist's words).
    #[error("Removing the primary key is not allowed")]
    RemovePrimary,
    /// The keyring file could not be read or written.
    #[error("keyring file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// An agent's keys, the primary one first, and the newest operation it applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyring {
    keys: Vec<GossipKey>,
    applied: u64,
}

impl Keyring {
    /// A keyring holding `primary` only.
    pub fn new(primary: GossipKey) -> Keyring {
        Keyring {
            keys: vec![primary],
            applied: 0,
        }
    }

    /// Every key, the primary one first.
    pub fn keys(&self) -> &[GossipKey] {
        &self.keys
    }

    /// The newest operation applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Applies `verb` to `key`; whether the keys changed. Installing a key held, or
    /// removing one that is not, changes nothing (as memberlist).
    pub fn apply(&mut self, verb: KeyVerb, key: &GossipKey) -> Result<bool, KeyringError> {
        let at = self.keys.iter().position(|k| k == key);
        match (verb, at) {
            (KeyVerb::Install, Some(_)) | (KeyVerb::Remove, None) | (KeyVerb::Use, Some(0)) => {
                Ok(false)
            }
            (KeyVerb::Install, None) => {
                self.keys.push(key.clone());
                Ok(true)
            }
            (KeyVerb::Use, None) => Err(KeyringError::NotInstalled),
            (KeyVerb::Use, Some(i)) => {
                let k = self.keys.remove(i);
                self.keys.insert(0, k);
                Ok(true)
            }
            (KeyVerb::Remove, Some(0)) => Err(KeyringError::RemovePrimary),
            (KeyVerb::Remove, Some(i)) => {
                self.keys.remove(i);
                Ok(true)
            }
        }
    }

    /// Applies `op` and records it as applied, whether or not it could be.
    pub fn apply_op(&mut self, op: &KeyOp) -> Result<bool, KeyringError> {
        self.applied = self.applied.max(op.id);
        self.apply(op.verb, &op.key)
    }

    /// Records operation `id`, which could not be opened here, as passed.
    pub fn skip(&mut self, id: u64) {
        self.applied = self.applied.max(id);
    }

    /// The id for a new operation issued at `now_micros`: after every one applied here.
    pub fn next_id(&self, now_micros: u64) -> u64 {
        now_micros.max(self.applied + 1)
    }

    /// What this keyring publishes in gossip ([`KEY_HELD`]).
    pub fn held(&self) -> String {
        let fps: Vec<String> = self.keys.iter().map(fingerprint).collect();
        format!("{} {}", self.applied, fps.join(","))
    }

    /// The key whose fingerprint is `fp`, if held here.
    fn by_fingerprint(&self, fp: &str) -> Option<&GossipKey> {
        self.keys.iter().find(|k| fingerprint(k) == fp)
    }
}

/// A key's public name in gossip: the first 8 bytes of its SHA-256, in hex. It tells
/// which key a member holds without telling the key.
pub fn fingerprint(key: &GossipKey) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, &key.0);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `op` as published in gossip ([`KEY_OP`]): `<id> <verb> <key sealed under the primary
/// key, base64>`.
pub fn encode_op(op: &KeyOp, sealer: &Sealer) -> String {
    let sealed = sealer.seal_with(OP_AAD, op.key.0.to_vec());
    format!(
        "{} {} {}",
        op.id,
        op.verb.as_str(),
        base64::engine::general_purpose::STANDARD.encode(sealed)
    )
}

/// An operation read from gossip: `Err` with its id when it is not sealed under a key
/// held here (or is damaged); `None` when it does not even parse.
pub fn decode_op(value: &str, sealer: &Sealer) -> Option<Result<KeyOp, u64>> {
    let mut parts = value.splitn(3, ' ');
    let id: u64 = parts.next()?.parse().ok()?;
    let verb = KeyVerb::parse(parts.next()?)?;
    let opened = base64::engine::general_purpose::STANDARD
        .decode(parts.next()?)
        .ok()
        .and_then(|mut sealed| {
            let plain = sealer.open_with(OP_AAD, &mut sealed)?;
            <[u8; 32]>::try_from(plain).ok()
        });
    Some(match opened {
        Some(key) => Ok(KeyOp {
            id,
            verb,
            key: GossipKey(key),
        }),
        None => Err(id),
    })
}

/// A member's [`KEY_HELD`] value: the newest operation it applied and its fingerprints.
fn parse_held(value: &str) -> Option<(u64, Vec<&str>)> {
    let (applied, fps) = value.split_once(' ')?;
    let fps = fps.split(',').filter(|f| !f.is_empty()).collect();
    Some((applied.parse().ok()?, fps))
}

/// One live member's keyring as gossip shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberKeys {
    /// Its node name.
    pub name: String,
    /// Its [`KEY_HELD`] value, if published.
    pub held: Option<String>,
    /// Its [`KEY_FAILED`] value, if published.
    pub failed: Option<String>,
}

/// The keys of a DC's live members (Consul's per-pool keyring response).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyringReport {
    /// The DC.
    pub datacenter: String,
    /// Live members counted.
    pub num_nodes: usize,
    /// Each key (base64; a fingerprint for a key not held by the agent that reports) and
    /// how many members hold it.
    pub keys: BTreeMap<String, usize>,
    /// Each key and how many members seal with it.
    pub primary_keys: BTreeMap<String, usize>,
    /// Members that did not apply the operation, and why.
    pub messages: BTreeMap<String, String>,
}

impl KeyringReport {
    /// The report of `members` by an agent holding `local`; with `op`, the members that
    /// have not applied it (yet) or failed to are listed in `messages`.
    pub fn of(
        datacenter: &str,
        local: &Keyring,
        members: &[MemberKeys],
        op: Option<u64>,
    ) -> KeyringReport {
        let name = |fp: &str| {
            local.by_fingerprint(fp).map_or_else(
                || format!("unknown key (fingerprint {fp})"),
                GossipKey::to_base64,
            )
        };
        let mut report = KeyringReport {
            datacenter: datacenter.to_string(),
            num_nodes: members.len(),
            ..KeyringReport::default()
        };
        for m in members {
            let held = m.held.as_deref().and_then(parse_held);
            if let Some((_, fps)) = &held {
                for (i, fp) in fps.iter().enumerate() {
                    *report.keys.entry(name(fp)).or_default() += 1;
                    if i == 0 {
                        *report.primary_keys.entry(name(fp)).or_default() += 1;
                    }
                }
            }
            let Some(op) = op else { continue };
            let failed = m
                .failed
                .as_deref()
                .and_then(|f| f.split_once(' '))
                .filter(|(id, _)| id.parse() == Ok(op));
            if let Some((_, why)) = failed {
                report.messages.insert(m.name.clone(), why.to_string());
            } else if held.is_none_or(|(applied, _)| applied < op) {
                report
                    .messages
                    .insert(m.name.clone(), "has not applied it".to_string());
            }
        }
        report
    }

    /// Whether every member applied the operation counted (no message).
    pub fn confirmed(&self) -> bool {
        self.messages.is_empty()
    }
}

/// The on-disk form (base64 keys, primary first).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KeyringFile {
    keys: Vec<GossipKey>,
    applied: u64,
}

/// An agent's keyring and the file it lives in.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The keys.
    pub ring: Keyring,
    /// Its file.
    pub path: PathBuf,
}

impl Stored {
    /// The keyring in `data_dir`; without one, a new keyring holding `encrypt` (written
    /// there at once); `None` when there is neither (plaintext gossip). A keyring on disk
    /// wins over `encrypt` (Consul: "LAN keyring exists but -encrypt given, using
    /// keyring"), since it holds the DC's keys as rotated since.
    pub fn open(
        data_dir: &Path,
        encrypt: Option<&GossipKey>,
    ) -> Result<Option<Stored>, KeyringError> {
        let path = data_dir.join(KEYRING_FILE);
        let err = |reason: String| KeyringError::File {
            path: path.clone(),
            reason,
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let file: KeyringFile =
                    serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
                if file.keys.is_empty() {
                    return Err(err("it holds no key".into()));
                }
                if encrypt.is_some_and(|k| !file.keys.contains(k)) {
                    tracing::warn!(path = %path.display(), "a gossip keyring exists in the data dir: using it, not the configured encrypt key");
                }
                Ok(Some(Stored {
                    ring: Keyring {
                        keys: file.keys,
                        applied: file.applied,
                    },
                    path,
                }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let Some(key) = encrypt else {
                    return Ok(None);
                };
                let stored = Stored {
                    ring: Keyring::new(key.clone()),
                    path,
                };
                stored.save()?;
                Ok(Some(stored))
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// Writes the keyring to its file (readable by the agent's user only), durably: a
    /// temporary file synced, then renamed over the old one.
    pub fn save(&self) -> Result<(), KeyringError> {
        let err = |e: std::io::Error| KeyringError::File {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let body = serde_json::to_vec(&KeyringFile {
            keys: self.ring.keys.clone(),
            applied: self.ring.applied,
        })
        .expect("a keyring serializes");
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(err)?;
        file.write_all(&body).map_err(err)?;
        file.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> GossipKey {
        GossipKey([b; 32])
    }

    #[test]
    fn keyring_rules_follow_memberlist() {
        let mut ring = Keyring::new(key(1));
        assert_eq!(
            ring.apply(KeyVerb::Use, &key(2)),
            Err(KeyringError::NotInstalled)
        );
        assert_eq!(ring.apply(KeyVerb::Install, &key(2)), Ok(true));
        assert_eq!(ring.apply(KeyVerb::Install, &key(2)), Ok(false));
        assert_eq!(ring.keys(), &[key(1), key(2)]);
        assert_eq!(
            ring.apply(KeyVerb::Remove, &key(1)),
            Err(KeyringError::RemovePrimary)
        );
        assert_eq!(ring.apply(KeyVerb::Use, &key(2)), Ok(true));
        assert_eq!(ring.keys(), &[key(2), key(1)]);
        assert_eq!(ring.apply(KeyVerb::Use, &key(2)), Ok(false));
        assert_eq!(ring.apply(KeyVerb::Remove, &key(1)), Ok(true));
        assert_eq!(ring.apply(KeyVerb::Remove, &key(1)), Ok(false));
        assert_eq!(ring.keys(), &[key(2)]);
    }

    #[test]
    fn operations_are_ordered_and_recorded_even_when_refused() {
        let mut ring = Keyring::new(key(1));
        let op = KeyOp {
            id: 50,
            verb: KeyVerb::Remove,
            key: key(1),
        };
        assert!(ring.apply_op(&op).is_err());
        assert_eq!(ring.applied(), 50);
        assert_eq!(ring.next_id(10), 51, "after every operation applied");
        assert_eq!(ring.next_id(99), 99);
    }

    #[test]
    fn an_operation_travels_sealed_and_opens_only_under_a_held_key() {
        let op = KeyOp {
            id: 7,
            verb: KeyVerb::Install,
            key: key(9),
        };
        let sealer = Sealer::new(&[key(1)]);
        let value = encode_op(&op, &sealer);
        assert!(
            !value.contains(&key(9).to_base64()),
            "the key never in clear"
        );
        assert_eq!(decode_op(&value, &sealer), Some(Ok(op.clone())));
        assert_eq!(
            decode_op(&value, &Sealer::new(&[key(3), key(1)])),
            Some(Ok(op)),
            "opened under a secondary key"
        );
        assert_eq!(decode_op(&value, &Sealer::new(&[key(3)])), Some(Err(7)));
        assert_eq!(decode_op("garbage", &sealer), None);
        assert_eq!(decode_op("7 burn AAAA", &sealer), None);
    }

    #[test]
    fn a_report_counts_keys_and_names_members_that_did_not_apply() {
        let mut local = Keyring::new(key(1));
        local.apply(KeyVerb::Install, &key(2)).unwrap();
        local.applied = 10;
        let held = |applied: u64, keys: &[GossipKey]| {
            let fps: Vec<String> = keys.iter().map(fingerprint).collect();
            Some(format!("{applied} {}", fps.join(",")))
        };
        let members = vec![
            MemberKeys {
                name: "a".into(),
                held: held(10, &[key(1), key(2)]),
                failed: None,
            },
            MemberKeys {
                name: "b".into(),
                held: held(9, &[key(1)]),
                failed: None,
            },
            MemberKeys {
                name: "c".into(),
                held: held(10, &[key(3)]),
                failed: Some("10 Requested key is not in the keyring".into()),
            },
        ];
        let r = KeyringReport::of("dc1", &local, &members, Some(10));
        assert_eq!(r.num_nodes, 3);
        assert_eq!(r.keys[&key(1).to_base64()], 2);
        assert_eq!(r.keys[&key(2).to_base64()], 1);
        assert_eq!(r.primary_keys[&key(1).to_base64()], 2);
        let unknown = format!("unknown key (fingerprint {})", fingerprint(&key(3)));
        assert_eq!(r.primary_keys[&unknown], 1);
        assert_eq!(r.messages["b"], "has not applied it");
        assert_eq!(r.messages["c"], "Requested key is not in the keyring");
        assert!(!r.messages.contains_key("a"));
        assert!(!r.confirmed());
        assert!(KeyringReport::of("dc1", &local, &members[..1], Some(10)).confirmed());
        assert!(KeyringReport::of("dc1", &local, &members, None).confirmed());
    }

    #[test]
    fn the_file_round_trips_and_wins_over_the_configured_key() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Stored::open(dir.path(), None).unwrap().is_none());
        let mut stored = Stored::open(dir.path(), Some(&key(1))).unwrap().unwrap();
        stored
            .ring
            .apply_op(&KeyOp {
                id: 3,
                verb: KeyVerb::Install,
                key: key(2),
            })
            .unwrap();
        stored.ring.apply(KeyVerb::Use, &key(2)).unwrap();
        stored.save().unwrap();
        let again = Stored::open(dir.path(), Some(&key(1))).unwrap().unwrap();
        assert_eq!(again.ring, stored.ring);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&again.path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&again.path, b"{not json").unwrap();
        assert!(matches!(
            Stored::open(dir.path(), None),
            Err(KeyringError::File { .. })
        ));
    }
}
