//! The outbox: every message the bridge publishes, in order, until the broker has it.
//!
//! rumqttc drops its pending queue when a clean session reconnects, so the bridge keeps its own.
//! A message enters here first and leaves when it is acknowledged (PUBACK / PUBCOMP; QoS 0 when it
//! was written to the connection). After a reconnect every unacknowledged message is sent again in
//! the original order (QoS 1 is at-least-once anyway).
//!
//! Invariants: the outbox never holds more than `max_messages` messages or (beyond one message)
//! `max_bytes` bytes; when full, the oldest unsent non-retained message is dropped and counted
//! (a retained one only when nothing else is left). For a retained topic only the newest unsent
//! message is kept (an older retained value is superseded anyway), which is what keeps a flood of
//! state updates during an outage from evicting other messages; and since retained messages are
//! at most one per topic, preferring to drop the others keeps a flood of events from evicting
//! the newest state, which the broker would otherwise go on serving stale.
//! Messages pushed with [`Outbox::push_priority`] (the instance status, device availability)
//! leave before every unsent ordinary message, in their own order: a backlog of state must not
//! hold back the final `offline`.
//! Pure data structure: no IO, no clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name.
    pub topic: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// 0, 1 or 2.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
}

impl Message {
    fn size(&self) -> usize {
        self.topic.len() + self.payload.len()
    }
}

#[derive(Debug)]
struct Entry {
    msg: Message,
    sent: bool,
    priority: bool,
}

/// What [`Outbox::push`] did besides queueing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PushOutcome {
    /// An older unsent retained message on the same topic was replaced.
    pub coalesced: bool,
    /// Messages dropped to stay within bounds.
    pub dropped: usize,
}

/// The ordered, bounded, coalescing queue.
#[derive(Debug)]
pub struct Outbox {
    entries: BTreeMap<u64, Entry>,
    /// No entry below this id is unsent: where [`Outbox::next_unsent`] starts looking, so that
    /// a window of sent, unacknowledged messages is not rescanned for every message.
    unsent_from: u64,
    unsent_retained: HashMap<String, u64>,
    /// Unsent priority messages, oldest first.
    unsent_priority: BTreeSet<u64>,
    next_id: u64,
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
    dropped_total: u64,
}

impl Outbox {
    /// An empty outbox with the given bounds (each at least 1).
    pub fn new(max_messages: usize, max_bytes: usize) -> Outbox {
        Outbox {
            entries: BTreeMap::new(),
            unsent_from: 0,
            unsent_retained: HashMap::new(),
            unsent_priority: BTreeSet::new(),
            next_id: 1,
            bytes: 0,
            max_messages: max_messages.max(1),
            max_bytes: max_bytes.max(1),
            dropped_total: 0,
        }
    }

