//! `capture.hep`: every SIP message sent and received goes, as a HEPv3
//! packet, to a collector (Homer, sngrep). The SIP threads only copy a
//! handle to the bytes into a bounded queue and go on; a thread of its own
//! filters, frames and sends. When the queue is full the message is
//! dropped and counted (`siphon_hep_dropped_total`), never waited for.
//!
//! The thread holds each message back [`HOLD`] before it sends it, so that
//! the script's `request.capture(False)` for a request takes that request
//! out of capture too, not only what follows it.

use std::collections::VecDeque;
use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use crate::capture::hep::HepPacket;
use crate::capture::{call_id_and_method, CaptureFilter, Uncaptured};
use crate::config::{HepConfig, HepTransport};

/// How long the capture thread lets messages gather between batches.
const BATCH_PAUSE: Duration = Duration::from_millis(2);

/// How long a message waits before it is sent: longer than a script
/// decision takes, so that `request.capture(False)` catches its own
/// request. A decision later than this (a handler near its timeout) leaves
/// the request captured and only what follows out.
pub const HOLD: Duration = Duration::from_millis(250);

/// One message as it crossed the wire.
struct Captured {
    source: SocketAddr,
    destination: SocketAddr,
    stream: bool,
    time: SystemTime,
    at: Instant,
    bytes: Bytes,
}

/// The SIP threads' side: a bounded queue to the capture thread.
pub struct Capture {
    queue: SyncSender<Captured>,
    uncaptured: Arc<Uncaptured>,
}

impl Capture {
    /// Starts the capture thread for `config`.
    pub fn start(config: &HepConfig) -> Result<Arc<Capture>, String> {
        let (queue, taken) = sync_channel(config.queue);
        let uncaptured = Arc::new(Uncaptured::new(rand::random()));
        let sender = HepSender {
            uncaptured: uncaptured.clone(),
            held: VecDeque::new(),
            config: config.clone(),
            filter: CaptureFilter {
                methods: config.methods.clone(),
                sample: config.sample,
                seed: rand::random(),
            },
            udp: None,
            tcp: None,
            next_connect: Instant::now(),
            pause: Duration::ZERO,
            warnings: crate::logging::Throttle::new(Duration::from_secs(10)),
            frame: Vec::new(),
        };
        std::thread::Builder::new()
            .name("hep-capture".into())
            .spawn(move || sender.run(taken))
            .map_err(|e| format!("capture.hep: cannot start the capture thread: {e}"))?;
        tracing::info!(collector = %config.address, transport = ?config.transport, "capturing SIP as HEPv3");
        Ok(Arc::new(Capture { queue, uncaptured }))
    }

    /// The script's `request.capture(on)` for the call `call_id`.
    pub fn set_captured(&self, call_id: &str, on: bool) {
        self.uncaptured.set(call_id, on);
    }

    /// A message that crossed the wire from `source` to `destination`
    /// (over a stream when `stream`), now.
    pub fn record(&self, source: SocketAddr, destination: SocketAddr, stream: bool, bytes: &Bytes) {
        let captured = Captured {
            source,
            destination,
            stream,
            time: SystemTime::now(),
            at: Instant::now(),
            bytes: bytes.clone(),
        };
        match self.queue.try_send(captured) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => crate::metrics::get().hep_dropped("queue_full"),
            Err(TrySendError::Disconnected(_)) => crate::metrics::get().hep_dropped("stopped"),
        }
    }
}

/// The capture thread: filters, frames and sends.
struct HepSender {
    config: HepConfig,
    filter: CaptureFilter,
    uncaptured: Arc<Uncaptured>,
    /// Messages waiting out [`HOLD`], oldest first (at most `queue`).
    held: VecDeque<Captured>,
    udp: Option<UdpSocket>,
    tcp: Option<TcpStream>,
    /// No TCP connect before this, after a failed one; and the pause.
    next_connect: Instant,
    pause: Duration,
    warnings: crate::logging::Throttle,
    frame: Vec<u8>,
}

