//! `capture.hep`: every SIP message sent and received goes, as a HEPv3
//! packet, to a collector (Homer, sngrep). The SIP threads only copy a
//! handle to the bytes into a bounded queue and go on; a thread of its own
//! filters, frames and sends. When the queue is full the message is
//! dropped and counted (`siphon_hep_dropped_total`), never waited for.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::capture::hep::HepPacket;
use crate::capture::{call_id_and_method, CaptureFilter};
use crate::config::{HepConfig, HepTransport};

/// How long the capture thread lets messages gather between batches.
const BATCH_PAUSE: Duration = Duration::from_millis(2);

/// One message as it crossed the wire.
struct Captured {
    source: SocketAddr,
    destination: SocketAddr,
    stream: bool,
    time: SystemTime,
    bytes: Bytes,
}

/// The SIP threads' side: a bounded queue to the capture thread.
pub struct Capture {
    queue: SyncSender<Captured>,
}

impl Capture {
    /// Starts the capture thread for `config`.
    pub fn start(config: &HepConfig) -> Result<Arc<Capture>, String> {
        let (queue, taken) = sync_channel(config.queue);
        let sender = HepSender {
            config: config.clone(),
            filter: CaptureFilter {
                methods: config.methods.clone(),
                sample: config.sample,
                seed: rand::random(),
            },
            udp: None,
            tcp: None,
            frame: Vec::new(),
        };
        std::thread::Builder::new()
            .name("hep-capture".into())
            .spawn(move || sender.run(taken))
            .map_err(|e| format!("capture.hep: cannot start the capture thread: {e}"))?;
        tracing::info!(collector = %config.address, transport = ?config.transport, "capturing SIP as HEPv3");
        Ok(Arc::new(Capture { queue }))
    }

    /// A message that crossed the wire from `source` to `destination`
    /// (over a stream when `stream`), now.
    pub fn record(&self, source: SocketAddr, destination: SocketAddr, stream: bool, bytes: &Bytes) {
        let captured = Captured {
            source,
            destination,
            stream,
            time: SystemTime::now(),
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
    udp: Option<UdpSocket>,
    tcp: Option<TcpStream>,
    frame: Vec<u8>,
}

impl HepSender {
    /// Takes what is queued in batches, a pause apart: the SIP threads then
    /// wake this one a few hundred times a second at most, not once per
    /// message (which doubled the context switches per call).
    fn run(mut self, taken: Receiver<Captured>) {
        while let Ok(first) = taken.recv() {
            self.capture(first);
            while let Ok(next) = taken.try_recv() {
                self.capture(next);
            }
            std::thread::sleep(BATCH_PAUSE);
        }
    }

    fn capture(&mut self, captured: Captured) {
        let (call_id, method) = call_id_and_method(&captured.bytes);
        if !self.filter.takes(call_id, method) {
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

    /// Sends the frame; over TCP, (re)connects first, at most once per
    /// packet, so a collector that is gone costs a refused connect.
    fn send(&mut self) -> bool {
        let address = self.config.address;
        match self.config.transport {
            HepTransport::Udp => {
                if self.udp.is_none() {
                    let any: SocketAddr = match address {
                        SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
                        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
                    };
                    self.udp = UdpSocket::bind(any).ok();
                }
                self.udp
                    .as_ref()
                    .is_some_and(|socket| socket.send_to(&self.frame, address).is_ok())
            }
            HepTransport::Tcp => {
                if self.tcp.is_none() {
                    self.tcp = TcpStream::connect_timeout(&address, Duration::from_millis(500))
                        .ok()
                        .inspect(|stream| {
                            let _ = stream.set_write_timeout(Some(Duration::from_millis(500)));
                            let _ = stream.set_nodelay(true);
                        });
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
