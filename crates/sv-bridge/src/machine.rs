//! The bridge's contract as a state machine without IO: the MQTT connection's state, the outbox
//! pump, the programs' sessions, command routing, the device-state cache, meta replies,
//! availability and the instance status.
//!
//! It follows `sv_core::machine::Machine` (quinn-proto's shape): [`Machine::handle`] takes
//! past-tense facts ([`Input`]: a program connected, sent a line or left, the supervisor's view
//! changed, the broker connection is up or down, a publish was acknowledged, a message arrived),
//! [`Machine::handle_timeout`] is called at [`Machine::poll_timeout`], and the outputs are
//! drained with [`Machine::poll_transmit`] (towards the broker: connect, subscribe, publish,
//! disconnect), [`Machine::poll_deliver`] (lines towards a program) and
//! [`Machine::poll_ready`] (readiness reports for the supervisor). Time enters as values: the
//! monotonic `now` for deadlines and the wall-clock time for timestamps and command staleness;
//! the reconnect jitter comes from a seeded RNG. No tokio, no sockets, no rumqttc: the driver
//! (`engine.rs`) owns those, and tests drive this machine with a fake clock and no broker.
//!
//! Invariants kept here:
//! - `online` is published only while connected and every critical program (other than the
//!   bridge itself) is healthy, and again after every reconnect (platform defects 1 and 2);
//! - every message goes through the [`Outbox`] and leaves it only when the broker acknowledged
//!   it (a QoS 0 one: when it was written), so a reconnect loses nothing (defect 3);
//! - each connection is used once: on any error the driver drops it and the machine asks for a
//!   new one after its own jittered backoff, because rumqttc reconnects immediately and forgets
//!   its queue;
//! - at most [`WINDOW`] (+ [`PRIORITY_RESERVE`] for the priority lane) publishes and
//!   [`SUB_WINDOW`] subscriptions are handed to the connection unacknowledged, so the driver's
//!   request channel towards rumqttc never fills and packet ids never collide;
//! - nothing received from a program or the broker can panic the machine: every input is parsed
//!   into a typed value or answered with an error;
//! - a device named in a live `hello` belongs to that program: device messages for it from
//!   another program are refused (`device_claimed`) unless that program's `bridge_publish`
//!   covers the device's topics;
//! - lines queued towards one program and not yet written are bounded in number
//!   ([`WRITE_QUEUE`]) and in bytes ([`WRITE_QUEUE_BYTES`]), so a program that does not read
//!   costs bounded memory and loses only its own lines.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde_json::{Map, Value, json};
use sv_core::health::BridgeStats;

use crate::codec::{CmdStatus, DeviceSet, ErrorCode, Op, Reply, Request, encode_reply};
use crate::merge;
use crate::outbox::{Message, Outbox};
use crate::settings::Settings;
use crate::topics::{Inbound, Topics, matches, valid_filter, valid_segment, valid_topic};
use crate::{ReadyReport, SupervisorView, time};

mod availability;
mod ha;
#[cfg(test)]
mod tests;
use availability::Availability;

/// The bridge's own program name in the supervisor's table.
const SELF_NAME: &str = "bridge";
/// Publishes handed to the connection before their acknowledgement (QoS 0: before they were
/// written); below rumqttc's inflight limit (100) so its packet ids never collide.
pub(crate) const WINDOW: usize = 32;
/// Extra in-flight slots only the priority lane (status, availability) may use, so a full
/// window of unacknowledged backlog cannot hold the final `offline` back. `WINDOW` plus this
/// stays below rumqttc's inflight limit.
pub(crate) const PRIORITY_RESERVE: usize = 16;
/// Subscriptions handed to the connection before their SUBACK; past it a program's
/// `subscribe` is refused with `overloaded`.
pub(crate) const SUB_WINDOW: usize = 64;
/// Lines queued towards one program (not yet written) before further ones are refused.
pub(crate) const WRITE_QUEUE: usize = 256;
/// Bytes queued towards one program before further lines are refused (one line of any length
/// is always accepted into an empty queue). Without it, 256 inbound messages of up to the
/// maximum packet size could pin hundreds of MB for one program that does not read.
pub(crate) const WRITE_QUEUE_BYTES: usize = 1 << 20;
/// A connection closed within this after CONNACK counts as "dropped right after connecting".
const QUICK_DROP: Duration = Duration::from_secs(3);
/// Consecutive quick drops before the "same client id" diagnosis is logged.
const QUICK_DROPS_BEFORE_DIAGNOSIS: u32 = 3;
/// A connection that lived this long resets the reconnect backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Bound on waiting for the PUBACK of the final `offline`. Without it the connection is closed
/// without DISCONNECT, so that the broker publishes the Last Will instead.
const STOP_ACK_WAIT: Duration = Duration::from_millis(2000);
/// Bound on waiting for the broker to close the connection after a clean DISCONNECT.
const STOP_CLOSE_WAIT: Duration = Duration::from_millis(500);
/// The longest the bridge takes from its stop signal to its exit; it must stay below the
/// bridge program's `stopwaitsecs` (3 s, [`crate::program::add_bridge_program`]), or
/// the supervisor's SIGKILL would decide the outcome.
pub(crate) const STOP_BUDGET: Duration = STOP_ACK_WAIT.saturating_add(STOP_CLOSE_WAIT);
/// Longest pause between attempts while the broker cannot be reached. An attempt against a
/// broker that is down is refused at once and costs it nothing, and the instance must be back
/// `online` within about a second of the broker's return, so waiting longer only delays that.
const UNREACHABLE_CAP: Duration = Duration::from_secs(1);
/// Longest pause after the broker refused the CONNECT or dropped us right after accepting it
/// (bad credentials, a client-id fight): retrying fast would only repeat the fight.
const REFUSED_CAP: Duration = Duration::from_secs(30);

/// A fact the machine is told about.
#[derive(Debug)]
pub(crate) enum Input {
    /// A program connected; `pid` from SO_PEERCRED and its session id, when known.
    ProgramConnected {
        conn: u64,
        pid: Option<i32>,
        sid: Option<i32>,
    },
    /// A program's line, decoded.
    Line { conn: u64, req: Request },
    /// A program's line that is not a request, answered in order with the others.
    Refused { conn: u64, reply: Reply },
    /// Lines towards a program left its write queue (they were written or the program is gone).
    Written {
        conn: u64,
        lines: usize,
        bytes: usize,
    },
    /// A program's connection ended.
    ProgramLeft { conn: u64 },
    /// The supervisor's program table changed.
    View(SupervisorView),
    /// The broker accepted the CONNECT (CONNACK).
    BrokerConnected,
    /// The connection asked for by the last [`Transmit::Connect`] ended (or never came up):
    /// the error, and whether the broker refused the CONNECT (as opposed to being unreachable
    /// or dropping the connection).
    BrokerDown { error: String, refused: bool },
    /// The broker acknowledged the publish with this id (PUBACK, PUBCOMP), or a QoS 0 one was
    /// written to the connection.
    Acked(u64),
    /// The broker acknowledged a subscription (SUBACK).
    SubAcked,
    /// A message from the broker.
    Inbound {
        topic: String,
        payload: Vec<u8>,
        retain: bool,
    },
    /// The bridge is to stop: the final `offline`, then a disconnect ([`Machine::is_stopped`]).
    Stop,
}

