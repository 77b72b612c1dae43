//! The bridge's one state-owning task: the MQTT connection, the outbox, the programs' sessions,
//! command routing and the instance status.
//!
//! Everything else (the socket acceptor, per-connection readers and writers, the rumqttc event
//! loop of the current connection) runs in its own task and talks to this one through bounded
//! channels, so no state is shared or locked. Invariants kept here:
//! - `online` is published only while connected and every critical program (other than the
//!   bridge itself) is healthy, and again after every reconnect (platform defects 1 and 2);
//! - every message goes through the [`Outbox`] and leaves it only when the broker acknowledged
//!   it, so a reconnect loses nothing (defect 3);
//! - each rumqttc connection is used once: on any error it is dropped and a new one is made after
//!   our own jittered backoff, because rumqttc reconnects immediately and forgets its queue;
//! - nothing received from a program or the broker can panic this task: every input is parsed
//!   into a typed value or answered with an error;
//! - a device named in a live `hello` belongs to that program: device messages for it from
//!   another program are refused (`device_claimed`) unless that program's `bridge_publish`
//!   covers the device's topics;
//! - lines queued towards one program are bounded in number and in bytes, so a program that
//!   does not read costs at most [`server::WRITE_QUEUE_BYTES`] of memory.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS, Transport};
use serde_json::{Map, Value, json};
use sv_core::health::BridgeStats;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::codec::{CmdStatus, DeviceSet, ErrorCode, Op, Reply, Request, encode_reply};
use crate::merge;
use crate::outbox::{Message, Outbox};
use crate::quickack::BrokerSocket;
use crate::settings::Settings;
use crate::topics::{Inbound, Topics, matches, valid_filter, valid_segment, valid_topic};
use crate::{BridgeError, ReadyReport, SupervisorView, server, time};

mod availability;
mod ha;
use availability::Availability;

/// The bridge's own program name in the supervisor's table.
const SELF_NAME: &str = "bridge";
/// QoS ≥ 1 messages handed to rumqttc before their acknowledgement; below rumqttc's inflight
/// limit (100) so its packet ids never collide and acknowledgements map back in order.
const WINDOW: usize = 32;
/// A connection closed within this after CONNACK counts as "dropped right after connecting".
const QUICK_DROP: Duration = Duration::from_secs(3);
/// Consecutive quick drops before the "same client id" diagnosis is logged.
const QUICK_DROPS_BEFORE_DIAGNOSIS: u32 = 3;
/// A connection that lived this long resets the reconnect backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Extra in-flight slots only the priority lane (status, availability) may use, so a full
/// window of unacknowledged backlog cannot hold the final `offline` back. `WINDOW` plus this
/// stays below rumqttc's inflight limit.
const PRIORITY_RESERVE: usize = 16;
/// Bound on waiting for the PUBACK of the final `offline`. Without it the connection is closed
/// without DISCONNECT, so that the broker publishes the Last Will instead.
const STOP_ACK_WAIT: Duration = Duration::from_millis(2000);
/// Bound on waiting for the broker to close the connection after a clean DISCONNECT.
const STOP_CLOSE_WAIT: Duration = Duration::from_millis(500);
/// The longest the bridge takes from its stop signal to its exit; it must stay below the
/// bridge program's `stopwaitsecs` (3 s, `sv_runtime::supervisor::add_bridge_program`), or
/// the supervisor's SIGKILL would decide the outcome.
pub(crate) const STOP_BUDGET: Duration = STOP_ACK_WAIT.saturating_add(STOP_CLOSE_WAIT);
/// Longest pause between attempts while the broker cannot be reached. An attempt against a
/// broker that is down is refused at once and costs it nothing, and the instance must be back
/// `online` within about a second of the broker's return, so waiting longer only delays that.
const UNREACHABLE_CAP: Duration = Duration::from_secs(1);
/// Longest pause after the broker refused the CONNECT or dropped us right after accepting it
/// (bad credentials, a client-id fight): retrying fast would only repeat the fight.
const REFUSED_CAP: Duration = Duration::from_secs(30);

