//! User events (Consul's `consul event`): a name and a small payload that a server of a
//! DC spreads to every agent of its LAN pool, best effort, as serf's user events. The
//! pure part lives here: the event, its limits and filters, and the log each agent keeps
//! (deduplicated by ID, the newest [`EVENT_BUFFER`], a Lamport clock). Spreading rides
//! gossip: the server that fires an event publishes it under one of [`SLOTS`] keys of its
//! own node state, oldest overwritten first, and every member reads those keys of every
//! node each gossip round.

use std::collections::{HashSet, VecDeque};

use base64::Engine as _;
use regex_automata::meta::Regex;
use serde::{Deserialize, Serialize};

/// The largest name plus payload (serf's default `UserEventSizeLimit`, which Consul keeps).
pub const EVENT_SIZE_LIMIT: usize = 512;

/// How many events an agent remembers (Consul's `userEventBuf`).
pub const EVENT_BUFFER: usize = 256;

/// How many events one server keeps published at a time: a member that misses more than
/// this many rounds' worth of events from it misses some (best effort, as serf's).
pub const SLOTS: u64 = 32;

/// The node-state key prefix of published events.
pub const KEY_PREFIX: &str = "event/";

/// A user event, in Consul's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEvent {
    /// Random UUID, given by the agent that fired it: the same event arriving twice (a
    /// resent request, two paths of gossip) is delivered once.
    pub id: String,
    /// The event's name.
    pub name: String,
    /// Opaque payload.
    pub payload: Vec<u8>,
    /// Regex on node names: only matching agents keep it (empty: all).
    pub node_filter: String,
    /// Regex on service names: only agents with a matching service keep it.
    pub service_filter: String,
    /// Regex on the tags of the services `service_filter` matched.
    pub tag_filter: String,
    /// Always 1 (Consul's).
    pub version: u8,
    /// Lamport time given by the server that spread it.
    pub ltime: u64,
}

/// Why an event cannot be fired (a client mistake).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// No name.
    #[error("User event missing name")]
    MissingName,
    /// Name and payload over the limit.
    #[error("user event exceeds configured limit of {EVENT_SIZE_LIMIT} bytes before encoding")]
    TooLarge,
    /// A filter that is not a regular expression.
    #[error("Invalid {0} filter: {1}")]
    BadFilter(&'static str, String),
    /// A tag filter without a service filter.
    #[error("Cannot provide tag filter without service filter")]
    TagWithoutService,
}

fn regex(kind: &'static str, re: &str) -> Result<Option<Regex>, EventError> {
    if re.is_empty() {
        return Ok(None);
    }
    Regex::new(re)
        .map(Some)
        .map_err(|e| EventError::BadFilter(kind, e.to_string()))
}

fn matches(re: &Option<Regex>, s: &str) -> bool {
    re.as_ref().is_none_or(|r| r.is_match(s))
}

impl UserEvent {
    /// Checks what Consul checks before firing.
    pub fn validate(&self) -> Result<(), EventError> {
        if self.name.is_empty() {
            return Err(EventError::MissingName);
        }
        if self.name.len() + self.payload.len() > EVENT_SIZE_LIMIT {
            return Err(EventError::TooLarge);
        }
        if !self.tag_filter.is_empty() && self.service_filter.is_empty() {
            return Err(EventError::TagWithoutService);
        }
        regex("node", &self.node_filter)?;
        regex("service", &self.service_filter)?;
        regex("tag", &self.tag_filter)?;
        Ok(())
    }

    /// Whether the agent of `node` with `services` (name, tags) keeps the event.
    pub fn wanted_by<'a>(
        &self,
        node: &str,
        mut services: impl Iterator<Item = (&'a str, &'a [String])>,
    ) -> bool {
        let (Ok(n), Ok(s), Ok(t)) = (
            regex("node", &self.node_filter),
            regex("service", &self.service_filter),
            regex("tag", &self.tag_filter),
        ) else {
            return false;
        };
        if !matches(&n, node) {
            return false;
        }
        if s.is_none() {
            return true;
        }
        services.any(|(name, tags)| {
            matches(&s, name) && (t.is_none() || tags.iter().any(|tag| matches(&t, tag)))
        })
    }

    /// The event as a node-state value.
    pub fn encode(&self) -> String {
        let bytes = rmp_serde::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// An event read from a node-state value; `None` for anything else.
    pub fn decode(value: &str) -> Option<UserEvent> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value)
            .ok()?;
        rmp_serde::from_slice(&bytes).ok()
    }

    /// The key a server publishes it under.
    pub fn key(&self) -> String {
        format!("{KEY_PREFIX}{}", self.ltime % SLOTS)
    }
}

