//! The bridge's driver: owns the rumqttc connection, the socket server's channels and the
//! clocks, and moves events into the [`Machine`] and its outputs out. It decides nothing.
//!
//! Every other task (the socket acceptor, per-connection readers and writers, the rumqttc event
//! loop of the current connection) talks to this one through channels, so no state is shared or
//! locked. Each input is handed to the machine with the current monotonic and wall-clock time,
//! then every output is carried out at once: publishes and subscriptions go to rumqttc with
//! `try_*` (the machine's windows keep them below the request channel's capacity), lines go to
//! the program's writer task, readiness reports to the supervisor.
//!
//! Acknowledgements are correlated explicitly, in [`Correlation`]: rumqttc's packet id of each
//! written publish is mapped to the machine's message id, and PUBACK / PUBCOMP are reported to
//! the machine by that id.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;

use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS, Transport,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::codec::{Reply, Request};
use crate::machine::{Input, Machine, PRIORITY_RESERVE, SUB_WINDOW, Transmit, WINDOW, max_packet};
use crate::quickack::BrokerSocket;
use crate::settings::Settings;
use crate::topics::Topics;
use crate::{BridgeError, ReadyReport, SupervisorView, server};

/// rumqttc's request channel: above everything the machine hands over unacknowledged (its
/// publish and subscription windows) plus a DISCONNECT.
const REQUEST_CAPACITY: usize = 2 * (WINDOW + PRIORITY_RESERVE + SUB_WINDOW) + 8;

/// Messages from the socket side.
#[derive(Debug)]
pub(crate) enum FromConn {
    /// A program connected; `tx` feeds its writer task.
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
}

/// A writer task wrote (or, its program gone, discarded) this many lines and bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Written {
    pub(crate) conn: u64,
    pub(crate) lines: usize,
    pub(crate) bytes: usize,
}

#[derive(Debug)]
enum MqttEv {
    Event(u64, Box<Event>),
    /// The connection of a generation ended: the error, and whether the broker refused the
    /// CONNECT (as opposed to being unreachable or dropping the connection).
    Down(u64, String, bool),
}

/// The driver's state: IO handles and the packet-id correlation, nothing of the contract.
struct Driver {
    machine: Machine,
    options: MqttOptions,
    port: u16,
    ev_tx: mpsc::Sender<MqttEv>,
    ready: mpsc::Sender<ReadyReport>,
    /// Writer queues of the connected programs.
    conns: HashMap<u64, mpsc::Sender<String>>,
    // The current broker connection.
    generation: u64,
    client: Option<AsyncClient>,
    /// The task driving the current connection: aborting it closes the socket without a
    /// DISCONNECT packet.
    task: Option<JoinHandle<()>>,
    /// A task aborted on the machine's request, awaited before the bridge exits.
    aborted: Option<JoinHandle<()>>,
    /// The current connection's packet ids.
    ids: Correlation,
}

/// rumqttc's packet ids → the machine's message ids, for one connection.
///
/// rumqttc assigns packet ids itself (its client API takes no id) and reports each publish once,
/// as `Outgoing::Publish(pkid)`, when it writes it. Requests leave its request channel in order
/// and every connection gets a fresh event loop (nothing `pending` carried over), so the n-th
/// `Outgoing::Publish` of a connection is the n-th publish handed to it: the machine's ids of
/// handed publishes are kept in that order, and the packet id learnt when each is written maps
/// its PUBACK / PUBCOMP back. A QoS 0 publish is done once written. The one exception to the
/// order, a packet-id collision, is reported as `Outgoing::AwaitAck` for the publish just taken,
/// which is then the next `Outgoing::Publish` (rumqttc takes no other request meanwhile); the
/// machine's window (48 < rumqttc's 100 ids) keeps it from happening while the broker
/// acknowledges in order.
#[derive(Debug, Default)]
struct Correlation {
    /// The machine's ids (and QoS) of publishes handed to rumqttc and not yet written.
    handed: VecDeque<(u64, u8)>,
    /// A publish rumqttc holds back on a packet-id collision.
    collided: Option<(u64, u8)>,
    /// rumqttc's packet id → the machine's id, for written QoS ≥ 1 publishes.
    pkids: HashMap<u16, u64>,
}