/// Messages from the socket side.
#[derive(Debug)]
pub(crate) enum FromConn {
    /// A program connected.
    Opened {
        conn: u64,
        pid: Option<i32>,
        tx: mpsc::Sender<String>,
    },
    /// A decoded request.
    Request { conn: u64, req: Request },
    /// A line that is not a request, answered in order with the others.
    Refused { conn: u64, reply: Reply },
    /// The connection ended.
    Closed { conn: u64 },
    /// The byte count of the connection's write queue, shared with its writer task (which
    /// subtracts what it wrote); sent right after `Opened`.
    Accounted { conn: u64, queued: Arc<AtomicUsize> },
}

#[derive(Debug)]
pub(crate) enum MqttEv {
    Event(u64, Box<Event>),
    /// The connection of a generation ended: the error, and whether the broker refused the
    /// CONNECT (as opposed to being unreachable or dropping the connection).
    Down(u64, String, bool),
}

#[derive(Debug)]
struct Conn {
    tx: mpsc::Sender<String>,
    queued: Option<Arc<AtomicUsize>>,
    /// Lines dropped since the program last accepted one (logged once per episode).
    dropping: u64,
    pid: Option<i32>,
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

/// Reconnect backoff: 250 ms doubling to `cap`, ±20 % jitter so a fleet restarting together
/// does not reconnect in lockstep.
fn backoff(attempt: u32, cap: Duration) -> Duration {
    let cap = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    let base = 250u64.saturating_mul(1u64 << attempt.min(7)).min(cap);
    let jitter = (base as f64 * 0.2 * (fastrand::f64() * 2.0 - 1.0)) as i64;
    Duration::from_millis((base as i64 + jitter).max(50) as u64)
}

fn qos_of(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Identifies the supervised program a peer process belongs to: its pid, or its session id
/// (every program is spawned as a session leader, so a program's descendants share its sid).
pub(crate) fn identify(pid: i32, view: &SupervisorView) -> Option<String> {
    if let Some(p) = view.programs.iter().find(|p| p.pid == Some(pid)) {
        return Some(p.name.clone());
    }
    let sid = session_id(pid)?;
    view.programs
        .iter()
        .find(|p| p.pid == Some(sid))
        .map(|p| p.name.clone())
}

/// Field 6 of `/proc/<pid>/stat` (proc(5)); the command name in field 2 may contain spaces and
/// parentheses, so fields are counted after the last `)`.
fn session_id(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")": state(3) ppid(4) pgrp(5) session(6).
    rest.split_whitespace().nth(3)?.parse().ok()
}

pub(crate) struct Engine {
    s: Arc<Settings>,
    topics: Topics,
    options: MqttOptions,
    max_packet: usize,
    outbox: Outbox,
    drop_episode: bool,
    counters: BridgeStats,
    // Connection.
    client: Option<AsyncClient>,
    /// The task driving the current connection: aborting it closes the socket without a
    /// DISCONNECT packet.
    driver: Option<tokio::task::JoinHandle<()>>,
    generation: u64,
    connected: bool,
    connected_at: Option<Instant>,
    attempt: u32,
    quick_drops: u32,
    refused: bool,
    reconnect_at: Option<Instant>,
    fifo: VecDeque<(u64, u8)>,
    pkids: HashMap<u16, u64>,
    inflight: usize,
    ev_tx: mpsc::Sender<MqttEv>,
    status_sent: Option<bool>,
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
    ready_tx: mpsc::Sender<ReadyReport>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("connected", &self.connected)
            .field("outbox", &self.outbox.len())
            .finish_non_exhaustive()
    }
}

pub(crate) async fn run(
    settings: Settings,
    mut supervisor: watch::Receiver<SupervisorView>,
    ready: mpsc::Sender<ReadyReport>,
    shutdown: impl Future<Output = ()>,
    on_listening: impl FnOnce(),
) -> Result<(), BridgeError> {
    let s = Arc::new(settings);
    let listener = server::bind(&s)?;
    on_listening();
    let (conn_tx, mut conn_rx) = mpsc::channel::<FromConn>(256);
    let (ev_tx, mut ev_rx) = mpsc::channel::<MqttEv>(256);
    let acceptor = tokio::spawn(server::accept_loop(
        listener,
        s.max_line_bytes,
        s.max_connections,
        conn_tx.clone(),
    ));
    drop(conn_tx);

    let mut engine = Engine::new(s.clone(), ready, ev_tx);
    engine.view = supervisor.borrow_and_update().clone();
    // Queued for the first connection: overwrites an `online` a crashed bridge left retained.
    engine.refresh_availability();
    engine.connect();
    tracing::info!(socket = %s.socket.display(), host = %s.host, port = s.port, client_id = %s.client_id, "bridge started");

    let mut shutdown = std::pin::pin!(shutdown);
    let mut view_open = true;
    loop {
        let accept = !(engine.connected && engine.outbox.is_full());
        let deadline = engine.next_deadline();
        tokio::select! {
            () = &mut shutdown => break,
            Some(ev) = ev_rx.recv() => engine.on_mqtt(ev),
            Some(msg) = conn_rx.recv(), if accept => engine.on_conn(msg),
            changed = supervisor.changed(), if view_open => match changed {
                Ok(()) => {
                    let v = supervisor.borrow_and_update().clone();
                    engine.on_view(v);
                }
                Err(_) => view_open = false,
            },
            () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                engine.on_timer();
            }
        }
    }