    /// Messages held (sent-but-unacknowledged included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held (topics plus payloads).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether the outbox is at a bound (producers should wait while connected).
    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.max_messages || self.bytes >= self.max_bytes
    }

    /// Messages dropped since creation.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// Queues `msg`; returns its id and what else happened.
    pub fn push(&mut self, msg: Message) -> (u64, PushOutcome) {
        self.push_in_lane(msg, false)
    }

    /// Queues `msg` ahead of every unsent ordinary message (behind earlier priority ones).
    pub fn push_priority(&mut self, msg: Message) -> (u64, PushOutcome) {
        self.push_in_lane(msg, true)
    }

    /// Whether `id` is a held message of the priority lane.
    pub fn is_priority(&self, id: u64) -> bool {
        self.entries.get(&id).is_some_and(|e| e.priority)
    }

    fn push_in_lane(&mut self, msg: Message, priority: bool) -> (u64, PushOutcome) {
        let mut outcome = PushOutcome::default();
        if msg.retain
            && let Some(old) = self.unsent_retained.remove(&msg.topic)
        {
            self.remove(old);
            outcome.coalesced = true;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.bytes += msg.size();
        if msg.retain {
            self.unsent_retained.insert(msg.topic.clone(), id);
        }
        if priority {
            self.unsent_priority.insert(id);
        }
        self.entries.insert(
            id,
            Entry {
                msg,
                sent: false,
                priority,
            },
        );
        while self.entries.len() > self.max_messages
            || (self.bytes > self.max_bytes && self.entries.len() > 1)
        {
            let victim = self
                .entries
                .iter()
                .find(|(i, e)| !e.sent && !e.msg.retain && **i != id)
                .or_else(|| self.entries.iter().find(|(i, e)| !e.sent && **i != id))
                .or_else(|| self.entries.iter().find(|(i, _)| **i != id))
                .map(|(i, _)| *i);
            let Some(victim) = victim else { break };
            self.remove(victim);
            outcome.dropped += 1;
            self.dropped_total += 1;
        }
        (id, outcome)
    }

    fn remove(&mut self, id: u64) -> Option<Message> {
        let e = self.entries.remove(&id)?;
        self.bytes -= e.msg.size();
        self.unsent_priority.remove(&id);
        if e.msg.retain && self.unsent_retained.get(&e.msg.topic) == Some(&id) {
            self.unsent_retained.remove(&e.msg.topic);
        }
        Some(e.msg)
    }

    /// The next message to hand to the connection: the oldest unsent priority message, else the
    /// oldest unsent one.
    pub fn next_unsent(&self) -> Option<(u64, &Message)> {
        if let Some(id) = self.unsent_priority.first()
            && let Some(e) = self.entries.get(id)
        {
            return Some((*id, &e.msg));
        }
        self.entries
            .range(self.unsent_from..)
            .find(|(_, e)| !e.sent)
            .map(|(i, e)| (*i, &e.msg))
    }

    /// Records that `id` was handed to the connection (it can no longer be coalesced).
    pub fn mark_sent(&mut self, id: u64) {
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        e.sent = true;
        self.unsent_priority.remove(&id);
        if e.msg.retain && self.unsent_retained.get(&e.msg.topic) == Some(&id) {
            self.unsent_retained.remove(&e.msg.topic);
        }
        // Usually `id` is the first unsent entry (from `next_unsent`): then the scan for the next
        // one can start after it.
        if id >= self.unsent_from
            && self
                .entries
                .range(self.unsent_from..id)
                .all(|(_, e)| e.sent)
        {
            self.unsent_from = id + 1;
        }
    }

    /// Whether `id` is still held (not yet acknowledged nor dropped).
    pub fn contains(&self, id: u64) -> bool {
        self.entries.contains_key(&id)
    }

    /// The broker has `id`: forget it. Returns the message if it was held.
    pub fn ack(&mut self, id: u64) -> Option<Message> {
        self.remove(id)
    }

    /// The connection was lost: everything unacknowledged is unsent again, and of several
    /// retained messages on one topic only the newest stays.
    pub fn requeue_all(&mut self) {
        self.unsent_from = 0;
        let mut newest: HashMap<String, u64> = HashMap::new();
        let mut superseded = Vec::new();
        self.unsent_priority.clear();
        for (id, e) in self.entries.iter_mut() {
            e.sent = false;
            if e.priority {
                self.unsent_priority.insert(*id);
            }
            if e.msg.retain
                && let Some(old) = newest.insert(e.msg.topic.clone(), *id)
            {
                superseded.push(old);
            }
        }
        for id in superseded {
            self.remove(id);
        }
        self.unsent_retained = newest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(topic: &str, payload: &str, retain: bool) -> Message {
        Message {
            topic: topic.into(),
            payload: payload.as_bytes().to_vec(),
            qos: 1,
            retain,
        }
    }

    fn drain(o: &mut Outbox) -> Vec<String> {
        let mut out = Vec::new();
        while let Some((id, msg)) = o.next_unsent() {
            out.push(String::from_utf8(msg.payload.clone()).unwrap());
            o.mark_sent(id);
            o.ack(id);
        }
        out
    }

    #[test]
    fn keeps_order_and_coalesces_retained_per_topic() {
        let mut o = Outbox::new(100, 1 << 20);
        o.push(m("s/a", "a1", true));
        o.push(m("e", "e1", false));
        let (_, out) = o.push(m("s/a", "a2", true));
        assert!(out.coalesced);
        o.push(m("e", "e2", false));
        assert_eq!(drain(&mut o), ["e1", "a2", "e2"]);
        assert!(o.is_empty());
        assert_eq!(o.bytes(), 0);
    }

    #[test]
    fn sent_messages_are_not_coalesced_but_are_replayed_after_requeue() {
        let mut o = Outbox::new(100, 1 << 20);
        let (a1, _) = o.push(m("s/a", "a1", true));
        o.mark_sent(a1);
        let (_, out) = o.push(m("s/a", "a2", true));
        assert!(!out.coalesced);
        let (e1, _) = o.push(m("e", "e1", false));
        o.mark_sent(e1);
        o.requeue_all();
        // a1 is superseded by a2; e1 is replayed.
        assert_eq!(drain(&mut o), ["a2", "e1"]);
    }

    #[test]
    fn bounds_drop_the_oldest_unsent_and_count() {
        let mut o = Outbox::new(3, 1 << 20);
        for i in 0..5 {
            o.push(m("e", &format!("e{i}"), false));
        }
        assert_eq!(o.len(), 3);
        assert_eq!(o.dropped_total(), 2);
        assert_eq!(drain(&mut o), ["e2", "e3", "e4"]);

        let mut o = Outbox::new(100, 10);
        o.push(m("e", "12345", false));
        let (_, out) = o.push(m("e", "67890", false));
        assert_eq!(out.dropped, 1);
        assert_eq!(drain(&mut o), ["67890"]);
    }

    #[test]
    fn a_flood_of_events_drops_events_before_the_newest_retained_state() {
        let mut o = Outbox::new(3, 1 << 20);
        o.push(m("s/a", "a1", true));
        for i in 0..10 {
            o.push(m("e", &format!("e{i}"), false));
        }
        assert_eq!(o.dropped_total(), 8);
        assert_eq!(drain(&mut o), ["a1", "e8", "e9"]);
    }

    #[test]
    fn priority_messages_leave_before_the_backlog_and_survive_a_requeue() {
        let mut o = Outbox::new(100, 1 << 20);
        for i in 0..3 {
            o.push(m(&format!("s/{i}"), &format!("s{i}"), true));
        }
        let (first, _) = o.next_unsent().unwrap();
        o.mark_sent(first);
        o.push_priority(m("status", "online", true));
        let (_, out) = o.push_priority(m("status", "offline", true));
        assert!(out.coalesced, "an unsent status is superseded");
        o.push_priority(m("avail", "offline", true));
        let (id, msg) = o.next_unsent().unwrap();
        assert_eq!(msg.payload, b"offline");
        assert!(o.is_priority(id));
        o.mark_sent(id);
        // Lost connection: the priority lane goes first again, then the backlog in order.
        o.requeue_all();
        assert_eq!(drain(&mut o), ["offline", "offline", "s0", "s1", "s2"]);
    }

    #[test]
    fn a_flood_of_retained_state_keeps_one_message_per_topic() {
        let mut o = Outbox::new(10, 1 << 20);
        o.push(m("e", "event", false));
        for i in 0..1000 {
            o.push(m("s/a", &format!("a{i}"), true));
            o.push(m("s/b", &format!("b{i}"), true));
        }
        assert_eq!(o.dropped_total(), 0);
        assert_eq!(drain(&mut o), ["event", "a999", "b999"]);
    }
}