impl Correlation {
    /// A publish with the machine's `id` was handed to rumqttc.
    fn handed(&mut self, id: u64, qos: u8) {
        self.handed.push_back((id, qos));
    }

    /// `Outgoing::Publish(pkid)`: returns the machine's id when the publish is done (QoS 0).
    fn written(&mut self, pkid: u16) -> Option<u64> {
        let (id, qos) = self.collided.take().or_else(|| self.handed.pop_front())?;
        if qos == 0 {
            return Some(id);
        }
        self.pkids.insert(pkid, id);
        None
    }

    /// `Outgoing::AwaitAck`: the publish just taken waits for its packet id to be free.
    fn await_ack(&mut self) {
        self.collided = self.handed.pop_front();
    }

    /// PUBACK / PUBCOMP: the machine's id of the publish, when it is one of ours.
    fn acked(&mut self, pkid: u16) -> Option<u64> {
        self.pkids.remove(&pkid)
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
    // Unbounded, yet bounded by design: a writer reports only lines the machine counted, at most
    // `WRITE_QUEUE` per connection. Separate from `conn_rx` so that it is read while program
    // lines wait for the outbox.
    let (written_tx, mut written_rx) = mpsc::unbounded_channel::<Written>();
    let (ev_tx, mut ev_rx) = mpsc::channel::<MqttEv>(256);
    let acceptor = tokio::spawn(server::accept_loop(
        listener,
        s.max_line_bytes,
        s.max_connections,
        conn_tx.clone(),
        written_tx,
    ));
    drop(conn_tx);

    let view = supervisor.borrow_and_update().clone();
    let machine = Machine::new(
        s.clone(),
        view,
        std::time::Instant::now(),
        jiff::Timestamp::now(),
        fastrand::u64(..),
    );
    let mut d = Driver {
        machine,
        options: mqtt_options(&s),
        port: s.port,
        ev_tx,
        ready,
        conns: HashMap::new(),
        generation: 0,
        client: None,
        task: None,
        aborted: None,
        ids: Correlation::default(),
    };
    d.flush();
    tracing::info!(socket = %s.socket.display(), host = %s.host, port = s.port, client_id = %s.client_id, "bridge started");

    let mut shutdown = std::pin::pin!(shutdown);
    let mut view_open = true;
    loop {
        let accept = d.machine.accepting();
        let deadline = d.machine.poll_timeout().map(Instant::from_std);
        tokio::select! {
            () = &mut shutdown => break,
            Some(ev) = ev_rx.recv() => d.on_mqtt(ev),
            Some(w) = written_rx.recv() => d.handle(Input::Written { conn: w.conn, lines: w.lines, bytes: w.bytes }),
            Some(msg) = conn_rx.recv(), if accept => d.on_conn(msg),
            changed = supervisor.changed(), if view_open => match changed {
                Ok(()) => {
                    let v = supervisor.borrow_and_update().clone();
                    d.handle(Input::View(v));
                }
                Err(_) => view_open = false,
            },
            () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                d.on_timer();
            }
        }
    }

    acceptor.abort();
    let _ = std::fs::remove_file(&s.socket);
    d.stop(&mut ev_rx).await;
    tracing::info!("bridge stopped");
    Ok(())
}

/// The options of every connection: clean session, the Last Will `offline` on the status topic,
/// credentials, TLS, and packet limits above the largest message the machine publishes.
fn mqtt_options(s: &Settings) -> MqttOptions {
    let topics = Topics::new(&s.base_topic, &s.instance);
    let max_packet = max_packet(s);
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
    o.set_request_channel_capacity(REQUEST_CAPACITY);
    if let Some(tls) = &s.tls {
        o.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls.config.clone()),
        ));
    }
    o
}