    acceptor.abort();
    let _ = std::fs::remove_file(&s.socket);
    engine.stop(&mut ev_rx).await;
    tracing::info!("bridge stopped");
    Ok(())
}

impl Engine {
    pub(crate) fn new(
        s: Arc<Settings>,
        ready_tx: mpsc::Sender<ReadyReport>,
        ev_tx: mpsc::Sender<MqttEv>,
    ) -> Engine {
        let topics = Topics::new(&s.base_topic, &s.instance);
        let max_packet = (s.max_line_bytes * 4).max(1 << 20);
        let mut o = MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
        o.set_keep_alive(s.keepalive);
        o.set_clean_session(true);
        // Set before the first CONNECT: the broker publishes it on any unclean disconnect.
        o.set_last_will(LastWill::new(
            topics.status(),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
        if let Some(u) = &s.username {
            o.set_credentials(
                u.clone(),
                s.password
                    .as_ref()
                    .map(|p| p.expose().to_string())
                    .unwrap_or_default(),
            );
        }
        o.set_max_packet_size(max_packet + 1024, max_packet + 1024);
        o.set_inflight(100);
        o.set_request_channel_capacity(4 * WINDOW + 64);
        if let Some(tls) = &s.tls {
            o.set_transport(Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls.config.clone()),
            ));
        }
        let mut engine = Engine {
            outbox: Outbox::new(s.outbox_max_messages, s.outbox_max_bytes),
            s,
            topics,
            options: o,
            max_packet,
            drop_episode: false,
            counters: BridgeStats::default(),
            client: None,
            driver: None,
            generation: 0,
            connected: false,
            connected_at: None,
            attempt: 0,
            quick_drops: 0,
            refused: false,
            reconnect_at: None,
            fifo: VecDeque::new(),
            pkids: HashMap::new(),
            inflight: 0,
            ev_tx,
            status_sent: None,
            conns: HashMap::new(),
            handlers: HashMap::new(),
            all_handler: None,
            meta_handler: None,
            pending: HashMap::new(),
            cmd_seq: 0,
            states: HashMap::new(),
            availability: Availability::default(),
            ha: None,
            started: Instant::now(),
            view: SupervisorView::default(),
            ready_tx,
        };
        engine.ha = engine.ha_new();
        engine
    }