/// Consul's index of an event list: the last event's UUID folded to 64 bits (its two
/// halves XORed), 0 when there is none.
pub fn index_of(id: &str) -> u64 {
    match uuid::Uuid::parse_str(id) {
        Ok(u) => {
            let (hi, lo) = u.as_u64_pair();
            hi ^ lo
        }
        Err(_) => 0,
    }
}

/// The events an agent received, oldest first.
#[derive(Debug, Default)]
pub struct EventLog {
    events: VecDeque<UserEvent>,
    seen: HashSet<String>,
    clock: u64,
}

impl EventLog {
    /// Takes `e` unless it was seen; returns whether it is new. Keeps the newest
    /// [`EVENT_BUFFER`] and moves the clock past the event's time.
    pub fn receive(&mut self, e: UserEvent) -> bool {
        self.clock = self.clock.max(e.ltime);
        if !self.seen.insert(e.id.clone()) {
            return false;
        }
        self.events.push_back(e);
        while self.events.len() > EVENT_BUFFER {
            if let Some(old) = self.events.pop_front() {
                self.seen.remove(&old.id);
            }
        }
        true
    }

    /// Stamps `e` with the next Lamport time, for a server about to spread it.
    pub fn stamp(&mut self, mut e: UserEvent) -> UserEvent {
        self.clock += 1;
        e.ltime = self.clock;
        e
    }

    /// The events, oldest first.
    pub fn events(&self) -> impl Iterator<Item = &UserEvent> {
        self.events.iter()
    }

    /// The list's index ([`index_of`] its newest event).
    pub fn index(&self) -> u64 {
        self.events.back().map_or(0, |e| index_of(&e.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, name: &str) -> UserEvent {
        UserEvent {
            id: id.into(),
            name: name.into(),
            payload: Vec::new(),
            node_filter: String::new(),
            service_filter: String::new(),
            tag_filter: String::new(),
            version: 1,
            ltime: 0,
        }
    }

    #[test]
    fn limits_and_filters_are_checked_as_consul_does() {
        assert_eq!(event("a", "").validate(), Err(EventError::MissingName));
        let mut e = event("a", "deploy");
        e.payload = vec![b'x'; EVENT_SIZE_LIMIT - "deploy".len()];
        assert_eq!(e.validate(), Ok(()));
        e.payload.push(b'x');
        assert_eq!(e.validate(), Err(EventError::TooLarge));
        let mut e = event("a", "deploy");
        e.tag_filter = "v1".into();
        assert_eq!(e.validate(), Err(EventError::TagWithoutService));
        e.service_filter = "(".into();
        assert!(matches!(
            e.validate(),
            Err(EventError::BadFilter("service", _))
        ));
    }

    #[test]
    fn filters_pick_the_agents_that_keep_an_event() {
        let tags = vec!["v1".to_string(), "blue".to_string()];
        let services = || [("web", tags.as_slice())].into_iter();
        let mut e = event("a", "deploy");
        assert!(e.wanted_by("c1", services()));
        e.node_filter = "^c[0-9]$".into();
        assert!(e.wanted_by("c1", services()));
        assert!(!e.wanted_by("s1", services()));
        e.service_filter = "^web$".into();
        assert!(e.wanted_by("c1", services()));
        assert!(!e.wanted_by("c1", std::iter::empty()));
        e.tag_filter = "blue".into();
        assert!(e.wanted_by("c1", services()));
        e.tag_filter = "green".into();
        assert!(!e.wanted_by("c1", services()));
    }

    #[test]
    fn the_log_delivers_each_event_once_keeps_the_newest_and_orders_time() {
        let mut log = EventLog::default();
        let e = log.stamp(event("00000000-0000-0000-0000-000000000001", "a"));
        assert_eq!(e.ltime, 1);
        assert!(log.receive(e.clone()));
        assert!(!log.receive(e.clone()), "a duplicate is dropped");
        assert_eq!(log.index(), 1);
        let mut later = event("x", "b");
        later.ltime = 40;
        assert!(log.receive(later));
        assert_eq!(
            log.stamp(event("y", "c")).ltime,
            41,
            "the clock moved past 40"
        );
        for i in 0..EVENT_BUFFER {
            log.receive(event(&format!("n{i}"), "n"));
        }
        assert_eq!(log.events().count(), EVENT_BUFFER);
        assert!(
            log.receive(e),
            "forgotten with the oldest, an old ID is new again"
        );
        assert_eq!(
            UserEvent::decode(&event("q", "r").encode()),
            Some(event("q", "r"))
        );
        assert_eq!(UserEvent::decode("not an event"), None);
    }
}