fn qos_of(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Field 6 of `/proc/<pid>/stat` (proc(5)); the command name in field 2 may contain spaces and
/// parentheses, so fields are counted after the last `)`.
fn session_id(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")": state(3) ppid(4) pgrp(5) session(6).
    rest.split_whitespace().nth(3)?.parse().ok()
}

impl Driver {
    /// Hands `input` to the machine at the current time and carries out what it asks for.
    fn handle(&mut self, input: Input) {
        self.machine.set_ready_room(self.ready.capacity());
        self.machine
            .handle(std::time::Instant::now(), jiff::Timestamp::now(), input);
        self.flush();
    }

    fn on_timer(&mut self) {
        self.machine
            .handle_timeout(std::time::Instant::now(), jiff::Timestamp::now());
        self.flush();
    }

    fn on_conn(&mut self, msg: FromConn) {
        let input = match msg {
            FromConn::Opened { conn, pid, tx } => {
                self.conns.insert(conn, tx);
                // Read once: a program is a session leader, so its descendants keep its sid.
                let sid = pid.and_then(session_id);
                Input::ProgramConnected { conn, pid, sid }
            }
            FromConn::Request { conn, req } => Input::Line { conn, req },
            FromConn::Refused { conn, reply } => Input::Refused { conn, reply },
            FromConn::Closed { conn } => {
                self.conns.remove(&conn);
                Input::ProgramLeft { conn }
            }
        };
        self.handle(input);
    }

    fn on_mqtt(&mut self, ev: MqttEv) {
        match ev {
            MqttEv::Down(g, error, refused) if g == self.generation => {
                self.client = None;
                self.task = None;
                self.ids = Correlation::default();
                self.handle(Input::BrokerDown { error, refused });
            }
            MqttEv::Event(g, ev) if g == self.generation => self.on_event(*ev),
            MqttEv::Down(..) | MqttEv::Event(..) => {}
        }
    }

    fn on_event(&mut self, ev: Event) {
        let input = match ev {
            Event::Incoming(Packet::ConnAck(_)) => Input::BrokerConnected,
            Event::Incoming(Packet::Publish(p)) => Input::Inbound {
                topic: p.topic,
                payload: p.payload.to_vec(),
                retain: p.retain,
            },
            Event::Incoming(Packet::PubAck(rumqttc::PubAck { pkid }))
            | Event::Incoming(Packet::PubComp(rumqttc::PubComp { pkid })) => {
                match self.ids.acked(pkid) {
                    Some(id) => Input::Acked(id),
                    None => return,
                }
            }
            Event::Incoming(Packet::SubAck(_)) => Input::SubAcked,
            Event::Outgoing(Outgoing::Publish(pkid)) => match self.ids.written(pkid) {
                Some(id) => Input::Acked(id),
                None => return,
            },
            Event::Outgoing(Outgoing::AwaitAck(_)) => {
                self.ids.await_ack();
                return;
            }
            _ => return,
        };
        self.handle(input);
    }

    /// Carries out every output of the machine.
    fn flush(&mut self) {
        while let Some(t) = self.machine.poll_transmit() {
            self.transmit(t);
        }
        while let Some((conn, line)) = self.machine.poll_deliver() {
            // Within the machine's bound, which the channel's capacity matches; a closed one
            // belongs to a program that left (its `Closed` is on the way).
            if let Some(tx) = self.conns.get(&conn) {
                let _ = tx.try_send(line);
            }
        }
        while let Some(r) = self.machine.poll_ready() {
            // Within the room the machine was told of; refused only when the supervisor's side
            // is gone.
            let _ = self.ready.try_send(r);
        }
    }

    fn transmit(&mut self, t: Transmit) {
        match t {
            Transmit::Connect => self.connect(),
            Transmit::Subscribe(filters) => {
                let subs = filters
                    .into_iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f, QoS::AtLeastOnce));
                if let Some(client) = &self.client
                    && let Err(e) = client.try_subscribe_many(subs)
                {
                    tracing::warn!(error = %e, "subscribing failed");
                }
            }
            Transmit::Publish { id, msg, .. } => {
                let Some(client) = &self.client else { return };
                // Refused only when the event loop is gone: its `Down` requeues the message.
                if client
                    .try_publish(msg.topic, qos_of(msg.qos), msg.retain, msg.payload)
                    .is_ok()
                {
                    self.ids.handed(id, msg.qos);
                }
            }
            Transmit::Disconnect => {
                if let Some(c) = &self.client {
                    let _ = c.try_disconnect();
                }
            }
            Transmit::Abort => {
                self.client = None;
                if let Some(task) = self.task.take() {
                    task.abort();
                    self.aborted = Some(task);
                }
            }
        }
    }

    fn connect(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.generation += 1;
        self.ids = Correlation::default();
        let (client, mut el) = AsyncClient::new(self.options.clone(), REQUEST_CAPACITY);
        // Every packet the bridge sends is small and latency-bound (PUBACKs, command results,
        // state updates). With Nagle's algorithm each one could wait for the broker's delayed
        // acknowledgement of the one before (the broker's side of this is in `quickack`).
        let mut net = el.network_options();
        net.set_tcp_nodelay(true);
        el.set_network_options(net);
        self.task = Some(tokio::spawn(drive(
            el,
            self.generation,
            self.port,
            self.ev_tx.clone(),
        )));
        self.client = Some(client);
        tracing::debug!(generation = self.generation, "connecting to broker");
    }

    /// Runs the machine's stop (final `offline`, then a clean or an unclean close) to its end,
    /// which the machine bounds by [`crate::STOP_BUDGET`].
    async fn stop(&mut self, ev_rx: &mut mpsc::Receiver<MqttEv>) {
        self.handle(Input::Stop);
        while !self.machine.is_stopped() {
            let deadline = self.machine.poll_timeout().map(Instant::from_std);
            tokio::select! {
                Some(ev) = ev_rx.recv() => self.on_mqtt(ev),
                () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.on_timer();
                }
            }
        }
        if let Some(task) = self.aborted.take() {
            // Resolves once the task, and with it the socket, is gone.
            let _ = task.await;
        }
    }
}