/// The queue of the outbox a message was pushed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// In order with everything else.
    Normal,
    /// Ahead of every unsent ordinary message (status, availability).
    Priority,
}

/// Something for the driver to do towards the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transmit {
    /// Drop any connection and open a new one (clean session, the Last Will set).
    Connect,
    /// Subscribe to these filters at QoS 1; answered by [`Input::SubAcked`].
    Subscribe(Vec<String>),
    /// Publish; answered by [`Input::Acked`] with `id`.
    Publish { id: u64, msg: Message, lane: Lane },
    /// Send DISCONNECT (the broker then discards the Last Will).
    Disconnect,
    /// Close the connection without DISCONNECT, so that the broker publishes the Last Will.
    Abort,
}

#[derive(Debug)]
struct Conn {
    /// Lines and bytes delivered and not yet reported [`Input::Written`].
    queued_lines: usize,
    queued_bytes: usize,
    /// Lines dropped since the program last accepted one (logged once per episode).
    dropping: u64,
    pid: Option<i32>,
    sid: Option<i32>,
    program: Option<String>,
    subs: Vec<String>,
}

#[derive(Debug)]
struct Pending {
    deadline: Instant,
    /// The command's `id` as sent (string or number), echoed as `cmd_id`; none = no response.
    mqtt_id: Option<Value>,
    conn: u64,
}

/// Where a stop is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopping {
    /// The final `offline` (outbox id) is on its way; past the deadline the connection is
    /// closed without DISCONNECT.
    AwaitAck { id: u64, deadline: Instant },
    /// DISCONNECT sent; waiting (bounded) for the connection to close.
    Closing { deadline: Instant },
    /// Nothing left to do.
    Done,
}

/// Reconnect backoff: 250 ms doubling to `cap`, ±20 % jitter so a fleet restarting together
/// does not reconnect in lockstep.
fn backoff(attempt: u32, cap: Duration, rng: &mut fastrand::Rng) -> Duration {
    let cap = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    let base = 250u64.saturating_mul(1u64 << attempt.min(7)).min(cap);
    let jitter = (base as f64 * 0.2 * (rng.f64() * 2.0 - 1.0)) as i64;
    Duration::from_millis((base as i64 + jitter).max(50) as u64)
}

/// Identifies the supervised program a peer process belongs to: by its pid, or by its session
/// id (every program is spawned as a session leader, so a program's descendants share its sid).
fn identify(pid: i32, sid: Option<i32>, view: &SupervisorView) -> Option<String> {
    let by = |id: i32| {
        view.programs
            .iter()
            .find(|p| p.pid == Some(id))
            .map(|p| p.name.clone())
    };
    by(pid).or_else(|| by(sid?))
}

/// The bridge's state; see the module documentation.
pub(crate) struct Machine {
    s: Arc<Settings>,
    topics: Topics,
    max_packet: usize,
    outbox: Outbox,
    drop_episode: bool,
    counters: BridgeStats,
    /// The time of the input being handled, monotonic and wall-clock.
    now: Instant,
    wall: Timestamp,
    rng: fastrand::Rng,
    // Connection.
    connected: bool,
    /// Whether a connection was asked for and has not ended.
    connecting: bool,
    connected_at: Option<Instant>,
    attempt: u32,
    quick_drops: u32,
    refused: bool,
    reconnect_at: Option<Instant>,
    /// Publishes handed to the connection and not yet acknowledged.
    inflight: usize,
    /// Subscriptions handed to the connection and not yet acknowledged.
    subs_inflight: usize,
    status_sent: Option<bool>,
    stopping: Option<Stopping>,
    transmits: VecDeque<Transmit>,
    deliveries: VecDeque<(u64, String)>,
    ready: VecDeque<ReadyReport>,
    /// Readiness reports the supervisor can take now ([`Machine::set_ready_room`]).
    ready_room: usize,
    // Programs.
    conns: HashMap<u64, Conn>,
    handlers: HashMap<String, u64>,
    all_handler: Option<u64>,
    meta_handler: Option<u64>,
    pending: HashMap<(String, String), Pending>,
    cmd_seq: u64,
    states: HashMap<String, Map<String, Value>>,
    availability: Availability,
    ha: Option<ha::Ha>,
    started: Instant,
    view: SupervisorView,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("connected", &self.connected)
            .field("outbox", &self.outbox.len())
            .finish_non_exhaustive()
    }
}

impl Machine {
    /// A machine started at `now` (`wall` on the wall clock) with the supervisor's `view`; its
    /// first outputs are the retained availability of the instance file's devices (overwriting
    /// an `online` a crashed bridge left retained) and [`Transmit::Connect`].
    pub(crate) fn new(
        s: Arc<Settings>,
        view: SupervisorView,
        now: Instant,
        wall: Timestamp,
        seed: u64,
    ) -> Machine {
        let topics = Topics::new(&s.base_topic, &s.instance);
        let mut m = Machine {
            outbox: Outbox::new(s.outbox_max_messages, s.outbox_max_bytes),
            max_packet: max_packet(&s),
            s,
            topics,
            drop_episode: false,
            counters: BridgeStats::default(),
            now,
            wall,
            rng: fastrand::Rng::with_seed(seed),
            connected: false,
            connecting: false,
            connected_at: None,
            attempt: 0,
            quick_drops: 0,
            refused: false,
            reconnect_at: None,
            inflight: 0,
            subs_inflight: 0,
            status_sent: None,
            stopping: None,
            transmits: VecDeque::new(),
            deliveries: VecDeque::new(),
            ready: VecDeque::new(),
            ready_room: usize::MAX,
            conns: HashMap::new(),
            handlers: HashMap::new(),
            all_handler: None,
            meta_handler: None,
            pending: HashMap::new(),
            cmd_seq: 0,
            states: HashMap::new(),
            availability: Availability::default(),
            ha: None,
            started: now,
            view,
        };
        m.ha = m.ha_new();
        m.refresh_availability();
        m.connect();
        m
    }