impl HepSender {
    /// Takes what is queued in batches, a pause apart: the SIP threads then
    /// wake this one a few hundred times a second at most, not once per
    /// message (which doubled the context switches per call).
    fn run(mut self, taken: Receiver<Captured>) {
        loop {
            let wait = match self.held.front() {
                Some(oldest) => (oldest.at + HOLD).saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            match taken.recv_timeout(wait) {
                Ok(first) => {
                    self.hold(first);
                    while let Ok(next) = taken.try_recv() {
                        self.hold(next);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            while self.held.front().is_some_and(|m| m.at + HOLD <= now) {
                let due = self.held.pop_front().expect("checked");
                self.capture(due);
            }
            std::thread::sleep(BATCH_PAUSE);
        }
        while let Some(left) = self.held.pop_front() {
            self.capture(left);
        }
    }

    /// Keeps `captured` until it is due; past `queue` held, the oldest
    /// goes at once.
    fn hold(&mut self, captured: Captured) {
        if self.held.len() >= self.config.queue {
            if let Some(oldest) = self.held.pop_front() {
                self.capture(oldest);
            }
        }
        self.held.push_back(captured);
    }

    fn capture(&mut self, captured: Captured) {
        let (call_id, method) = call_id_and_method(&captured.bytes);
        if !self.filter.takes(call_id, method) || self.uncaptured.contains(call_id) {
            return;
        }
        let packet = HepPacket {
            source: captured.source,
            destination: captured.destination,
            stream: captured.stream,
            time: captured.time,
            capture_id: self.config.id,
            auth_key: self.config.password.as_deref(),
            correlation_id: call_id,
            payload: &captured.bytes,
        };
        if let Err(e) = packet.encode(&mut self.frame) {
            tracing::debug!(error = ?e, "a message HEP cannot carry; not captured");
            crate::metrics::get().hep_dropped("unframable");
            return;
        }
        if !self.send() {
            crate::metrics::get().hep_dropped("send_failed");
        }
    }

    /// Sends the frame. The UDP socket is connected to the collector, so
    /// that one that is gone (ICMP port unreachable) shows as a failed
    /// send. Over TCP a lost connection is made again, but after a failed
    /// attempt not before a pause (1 s, doubling to 30 s), during which
    /// packets are dropped at once rather than each wait for a connect.
    fn send(&mut self) -> bool {
        let address = self.config.address;
        match self.config.transport {
            HepTransport::Udp => {
                if self.udp.is_none() {
                    let any: SocketAddr = match address {
                        SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
                        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
                    };
                    self.udp = UdpSocket::bind(any)
                        .and_then(|socket| socket.connect(address).map(|()| socket))
                        .ok();
                }
                self.udp
                    .as_ref()
                    .is_some_and(|socket| socket.send(&self.frame).is_ok())
            }
            HepTransport::Tcp => {
                if self.tcp.is_none() && Instant::now() >= self.next_connect {
                    self.tcp = TcpStream::connect_timeout(&address, Duration::from_millis(500))
                        .inspect(|stream| {
                            let _ = stream.set_write_timeout(Some(Duration::from_millis(500)));
                            let _ = stream.set_nodelay(true);
                        })
                        .inspect_err(|e| {
                            self.pause = (self.pause * 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
                            self.next_connect = Instant::now() + self.pause;
                            if let Some(held_back) = self.warnings.allow() {
                                tracing::warn!(collector = %address, error = %e, held_back, retry_in_secs = self.pause.as_secs(), "capture.hep: cannot connect to the collector; messages are dropped meanwhile");
                            }
                        })
                        .ok();
                    if self.tcp.is_some() {
                        self.pause = Duration::ZERO;
                    }
                }
                let sent = self
                    .tcp
                    .as_mut()
                    .is_some_and(|stream| stream.write_all(&self.frame).is_ok());
                if !sent {
                    self.tcp = None;
                }
                sent
            }
        }
    }
}