/// Drives one rumqttc connection until its first error; the machine decides about reconnecting.
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
    fn packet_ids_map_back_to_message_ids_in_rumqttc_order() {
        let mut c = Correlation::default();
        c.handed(1, 1);
        c.handed(2, 0);
        c.handed(3, 2);
        // rumqttc numbers QoS >= 1 publishes from 1; QoS 0 ones are written with id 0.
        assert_eq!(c.written(1), None);
        assert_eq!(c.written(0), Some(2), "QoS 0 is done once written");
        assert_eq!(c.written(2), None);
        assert_eq!(c.acked(2), Some(3), "PUBCOMP of the QoS 2 one");
        assert_eq!(c.acked(1), Some(1));
        assert_eq!(c.acked(1), None, "acknowledged once");
        assert_eq!(c.acked(9), None, "not one of ours");
    }

    #[test]
    fn a_collided_publish_keeps_its_message_id() {
        let mut c = Correlation::default();
        c.handed(10, 1);
        c.handed(11, 1);
        c.handed(12, 1);
        assert_eq!(c.written(5), None);
        // Id 6 is still in use: rumqttc holds message 11 back until 6 is acknowledged, then
        // writes it with that id before taking message 12.
        c.await_ack();
        assert_eq!(c.acked(6), None);
        assert_eq!(c.written(6), None);
        assert_eq!(c.written(7), None);
        assert_eq!(c.acked(6), Some(11));
        assert_eq!(c.acked(7), Some(12));
        assert_eq!(c.acked(5), Some(10));
    }

    #[test]
    fn own_session_id_is_read_from_proc() {
        let me = std::process::id() as i32;
        let sid = session_id(me).expect("own session id");
        assert_eq!(sid, nix::unistd::getsid(None).expect("getsid").as_raw());
        assert_eq!(session_id(i32::MAX), None);
    }
}