    fn next_deadline(&self) -> Option<Instant> {
        let cmd = self.pending.values().map(|p| p.deadline).min();
        match (cmd, self.reconnect_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---- MQTT connection -------------------------------------------------------------------

    fn connect(&mut self) {
        self.reconnect_at = None;
        self.generation += 1;
        let (client, mut el) = AsyncClient::new(self.options.clone(), 4 * WINDOW + 64);
        // Every packet the bridge sends is small and latency-bound (PUBACKs, command results,
        // state updates). With Nagle's algorithm each one could wait for the broker's delayed
        // acknowledgement of the one before (the broker's side of this is in `quickack`).
        let mut net = el.network_options();
        net.set_tcp_nodelay(true);
        el.set_network_options(net);
        self.driver = Some(tokio::spawn(drive(
            el,
            self.generation,
            self.s.port,
            self.ev_tx.clone(),
        )));
        self.client = Some(client);
        self.connected = false;
        tracing::debug!(generation = self.generation, "connecting to broker");
    }

    fn on_mqtt(&mut self, ev: MqttEv) {
        match ev {
            MqttEv::Down(g, err, refused) if g == self.generation => self.on_down(err, refused),
            MqttEv::Down(..) => {}
            MqttEv::Event(g, ev) if g == self.generation => self.on_event(*ev),
            MqttEv::Event(..) => {}
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Incoming(Packet::ConnAck(_)) => self.on_connected(),
            Event::Incoming(Packet::Publish(p)) => {
                self.on_inbound(&p.topic, &p.payload, p.retain);
            }
            Event::Incoming(Packet::PubAck(a)) => self.on_ack(a.pkid),
            Event::Incoming(Packet::PubComp(c)) => self.on_ack(c.pkid),
            Event::Outgoing(rumqttc::Outgoing::Publish(pkid)) => {
                if let Some((id, qos)) = self.fifo.pop_front() {
                    if qos == 0 {
                        self.outbox.ack(id);
                        self.counters.published_total += 1;
                        self.pump();
                    } else {
                        self.pkids.insert(pkid, id);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connected(&mut self) {
        self.connected = true;
        self.refused = false;
        self.counters.connects_total += 1;
        self.connected_at = Some(Instant::now());
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
        if let Some(client) = &self.client {
            let subs = filters
                .into_iter()
                .map(|f| rumqttc::SubscribeFilter::new(f, QoS::AtLeastOnce));
            if let Err(e) = client.try_subscribe_many(subs) {
                tracing::warn!(error = %e, "subscribing failed");
            }
        }
        self.status_sent = None;
        self.update_status();
        self.ha_on_connect();
        self.pump();
    }

    fn on_down(&mut self, err: String, refused: bool) {
        let was_connected = self.connected;
        self.counters.disconnects_total += 1;
        self.refused = refused;
        self.connected = false;
        self.client = None;
        self.fifo.clear();
        self.pkids.clear();
        self.inflight = 0;
        self.outbox.requeue_all();
        self.status_sent = None;
        let lived = self.connected_at.take().map(|t| t.elapsed());
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
        let delay = backoff(self.attempt, cap);
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
        self.reconnect_at = Some(Instant::now() + delay);
    }

    fn on_ack(&mut self, pkid: u16) {
        if let Some(id) = self.pkids.remove(&pkid) {
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
    }

    /// Hands unsent outbox messages to the connection, up to the window.
    fn pump(&mut self) {
        if !self.connected {
            return;
        }
        let Some(client) = &self.client else { return };
        while let Some((id, msg)) = self.outbox.next_unsent() {
            let window = if self.outbox.is_priority(id) {
                WINDOW + PRIORITY_RESERVE
            } else {
                WINDOW
            };
            if self.inflight >= window {
                break;
            }
            let (qos, topic, retain, payload) =
                (msg.qos, msg.topic.clone(), msg.retain, msg.payload.clone());
            match client.try_publish(topic, qos_of(qos), retain, payload) {
                Ok(()) => {
                    self.outbox.mark_sent(id);
                    self.fifo.push_back((id, qos));
                    if qos > 0 {
                        self.inflight += 1;
                    }
                }
                // Full request channel: the next acknowledgement pumps again.
                Err(_) => break,
            }
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
        if !self.connected {
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
    async fn stop(&mut self, ev_rx: &mut mpsc::Receiver<MqttEv>) {
        if !self.connected {
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
        self.pump();
        let deadline = Instant::now() + STOP_ACK_WAIT;
        while self.connected && self.outbox_contains(id) {
            tokio::select! {
                Some(ev) = ev_rx.recv() => self.on_mqtt(ev),
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        if self.outbox_contains(id) {
            tracing::warn!(
                "no acknowledgement for the final offline status; closing the connection without DISCONNECT so that the broker publishes the Last Will"
            );
            self.client = None;
            if let Some(driver) = self.driver.take() {
                driver.abort();
                // Resolves once the task, and with it the socket, is gone.
                let _ = driver.await;
            }
        } else {
            self.disconnect_cleanly(ev_rx).await;
        }
        if !self.outbox.is_empty() {
            tracing::warn!(
                unsent = self.outbox.len(),
                "stopping with unacknowledged messages"
            );
        }
    }

    async fn disconnect_cleanly(&mut self, ev_rx: &mut mpsc::Receiver<MqttEv>) {
        if let Some(c) = &self.client {
            let _ = c.try_disconnect();
        }
        let deadline = Instant::now() + STOP_CLOSE_WAIT;
        while self.client.is_some() {
            tokio::select! {
                Some(ev) = ev_rx.recv() => {
                    if matches!(ev, MqttEv::Down(g, ..) if g == self.generation) {
                        break;
                    }
                }
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
    }

    fn outbox_contains(&self, id: u64) -> bool {
        self.outbox.contains(id)
    }

    // ---- timers and supervisor -------------------------------------------------------------

    fn on_timer(&mut self) {
        let now = Instant::now();
        if self.reconnect_at.is_some_and(|t| t <= now) {
            self.connect();
        }
        let expired: Vec<(String, String)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
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
    }

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
            c.program = identify(pid, view);
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

    fn send_to(&mut self, conn: u64, reply: &Reply) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        let line = encode_reply(reply);
        let len = line.len();
        // One line always fits an empty queue, however long, so no message is undeliverable.
        let over = c.queued.as_ref().is_some_and(|q| {
            let held = q.load(Ordering::Acquire);
            held > 0 && held + len > server::WRITE_QUEUE_BYTES
        });
        let sent = !over && c.tx.try_send(line).is_ok();
        let dropped_before = c.dropping;
        // The program's name is looked up only when there is something to log: this runs for
        // every reply.
        if sent {
            if let Some(q) = &c.queued {
                q.fetch_add(len, Ordering::AcqRel);
            }
            c.dropping = 0;
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

    pub(crate) fn on_conn(&mut self, msg: FromConn) {
        match msg {
            FromConn::Opened { conn, pid, tx } => {
                self.conns.insert(
                    conn,
                    Conn {
                        tx,
                        queued: None,
                        dropping: 0,
                        pid,
                        program: None,
                        subs: Vec::new(),
                    },
                );
                self.resolve_identity(conn);
                let program = self.program_name(conn);
                tracing::debug!(conn, pid, program = %program, "program connected");
            }
            FromConn::Closed { conn } => self.on_closed(conn),
            FromConn::Accounted { conn, queued } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.queued = Some(queued);
                }
            }
            FromConn::Refused { conn, reply } => {
                self.counters.requests_total += 1;
                self.counters.refused_total += 1;
                self.send_to(conn, &reply);
            }
            FromConn::Request { conn, req } => {
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
        }
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
        let now = time::now(&self.s.tz);
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
                tracing::info!(program = %program, pid, "program reports ready");
                self.ready_tx
                    .try_send(ReadyReport { program, pid })
                    .map_err(|_| {
                        (
                            ErrorCode::Unavailable,
                            "the supervisor cannot be told right now".into(),
                        )
                    })
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
                    .get_mut(&conn)
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
                if self.connected
                    && let Some(client) = &self.client
                {
                    client
                        .try_subscribe(topic.clone(), QoS::AtLeastOnce)
                        .map_err(|_| (ErrorCode::Overloaded, "subscription queue full".into()))?;
                }
                if new {
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

    pub(crate) fn on_inbound(&mut self, topic: &str, payload: &[u8], retain: bool) {
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
        let now = time::now(&self.s.tz);
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
            let Some(age) = time::command_age(ts, &self.s.tz, jiff::Timestamp::now()) else {
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
            timestamp: time::now(&self.s.tz),
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
                deadline: Instant::now() + timeout,
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
            let now = time::now(&self.s.tz);
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
            "uptime": self.started.elapsed().as_secs(),
            "friendly_name": ic.friendly_name,
            "enabled": ic.enabled.unwrap_or(true),
            "devices_count": ic.devices.len(),
            "groups_count": ic.groups.len(),
            "online": self.desired_status(),
            "programs": programs,
            "timestamp": time::now(&self.s.tz),
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

/// Drives one rumqttc connection until its first error; the engine decides about reconnecting.
async fn drive(mut el: EventLoop, generation: u64, port: u16, tx: mpsc::Sender<MqttEv>) {
    let mut socket = None;
    loop {
        match el.poll().await {
            Ok(ev) => {
                match &ev {
                    Event::Incoming(Packet::ConnAck(_)) => socket = BrokerSocket::find(port),
                    // Packets the bridge never answers: nothing outgoing will carry the TCP
                    // acknowledgement, so send it now (see `quickack`).
                    Event::Incoming(
                        Packet::PubAck(_)
                        | Packet::PubComp(_)
                        | Packet::SubAck(_)
                        | Packet::UnsubAck(_)
                        | Packet::PingResp,
                    ) => {
                        if let Some(s) = socket {
                            let _ = s.ack_now();
                        }
                    }
                    _ => {}
                }
                if tx
                    .send(MqttEv::Event(generation, Box::new(ev)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                let refused = matches!(e, rumqttc::ConnectionError::ConnectionRefused(_));
                let _ = tx
                    .send(MqttEv::Down(generation, e.to_string(), refused))
                    .await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0, REFUSED_CAP) <= Duration::from_millis(300));
        assert!(backoff(3, REFUSED_CAP) >= Duration::from_millis(1600));
        for a in [20, 100, u32::MAX] {
            assert!(backoff(a, REFUSED_CAP) <= Duration::from_secs(36));
            // An unreachable broker is retried at least every 1.2 s (cap plus jitter).
            assert!(backoff(a, UNREACHABLE_CAP) <= Duration::from_millis(1200));
        }
    }

    #[test]
    fn own_process_is_identified_by_pid_and_session() {
        let me = std::process::id() as i32;
        let view = SupervisorView {
            programs: vec![crate::ProgramView {
                name: "me".into(),
                pid: Some(me),
                state: "RUNNING".into(),
                ready: true,
                critical: true,
                healthy: true,
            }],
        };
        assert_eq!(identify(me, &view).as_deref(), Some("me"));
        let sid = session_id(me).expect("own session id");
        let view = SupervisorView {
            programs: vec![crate::ProgramView {
                pid: Some(sid),
                ..view.programs[0].clone()
            }],
        };
        assert_eq!(identify(me, &view).as_deref(), Some("me"));
        assert_eq!(identify(me, &SupervisorView::default()), None);
    }
}