    /// Handles one fact observed at `now` (`wall` on the wall clock).
    pub(crate) fn handle(&mut self, now: Instant, wall: Timestamp, input: Input) {
        self.set_time(now, wall);
        match input {
            Input::ProgramConnected { conn, pid, sid } => self.on_opened(conn, pid, sid),
            Input::Line { conn, req } => self.on_line(conn, req),
            Input::Refused { conn, reply } => {
                self.counters.requests_total += 1;
                self.counters.refused_total += 1;
                self.send_to(conn, &reply);
            }
            Input::Written { conn, lines, bytes } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.queued_lines = c.queued_lines.saturating_sub(lines);
                    c.queued_bytes = c.queued_bytes.saturating_sub(bytes);
                }
            }
            Input::ProgramLeft { conn } => self.on_closed(conn),
            Input::View(view) => self.on_view(view),
            Input::BrokerConnected => self.on_connected(),
            Input::BrokerDown { error, refused } => self.on_down(error, refused),
            Input::Acked(id) => self.on_ack(id),
            Input::SubAcked => self.subs_inflight = self.subs_inflight.saturating_sub(1),
            Input::Inbound {
                topic,
                payload,
                retain,
            } => self.on_inbound(&topic, &payload, retain),
            Input::Stop => self.on_stop(),
        }
        self.advance_stop();
    }

    /// Handles the deadlines due at `now`: command timeouts, the reconnect, the stop's bounds.
    pub(crate) fn handle_timeout(&mut self, now: Instant, wall: Timestamp) {
        self.set_time(now, wall);
        if self.stopping.is_none() && self.reconnect_at.is_some_and(|t| t <= now) {
            self.connect();
        }
        // While stopping, only the stop's bounds count: no command is failed on the way out.
        let expired: Vec<(String, String)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now && self.stopping.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            if let Some(p) = self.pending.remove(&key) {
                let program = self.program_name(p.conn);
                tracing::warn!(device = %key.0, cmd_id = %key.1, program = %program, "command timed out");
                let reason = format!("no result from program {program} within the command timeout");
                self.fail_command(&key.0, p.mqtt_id.as_ref(), "timeout", &reason);
            }
        }
        match self.stopping {
            Some(Stopping::AwaitAck { deadline, .. }) if deadline <= now => {
                tracing::warn!(
                    "no acknowledgement for the final offline status; closing the connection without DISCONNECT so that the broker publishes the Last Will"
                );
                self.transmits.push_back(Transmit::Abort);
                self.stopped();
            }
            Some(Stopping::Closing { deadline }) if deadline <= now => self.stopped(),
            _ => {}
        }
    }

    /// When [`Machine::handle_timeout`] is due next.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let stop = match self.stopping {
            Some(Stopping::AwaitAck { deadline, .. } | Stopping::Closing { deadline }) => {
                Some(deadline)
            }
            _ => None,
        };
        if self.stopping.is_some() {
            return stop;
        }
        self.pending
            .values()
            .map(|p| p.deadline)
            .chain(self.reconnect_at)
            .min()
    }

    /// The next thing to do towards the broker.
    pub(crate) fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next line for a program connection (newline included).
    pub(crate) fn poll_deliver(&mut self) -> Option<(u64, String)> {
        self.deliveries.pop_front()
    }

    /// The next `ready` of an identified program, for the supervisor.
    pub(crate) fn poll_ready(&mut self) -> Option<ReadyReport> {
        self.ready.pop_front()
    }

    /// How many readiness reports the supervisor can take now; a `ready` beyond it is refused
    /// with `unavailable` (the program may retry) rather than lost.
    pub(crate) fn set_ready_room(&mut self, room: usize) {
        self.ready_room = room;
    }

    /// Whether program lines should be read now: not while connected with a full outbox, so
    /// that producers wait for the broker instead of pushing the oldest messages out.
    pub(crate) fn accepting(&self) -> bool {
        !(self.connected && self.outbox.is_full())
    }

    /// Whether a stop has finished: the driver may exit.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopping == Some(Stopping::Done)
    }

    fn set_time(&mut self, now: Instant, wall: Timestamp) {
        // A driver's clocks never go back; a test's might, and must not panic the machine.
        self.now = self.now.max(now);
        self.wall = wall;
    }

    fn timestamp(&self) -> String {
        time::format(self.wall, &self.s.tz)
    }

    // ---- MQTT connection -------------------------------------------------------------------

    fn connect(&mut self) {
        self.reconnect_at = None;
        self.connected = false;
        self.connecting = true;
        self.transmits.push_back(Transmit::Connect);
        tracing::debug!("connecting to broker");
    }

    fn on_connected(&mut self) {
        if !self.connecting || self.connected {
            return;
        }
        self.connected = true;
        self.refused = false;
        self.counters.connects_total += 1;
        self.connected_at = Some(self.now);
        tracing::info!(host = %self.s.host, port = self.s.port, "connected to broker");
        let mut filters: Vec<String> = self.topics.inbound_filters().to_vec();
        filters.extend(self.ha_filters());
        for c in self.conns.values() {
            for f in &c.subs {
                if !filters.contains(f) {
                    filters.push(f.clone());
                }
            }
        }
        self.subs_inflight += 1;
        self.transmits.push_back(Transmit::Subscribe(filters));
        self.status_sent = None;
        self.update_status();
        self.ha_on_connect();
        self.pump();
    }

    fn on_down(&mut self, err: String, refused: bool) {
        if !self.connecting {
            return;
        }
        let was_connected = self.connected;
        self.counters.disconnects_total += 1;
        self.refused = refused;
        self.connected = false;
        self.connecting = false;
        self.inflight = 0;
        self.subs_inflight = 0;
        self.outbox.requeue_all();
        self.status_sent = None;
        // Publishes and subscriptions not yet taken by the old connection are void.
        self.transmits
            .retain(|t| !matches!(t, Transmit::Publish { .. } | Transmit::Subscribe(_)));
        if self.stopping.is_some() {
            return;
        }
        let lived = self.connected_at.take().map(|t| self.now.duration_since(t));
        match lived {
            Some(l) if l < QUICK_DROP => {
                self.quick_drops += 1;
                if self.quick_drops >= QUICK_DROPS_BEFORE_DIAGNOSIS {
                    tracing::error!(
                        client_id = %self.s.client_id,
                        drops = self.quick_drops,
                        "the broker keeps closing the connection right after accepting it; another client probably uses the same client id"
                    );
                }
            }
            Some(l) => {
                self.quick_drops = 0;
                if l >= STABLE_AFTER {
                    self.attempt = 0;
                }
            }
            None => {}
        }
        // One quick drop is also what a broker restarting right after our connect looks like;
        // only the repeated pattern of a client-id fight earns the long pause.
        let cap = if self.refused || self.quick_drops >= QUICK_DROPS_BEFORE_DIAGNOSIS {
            REFUSED_CAP
        } else {
            UNREACHABLE_CAP
        };
        let delay = backoff(self.attempt, cap, &mut self.rng);
        let attempt = self.attempt;
        self.attempt = self.attempt.saturating_add(1);
        if was_connected {
            tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, queued = self.outbox.len(), "disconnected from broker");
        } else if attempt < 2 || attempt.is_power_of_two() {
            // Retries are frequent while the broker is down: log the first ones, then fewer.
            tracing::warn!(error = %err, attempts = attempt + 1, retry_in_ms = delay.as_millis() as u64, queued = self.outbox.len(), "cannot connect to broker");
        } else {
            tracing::debug!(error = %err, attempts = attempt + 1, retry_in_ms = delay.as_millis() as u64, "cannot connect to broker");
        }
        self.reconnect_at = Some(self.now + delay);
    }

    fn on_ack(&mut self, id: u64) {
        if !self.connected {
            return;
        }
        if self.outbox.ack(id).is_some() {
            self.counters.published_total += 1;
        }
        self.inflight = self.inflight.saturating_sub(1);
        if self.drop_episode && self.outbox.is_empty() {
            self.drop_episode = false;
            tracing::info!(
                dropped_total = self.outbox.dropped_total(),
                "outbox drained"
            );
        }
        self.pump();
    }

    /// Hands unsent outbox messages to the connection, up to the window.
    fn pump(&mut self) {
        if !self.connected {
            return;
        }
        while let Some((id, msg)) = self.outbox.next_unsent() {
            let lane = if self.outbox.is_priority(id) {
                Lane::Priority
            } else {
                Lane::Normal
            };
            let window = match lane {
                Lane::Priority => WINDOW + PRIORITY_RESERVE,
                Lane::Normal => WINDOW,
            };
            if self.inflight >= window {
                break;
            }
            let msg = msg.clone();
            self.outbox.mark_sent(id);
            self.inflight += 1;
            self.transmits
                .push_back(Transmit::Publish { id, msg, lane });
        }
    }

    /// Queues one message. Topic and size were validated by the caller or are ours.
    fn publish(&mut self, topic: String, payload: Vec<u8>, qos: u8, retain: bool) -> bool {
        self.publish_in_lane(topic, payload, qos, retain, false)
    }

    /// Queues a retained QoS 1 status-like message (instance status, device availability) in
    /// the outbox's priority lane, ahead of any backlog.
    fn publish_priority(&mut self, topic: String, payload: &str) -> bool {
        self.publish_in_lane(topic, payload.as_bytes().to_vec(), 1, true, true)
    }

    fn publish_in_lane(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        qos: u8,
        retain: bool,
        priority: bool,
    ) -> bool {
        if !valid_topic(&topic) || topic.len() + payload.len() > self.max_packet {
            tracing::warn!(topic = %topic, bytes = payload.len(), "message not publishable (invalid topic or too large)");
            return false;
        }
        let msg = Message {
            topic,
            payload,
            qos,
            retain,
        };
        let (_, outcome) = if priority {
            self.outbox.push_priority(msg)
        } else {
            self.outbox.push(msg)
        };
        if outcome.dropped > 0 && !self.drop_episode {
            self.drop_episode = true;
            tracing::warn!(
                max_messages = self.s.outbox_max_messages,
                max_bytes = self.s.outbox_max_bytes,
                "outbox full; dropping the oldest messages until the broker catches up"
            );
        }
        self.pump();
        true
    }

    fn publish_json(&mut self, topic: String, v: &Value, qos: u8, retain: bool) -> bool {
        // Serialising a `Value` cannot fail (its map keys are strings).
        let payload = serde_json::to_vec(v).unwrap_or_default();
        self.publish(topic, payload, qos, retain)
    }

    fn desired_status(&self) -> bool {
        self.connected
            && self
                .view
                .programs
                .iter()
                .filter(|p| p.critical && p.name != SELF_NAME)
                .all(|p| p.healthy)
    }

    fn update_status(&mut self) {
        if !self.connected || self.stopping.is_some() {
            return;
        }
        let want = self.desired_status();
        if self.status_sent != Some(want) {
            self.status_sent = Some(want);
            let payload = if want { "online" } else { "offline" };
            tracing::info!(status = payload, "instance status");
            let topic = self.topics.status();
            self.publish_priority(topic, payload);
        }
    }

    /// Publishes the final `offline` ahead of any backlog and waits (bounded) for its PUBACK.
    /// Acknowledged: a clean DISCONNECT. Not acknowledged: the connection is closed without
    /// DISCONNECT, because a clean DISCONNECT makes the broker discard the Last Will and the
    /// retained status would stay `online`; an unclean close makes it publish the Will
    /// (`offline`). Takes at most [`STOP_BUDGET`].
    fn on_stop(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        self.reconnect_at = None;
        if !self.connected {
            if self.connecting {
                // A connection on its way would come up with nothing to say: close it.
                self.transmits.push_back(Transmit::Abort);
            }
            self.stopped();
            return;
        }
        // Devices first (same lane, so in this order): Home Assistant sees them go before the
        // instance does.
        self.devices_offline();
        let (id, _) = self.outbox.push_priority(Message {
            topic: self.topics.status(),
            payload: b"offline".to_vec(),
            qos: 1,
            retain: true,
        });
        self.status_sent = Some(false);
        self.stopping = Some(Stopping::AwaitAck {
            id,
            deadline: self.now + STOP_ACK_WAIT,
        });
        self.pump();
    }

    /// Moves a stop on after an input: the final `offline` acknowledged (disconnect cleanly),
    /// or the connection gone (nothing left to wait for).
    fn advance_stop(&mut self) {
        match self.stopping {
            Some(Stopping::AwaitAck { id, .. }) if !self.outbox.contains(id) => {
                self.transmits.push_back(Transmit::Disconnect);
                self.stopping = Some(Stopping::Closing {
                    deadline: self.now + STOP_CLOSE_WAIT,
                });
            }
            Some(Stopping::AwaitAck { .. }) if !self.connected => {
                tracing::warn!(
                    "connection lost before the final offline status was acknowledged; the broker publishes the Last Will"
                );
                self.transmits.push_back(Transmit::Abort);
                self.stopped();
            }
            Some(Stopping::Closing { .. }) if !self.connecting => self.stopped(),
            _ => {}
        }
    }

    fn stopped(&mut self) {
        self.stopping = Some(Stopping::Done);
        self.connected = false;
        self.connecting = false;
        if !self.outbox.is_empty() {
            tracing::warn!(
                unsent = self.outbox.len(),
                "stopping with unacknowledged messages"
            );
        }
    }

    // ---- supervisor ------------------------------------------------------------------------

    fn on_view(&mut self, view: SupervisorView) {
        self.view = view;
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.program.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.resolve_identity(id);
        }
        self.update_status();
        self.refresh_availability();
    }

    fn resolve_identity(&mut self, conn: u64) {
        let view = &self.view;
        if let Some(c) = self.conns.get_mut(&conn)
            && c.program.is_none()
            && let Some(pid) = c.pid
        {
            c.program = identify(pid, c.sid, view);
            if let Some(p) = &c.program {
                tracing::debug!(conn, program = %p, pid, "program identified");
            }
        }
    }

    fn program_name(&self, conn: u64) -> String {
        self.conns
            .get(&conn)
            .and_then(|c| c.program.clone())
            .unwrap_or_else(|| "unknown".to_string())
    }

    // ---- programs --------------------------------------------------------------------------

    /// Queues a line for `conn` unless its write queue is at a bound; false when the line was
    /// dropped (or the connection is gone).
    fn send_to(&mut self, conn: u64, reply: &Reply) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        let line = encode_reply(reply);
        let len = line.len();
        // One line always fits an empty queue, however long, so no message is undeliverable.
        let over = c.queued_lines >= WRITE_QUEUE
            || (c.queued_bytes > 0 && c.queued_bytes + len > WRITE_QUEUE_BYTES);
        let dropped_before = c.dropping;
        // The program's name is looked up only when there is something to log: this runs for
        // every reply.
        if !over {
            c.queued_lines += 1;
            c.queued_bytes += len;
            c.dropping = 0;
            self.deliveries.push_back((conn, line));
            if dropped_before > 0 {
                let program = self.program_name(conn);
                tracing::info!(conn, program = %program, dropped = dropped_before, "program reads the bridge socket again");
            }
            true
        } else {
            c.dropping += 1;
            self.counters.client_drops_total += 1;
            // Once per episode: a program that stopped reading would otherwise make the bridge
            // log every line it cannot deliver.
            if dropped_before == 0 {
                let program = self.program_name(conn);
                tracing::warn!(conn, program = %program, "program is not reading the bridge socket; dropping messages for it");
            }
            false
        }
    }

    /// The figures of the `stats` reply.
    pub(crate) fn stats(&self) -> BridgeStats {
        BridgeStats {
            connected: self.connected,
            online: self.connected && self.status_sent == Some(true),
            dropped_total: self.outbox.dropped_total(),
            outbox_messages: self.outbox.len() as u64,
            outbox_bytes: self.outbox.bytes() as u64,
            clients: self.conns.len() as u64,
            ..self.counters.clone()
        }
    }

    /// Refuses a device message from a program other than the one whose live `hello` claimed
    /// the device, unless the sender's `bridge_publish` covers the device's `state` topic.
    /// Devices nobody named (a catch-all `hello` names none) are open to every program.
    fn check_owner(&self, conn: u64, device: &str) -> Result<(), (ErrorCode, String)> {
        let Some(&owner) = self.handlers.get(device) else {
            return Ok(());
        };
        if owner == conn {
            return Ok(());
        }
        let me = self.program_name(conn);
        let them = self.program_name(owner);
        if me == them {
            return Ok(());
        }
        let topic = self.topics.device(device, "state");
        if self
            .s
            .program_publish
            .get(&me)
            .is_some_and(|fs| fs.iter().any(|f| matches(f, &topic)))
        {
            return Ok(());
        }
        tracing::warn!(device, program = %me, owner = %them, "device message for another program's device refused");
        Err((
            ErrorCode::DeviceClaimed,
            format!(
                "device {device:?} is claimed by program {them}; program {me} may not speak for it"
            ),
        ))
    }

    fn on_opened(&mut self, conn: u64, pid: Option<i32>, sid: Option<i32>) {
        self.conns.insert(
            conn,
            Conn {
                queued_lines: 0,
                queued_bytes: 0,
                dropping: 0,
                pid,
                sid,
                program: None,
                subs: Vec::new(),
            },
        );
        self.resolve_identity(conn);
        let program = self.program_name(conn);
        tracing::debug!(conn, pid, program = %program, "program connected");
    }

    fn on_line(&mut self, conn: u64, req: Request) {
        if self.conns.get(&conn).is_some_and(|c| c.program.is_none()) {
            self.resolve_identity(conn);
        }
        self.counters.requests_total += 1;
        let id = req.id.clone();
        if matches!(req.op, Op::Stats) {
            let stats = self.stats();
            self.send_to(conn, &Reply::Stats { id, stats });
            return;
        }
        let reply = match self.on_request(conn, req.op) {
            Ok(()) => Reply::Ok { id },
            Err((code, message)) => {
                self.counters.refused_total += 1;
                let program = self.program_name(conn);
                tracing::debug!(conn, program = %program, code = code.as_str(), message = %message, "request refused");
                Reply::error(id, code, message)
            }
        };
        self.send_to(conn, &reply);
    }

    fn on_closed(&mut self, conn: u64) {
        let program = self.program_name(conn);
        tracing::debug!(conn, program = %program, "program disconnected");
        let served = self.served_by(conn);
        self.conns.remove(&conn);
        self.handlers.retain(|_, c| *c != conn);
        if self.all_handler == Some(conn) {
            self.all_handler = None;
        }
        if self.meta_handler == Some(conn) {
            self.meta_handler = None;
        }
        self.availability_after_close(&served);
        let orphaned: Vec<(String, String)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.conn == conn)
            .map(|(k, _)| k.clone())
            .collect();
        for key in orphaned {
            if let Some(p) = self.pending.remove(&key) {
                let reason = format!("program {program} disconnected before answering");
                self.fail_command(&key.0, p.mqtt_id.as_ref(), "handler_gone", &reason);
            }
        }
    }

    fn on_request(&mut self, conn: u64, op: Op) -> Result<(), (ErrorCode, String)> {
        let qos = self.s.qos;
        let now = self.timestamp();
        match op {
            Op::Ping | Op::Stats => Ok(()),
            Op::Hello { devices, meta } => {
                match devices {
                    None | Some(DeviceSet::All(_)) => self.all_handler = Some(conn),
                    Some(DeviceSet::Some(list)) => {
                        // All or nothing: a refused claim must not leave half of it in place.
                        for d in &list {
                            self.check_owner(conn, d)?;
                        }
                        self.check_new_claims(&list)?;
                        for d in list {
                            if let Some(old) = self.handlers.insert(d.clone(), conn)
                                && old != conn
                            {
                                tracing::warn!(device = %d, "device claimed by another program; the newest claim wins");
                            }
                        }
                    }
                }
                if meta {
                    self.meta_handler = Some(conn);
                }
                self.refresh_availability();
                Ok(())
            }
            Op::State {
                device_id,
                state,
                replace,
            } => {
                self.check_owner(conn, &device_id)?;
                // The retained envelope is always the full merged state, so a partial answer
                // to a filtered `get` never shrinks it (platform defect 7).
                // The message's values move into the cached state; only per-property topics,
                // published after the merge, need a copy of them.
                let props = self.s.property_topics.then(|| state.clone());
                let online = state.get("online").and_then(Value::as_bool);
                let cached = self.states.remove(&device_id);
                let existed = cached.is_some();
                let mut full = match cached {
                    Some(full) => full,
                    None if self.states.len() >= self.s.max_devices => {
                        return Err(self.too_many_devices(1));
                    }
                    None => Map::new(),
                };
                // Keys a replacing state dropped: their retained property topics would
                // otherwise keep showing the old values.
                let dropped: Vec<String> = if replace && self.s.property_topics {
                    full.keys()
                        .filter(|k| !state.contains_key(*k))
                        .cloned()
                        .collect()
                } else {
                    Vec::new()
                };
                let undo = merge::merge(&mut full, state, replace);
                // Serialised straight from the cached state: the hot path of a busy device
                // makes no copy of it.
                let envelope = serde_json::to_vec(&StateEnvelope {
                    device_id: &device_id,
                    state: &full,
                    timestamp: &now,
                });
                let topic = self.topics.device(&device_id, "state");
                if !envelope.is_ok_and(|e| self.publish(topic, e, qos, self.s.retain)) {
                    // Not published, so not kept: the next update must not carry these values.
                    undo.revert(&mut full);
                    if existed {
                        self.states.insert(device_id, full);
                    }
                    return Err((ErrorCode::BadRequest, "state too large to publish".into()));
                }
                self.states.insert(device_id.clone(), full);
                for (k, v) in props.iter().flatten() {
                    if valid_segment(k) {
                        let t = self.topics.device(&device_id, &format!("state/{k}"));
                        self.publish_json(t, v, qos, self.s.retain);
                    }
                }
                for k in dropped.iter().filter(|k| valid_segment(k)) {
                    let t = self.topics.device(&device_id, &format!("state/{k}"));
                    self.publish(t, Vec::new(), qos, true);
                }
                if online.is_some_and(|o| self.availability.report(&device_id, o))
                    || !self.availability.is_known(&device_id)
                {
                    self.refresh_device(&device_id);
                }
                Ok(())
            }
            Op::Event {
                device_id,
                event,
                data,
            } => {
                self.check_owner(conn, &device_id)?;
                let t = self.topics.device(&device_id, "events");
                let v = json!({"timestamp": now, "event": event, "data": data});
                if !self.publish_json(t, &v, qos, false) {
                    return Err((ErrorCode::BadRequest, "event too large to publish".into()));
                }
                let g = json!({
                    "source": format!("{}_{}", self.s.instance, device_id),
                    "event": event,
                    "data": data,
                    "timestamp": now,
                });
                let t = self.topics.global_events();
                self.publish_json(t, &g, qos, false);
                Ok(())
            }
            Op::Error {
                device_id,
                error_code,
                message,
                severity,
                retry_info,
                mut extra,
            } => {
                self.check_owner(conn, &device_id)?;
                let t = self.topics.device(&device_id, "error");
                let mut v = Map::new();
                v.insert("timestamp".into(), json!(now));
                v.insert("error_code".into(), json!(error_code));
                v.insert("message".into(), json!(message));
                v.insert("severity".into(), json!(severity));
                // Other fields join the object; `retry_info` is merged over it, as the
                // platform's `publish_error` does with `payload.update(retry_info)`.
                extra.remove("id");
                for (k, x) in extra {
                    v.entry(k).or_insert(x);
                }
                v.extend(retry_info.unwrap_or_default());
                self.checked(t, &Value::Object(v), qos, false)
            }
            Op::Discovered { devices } => {
                let t = format!("{}/discovered", self.topics.root());
                let v = json!({"timestamp": now, "devices": devices});
                self.checked(t, &v, qos, false)
            }
            Op::HaDiscovery {
                device_id,
                component,
                entity,
                config,
            } => {
                self.check_owner(conn, &device_id)?;
                self.ha_program_config(&device_id, &component, entity.as_deref(), config)
            }
            Op::Telemetry { device_id, metrics } => {
                self.check_owner(conn, &device_id)?;
                let t = self.topics.device(&device_id, "telemetry");
                let v = json!({"timestamp": now, "metrics": metrics});
                self.checked(t, &v, qos, false)
            }
            Op::DevicesList { devices } => {
                let t = self.topics.meta("devices_list");
                self.checked(t, &Value::Array(devices), 1, true)
            }
            Op::CmdResult {
                device_id,
                cmd_id,
                status,
                result,
                error,
            } => {
                let key = match device_id {
                    Some(d) => Some((d, cmd_id.clone())).filter(|k| self.pending.contains_key(k)),
                    None => self.pending.keys().find(|(_, c)| *c == cmd_id).cloned(),
                };
                if let Some((d, _)) = &key {
                    self.check_owner(conn, d)?;
                }
                let Some((key, p)) = key.and_then(|k| self.pending.remove_entry(&k)) else {
                    return Err((
                        ErrorCode::UnknownCommand,
                        format!("no pending command {cmd_id:?} (already answered or timed out)"),
                    ));
                };
                self.counters.command_results_total += 1;
                if let Some(mqtt_id) = p.mqtt_id {
                    let mut v = json!({
                        "cmd_id": mqtt_id,
                        "status": match status { CmdStatus::Success => "success", CmdStatus::Error => "error" },
                        "timestamp": now,
                    });
                    if let Some(r) = result {
                        v["result"] = r;
                    }
                    if let Some(e) = error {
                        v["error"] = e;
                    }
                    let t = self.topics.device(&key.0, "cmd/response");
                    self.publish_json(t, &v, qos.max(1), false);
                }
                Ok(())
            }
            Op::Ready => {
                let (Some(program), Some(pid)) = (
                    self.conns.get(&conn).and_then(|c| c.program.clone()),
                    self.conns.get(&conn).and_then(|c| c.pid),
                ) else {
                    return Err((
                        ErrorCode::UnknownProgram,
                        "this connection does not belong to a supervised program".into(),
                    ));
                };
                let pid = self
                    .view
                    .programs
                    .iter()
                    .find(|p| p.name == program)
                    .and_then(|p| p.pid)
                    .unwrap_or(pid);
                if self.ready.len() >= self.ready_room {
                    return Err((
                        ErrorCode::Unavailable,
                        "the supervisor cannot be told right now".into(),
                    ));
                }
                tracing::info!(program = %program, pid, "program reports ready");
                self.ready.push_back(ReadyReport { program, pid });
                Ok(())
            }
            Op::Subscribe { topic } => {
                if !valid_filter(&topic) {
                    return Err((
                        ErrorCode::BadRequest,
                        format!("invalid topic filter {topic:?}"),
                    ));
                }
                let max = self.s.max_subscriptions;
                let c = self
                    .conns
                    .get(&conn)
                    .ok_or((ErrorCode::Unavailable, "connection closed".into()))?;
                let new = !c.subs.contains(&topic);
                if new && c.subs.len() >= max {
                    return Err((
                        ErrorCode::TooManySubscriptions,
                        format!(
                            "this connection already has {max} subscriptions (max_subscriptions)"
                        ),
                    ));
                }
                if self.connected {
                    if self.subs_inflight >= SUB_WINDOW {
                        return Err((ErrorCode::Overloaded, "subscription queue full".into()));
                    }
                    self.subs_inflight += 1;
                    self.transmits
                        .push_back(Transmit::Subscribe(vec![topic.clone()]));
                }
                if let Some(c) = self.conns.get_mut(&conn)
                    && new
                {
                    c.subs.push(topic);
                }
                Ok(())
            }
            Op::Publish {
                topic,
                payload,
                qos: q,
                retain,
            } => {
                if !valid_topic(&topic) {
                    return Err((ErrorCode::BadRequest, format!("invalid topic {topic:?}")));
                }
                let program = self.program_name(conn);
                let allowed = self.topics.inside_instance(&topic)
                    || self
                        .s
                        .program_publish
                        .get(&program)
                        .is_some_and(|fs| fs.iter().any(|f| matches(f, &topic)));
                if !allowed {
                    tracing::warn!(program = %program, topic = %topic, "publish outside the allowed topics refused");
                    return Err((
                        ErrorCode::Forbidden,
                        format!("program {program} may not publish to {topic:?}"),
                    ));
                }
                let bytes = match payload {
                    Value::String(s) => s.into_bytes(),
                    other => other.to_string().into_bytes(),
                };
                if self.publish(topic, bytes, q.unwrap_or(qos), retain) {
                    Ok(())
                } else {
                    Err((ErrorCode::BadRequest, "message too large to publish".into()))
                }
            }
        }
    }

    /// Refuses a `hello` whose devices not yet claimed would take the claims past
    /// `max_devices`.
    fn check_new_claims(&self, list: &[String]) -> Result<(), (ErrorCode, String)> {
        let new: std::collections::HashSet<&String> = list
            .iter()
            .filter(|d| !self.handlers.contains_key(*d))
            .collect();
        if self.handlers.len() + new.len() > self.s.max_devices {
            return Err(self.too_many_devices(new.len()));
        }
        Ok(())
    }

    fn too_many_devices(&self, new: usize) -> (ErrorCode, String) {
        (
            ErrorCode::TooManyDevices,
            format!(
                "{new} more device id(s) would exceed max_devices ({})",
                self.s.max_devices
            ),
        )
    }

    fn checked(
        &mut self,
        topic: String,
        v: &Value,
        qos: u8,
        retain: bool,
    ) -> Result<(), (ErrorCode, String)> {
        if self.publish_json(topic, v, qos, retain) {
            Ok(())
        } else {
            Err((ErrorCode::BadRequest, "message too large to publish".into()))
        }
    }

    // ---- inbound MQTT ----------------------------------------------------------------------

    fn on_inbound(&mut self, topic: &str, payload: &[u8], retain: bool) {
        self.ha_inbound(topic, payload, retain);
        let request = self.topics.classify(topic);
        if request.is_some() && payload.iter().all(u8::is_ascii_whitespace) {
            // The web UI's "clear topics" empties every cached topic, requests included; an
            // empty request asks for nothing, so it reaches no program and gets no answer.
            tracing::debug!(topic, "empty request ignored");
            return;
        }
        match request {
            // Retained commands are stale by definition; executing them on every reconnect
            // would repeat old actions.
            Some(_) if retain => {
                tracing::warn!(topic, "ignoring a retained request");
            }
            Some(Inbound::DeviceCmd(d)) => self.on_device_cmd(&d, parse_object(payload)),
            Some(Inbound::DeviceGet(d)) => self.on_get(&d, payload),
            Some(Inbound::GroupCmd(g)) => self.on_group_cmd(&g, payload),
            Some(Inbound::MetaRequest(kind)) => self.on_meta_request(&kind, payload),
            None => {}
        }
        let text = String::from_utf8_lossy(payload).into_owned();
        let targets: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.subs.iter().any(|f| matches(f, topic)))
            .map(|(id, _)| *id)
            .collect();
        for conn in targets {
            let m = Reply::Message {
                topic: topic.to_string(),
                payload: text.clone(),
                retain,
            };
            self.send_to(conn, &m);
        }
    }

    fn handler_for(&self, device: &str) -> Option<u64> {
        self.handlers.get(device).copied().or(self.all_handler)
    }

    /// Publishes a failed command: `cmd/response` when the command had an id, and always an
    /// `error` on the device.
    fn fail_command(&mut self, device: &str, cmd_id: Option<&Value>, code: &str, reason: &str) {
        self.counters.command_failures_total += 1;
        let now = self.timestamp();
        let qos = self.s.qos;
        if let Some(id) = cmd_id {
            let v = json!({"cmd_id": id, "status": "error", "timestamp": now, "error": reason});
            let t = self.topics.device(device, "cmd/response");
            self.publish_json(t, &v, qos.max(1), false);
        }
        let v =
            json!({"timestamp": now, "error_code": code, "message": reason, "severity": "error"});
        let t = self.topics.device(device, "error");
        self.publish_json(t, &v, qos, false);
    }

    fn on_device_cmd(&mut self, device: &str, obj: Option<Map<String, Value>>) {
        let Some(mut obj) = obj else {
            self.fail_command(
                device,
                None,
                "invalid_command",
                "command payload is not a json object",
            );
            return;
        };
        // Kept as sent: the reference echoes `id` into `cmd_id` unchanged, a number as a number.
        let mqtt_id = obj
            .remove("id")
            .filter(|v| v.is_number() || v.as_str().is_some_and(|s| !s.is_empty()));
        let timestamp = obj.remove("timestamp");
        let timeout = obj.remove("timeout");
        let id_ref = mqtt_id.as_ref();
        if let Some(ts) = timestamp.as_ref().filter(|v| !v.is_null()) {
            let Some(age) = time::command_age(ts, &self.s.tz, self.wall) else {
                self.fail_command(
                    device,
                    id_ref,
                    "invalid_command",
                    &format!("invalid timestamp {ts}"),
                );
                return;
            };
            if age
                > jiff::SignedDuration::try_from(self.s.max_command_age)
                    .unwrap_or(jiff::SignedDuration::MAX)
            {
                let reason = format!(
                    "command expired: issued {}s ago, older than max_command_age {}s",
                    age.as_secs(),
                    self.s.max_command_age.as_secs()
                );
                self.fail_command(device, id_ref, "command_expired", &reason);
                return;
            }
        }
        let timeout = timeout
            .and_then(|v| v.as_u64())
            .filter(|ms| *ms > 0)
            .map(|ms| Duration::from_millis(ms.min(600_000)))
            .unwrap_or(self.s.default_command_timeout);
        let values = match obj.remove("values") {
            Some(Value::Object(v)) => v,
            // The platform also sends flat commands without `values`.
            Some(other) => {
                let mut m = Map::new();
                m.insert("values".into(), other);
                m
            }
            None => obj,
        };
        let Some(conn) = self.handler_for(device) else {
            self.fail_command(
                device,
                id_ref,
                "no_handler",
                &format!("no program handles device {device}"),
            );
            return;
        };
        let cmd_id = match &mqtt_id {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => {
                self.cmd_seq += 1;
                format!("sv-{}", self.cmd_seq)
            }
        };
        let cmd = Reply::Cmd {
            device_id: device.to_string(),
            cmd_id: cmd_id.clone(),
            values,
            timeout: timeout.as_millis() as u64,
            timestamp: self.timestamp(),
        };
        if !self.send_to(conn, &cmd) {
            let program = self.program_name(conn);
            self.fail_command(
                device,
                mqtt_id.as_ref(),
                "handler_busy",
                &format!("program {program} is not reading its commands"),
            );
            return;
        }
        self.counters.commands_total += 1;
        self.pending.insert(
            (device.to_string(), cmd_id),
            Pending {
                deadline: self.now + timeout,
                mqtt_id,
                conn,
            },
        );
    }

    fn on_group_cmd(&mut self, group: &str, payload: &[u8]) {
        let Some(g) = self
            .s
            .instance_config
            .groups
            .iter()
            .find(|g| g.group_id == group)
            .cloned()
        else {
            tracing::warn!(group, "command for an unknown group ignored");
            return;
        };
        let obj = parse_object(payload);
        for member in &g.devices {
            let enabled = self
                .s
                .instance_config
                .devices
                .iter()
                .find(|d| &d.device_id == member)
                .map(|d| d.enabled);
            match enabled {
                Some(true) if valid_segment(member) => self.on_device_cmd(member, obj.clone()),
                Some(_) => {}
                None => {
                    tracing::warn!(group, device = %member, "group member is not a device of the instance")
                }
            }
        }
    }

    fn on_get(&mut self, device: &str, payload: &[u8]) {
        let properties = parse_object(payload)
            .and_then(|o| o.get("properties").cloned())
            .and_then(|p| serde_json::from_value::<Vec<String>>(p).ok());
        if let Some(conn) = self.handler_for(device) {
            let r = Reply::Get {
                device_id: device.to_string(),
                properties,
            };
            if self.send_to(conn, &r) {
                return;
            }
        }
        // No (reachable) handler: answer from the last reported state when there is one.
        if let Some(full) = self.states.get(device).cloned() {
            let now = self.timestamp();
            let envelope = json!({"timestamp": now, "device_id": device, "state": full});
            let t = self.topics.device(device, "state");
            self.publish_json(t, &envelope, self.s.qos, self.s.retain);
        } else {
            self.fail_command(
                device,
                None,
                "no_handler",
                &format!("no program handles device {device}"),
            );
        }
    }

    fn on_meta_request(&mut self, kind: &str, payload: &[u8]) {
        if let Some(conn) = self.meta_handler {
            let payload = serde_json::from_slice(payload).unwrap_or(Value::Null);
            let r = Reply::MetaRequest {
                kind: kind.to_string(),
                payload,
            };
            if self.send_to(conn, &r) {
                return;
            }
        }
        match kind {
            "info" => {
                let v = self.meta_info();
                let t = self.topics.meta("info");
                self.publish_json(t, &v, 1, true);
            }
            "devices_list" => {
                let v = self.devices_list();
                let t = self.topics.meta("devices_list");
                self.publish_json(t, &v, 1, true);
            }
            other => tracing::warn!(kind = other, "unknown meta request ignored"),
        }
    }

    fn devices_list(&self) -> Value {
        let inst = &self.s.instance;
        let mut out: Vec<Value> = self
            .s
            .instance_config
            .devices
            .iter()
            .map(|d| {
                json!({
                    "device_id": d.device_id,
                    "global_id": format!("{inst}_{}", d.device_id),
                    "name": d.name,
                    "model": d.model,
                    "enabled": d.enabled,
                    "online": self.availability.is_online(&d.device_id),
                })
            })
            .collect();
        let mut extra: Vec<&String> = self
            .states
            .keys()
            .filter(|d| {
                !self
                    .s
                    .instance_config
                    .devices
                    .iter()
                    .any(|c| &c.device_id == *d)
            })
            .collect();
        extra.sort();
        for d in extra {
            out.push(json!({
                "device_id": d,
                "global_id": format!("{inst}_{d}"),
                "name": null,
                "model": null,
                "enabled": true,
                "online": self.availability.is_online(d),
            }));
        }
        Value::Array(out)
    }

    fn meta_info(&self) -> Value {
        let ic = &self.s.instance_config;
        let programs: Vec<Value> = self
            .view
            .programs
            .iter()
            .map(|p| json!({"name": p.name, "state": p.state, "ready": p.ready, "healthy": p.healthy, "critical": p.critical}))
            .collect();
        let connector_type = ic
            .connector_type
            .clone()
            .or_else(|| self.s.connector_type.clone())
            .unwrap_or_else(|| "unknown".to_string());
        json!({
            "instance_id": ic.instance_id.clone().unwrap_or_else(|| self.s.instance.clone()),
            "connector_type": connector_type,
            // Seconds since the bridge started (the platform's reference sends the epoch time).
            "uptime": self.now.duration_since(self.started).as_secs(),
            "friendly_name": ic.friendly_name,
            "enabled": ic.enabled.unwrap_or(true),
            "devices_count": ic.devices.len(),
            "groups_count": ic.groups.len(),
            "online": self.desired_status(),
            "programs": programs,
            "timestamp": self.timestamp(),
        })
    }
}

fn parse_object(payload: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice(payload) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// A device's state message, as `json!({"timestamp", "device_id", "state"})` would write it
/// (keys in sorted order, as serde_json's map keeps them) but borrowing the state.
#[derive(serde::Serialize)]
struct StateEnvelope<'a> {
    device_id: &'a str,
    state: &'a Map<String, Value>,
    timestamp: &'a str,
}

/// The largest message the bridge publishes (topic plus payload): a program's line may carry a
/// state of up to `max_line_bytes`, which its envelope only grows a little.
pub(crate) fn max_packet(s: &Settings) -> usize {
    (s.max_line_bytes * 4).max(1 << 20)
}
