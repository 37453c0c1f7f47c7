//! Server transactions (RFC 3261 §17.2): how a request finds its
//! transaction, and the state a transaction keeps.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::branch::MAGIC_COOKIE;
use super::context::ResponseContext;
use crate::proxy::decision::{Decision, GatewayRelay, Preroute, RelayCandidate};
use crate::sip::{HeaderName, Message, Method, Protocol};

/// What a request's transaction is found by (§17.2.3): for an RFC 3261
/// branch, the branch and the top Via's sent-by; for anything else (RFC
/// 2543 peers, or a bare `z9hG4bK`), the Request-URI, From tag, Call-ID,
/// CSeq number and top Via. ACK joins its INVITE; CANCEL stands apart.
///
/// The fields are kept as a 128-bit hash keyed with the engine's secret, so
/// finding a transaction allocates nothing; a peer that cannot see the key
/// cannot make two requests collide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServerKey {
    id: u128,
    class: MethodClass,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MethodClass {
    Invite,
    Cancel,
    Other,
}

impl MethodClass {
    pub fn of(method: Option<Method>) -> Self {
        match method {
            Some(Method::Invite | Method::Ack) => MethodClass::Invite,
            Some(Method::Cancel) => MethodClass::Cancel,
            _ => MethodClass::Other,
        }
    }
}

impl ServerKey {
    pub fn of(msg: &Message, secret: u64) -> ServerKey {
        let class = MethodClass::of(msg.method());
        let via = msg.top_via();
        let branch = via.as_ref().and_then(|v| v.branch()).unwrap_or("");
        let mut hasher = xxhash_rust::xxh3::Xxh3::with_seed(secret);
        let mut field = |text: &str| {
            hasher.update(text.as_bytes());
            hasher.update(&[0]);
        };
        match &via {
            Some(via) if branch.len() > MAGIC_COOKIE.len() && branch.starts_with(MAGIC_COOKIE) => {
                field("3261");
                field(branch);
                if via.host.bytes().any(|b| b.is_ascii_uppercase()) {
                    field(&via.host.to_ascii_lowercase());
                } else {
                    field(via.host);
                }
                field(itoa::Buffer::new().format(via.port.unwrap_or(5060)));
            }
            _ => {
                field("2543");
                field(msg.request_uri().unwrap_or(""));
                field(msg.from_tag().unwrap_or(""));
                field(msg.call_id().unwrap_or(""));
                field(itoa::Buffer::new().format(msg.cseq().map_or(0, |(n, _)| n)));
                field(msg.header(HeaderName::Via).unwrap_or(""));
            }
        }
        ServerKey {
            id: hasher.digest128(),
            class,
        }
    }

    /// The To tag of a stateless reply to this request: derived from the
    /// key, so a retransmission gets the same tag (RFC 3261 §8.2.7).
    pub fn stateless_tag(&self) -> String {
        format!("{:016x}", self.id as u64)
    }

    /// Whether `tag` is [`ServerKey::stateless_tag`] (without formatting
    /// one: this runs for the ACK of every answered call).
    pub fn is_stateless_tag(&self, tag: &str) -> bool {
        super::branch::parse_hex16(tag.as_bytes()) == Some(self.id as u64)
    }

    /// The key of the INVITE a CANCEL with this key cancels.
    pub fn invite_of_cancel(&self) -> ServerKey {
        ServerKey {
            id: self.id,
            class: MethodClass::Invite,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    Proceeding,
    /// A non-2xx final was sent (INVITE: awaiting ACK; others: absorbing).
    Completed,
    /// ACK received for the non-2xx final.
    Confirmed,
    /// A 2xx was sent for an INVITE (RFC 6026).
    Accepted,
}

pub struct ServerTx<F> {
    pub key: ServerKey,
    /// When the request arrived: an INVITE's life is bounded from here.
    pub started: Instant,
    /// The request, until a final response is sent (then only the key,
    /// the flow and the last response are needed).
    pub request: Option<Arc<Message>>,
    pub flow: F,
    pub protocol: Protocol,
    /// The listener the request arrived on.
    pub listener: usize,
    /// Where the request came from (a CANCEL must come from there too).
    pub source: SocketAddr,
    /// Where responses go: over UDP the Via's answer address; over TCP the
    /// address to open a new connection to if the request's is gone.
    pub reply_to: SocketAddr,
    pub invite: bool,
    pub state: ServerState,
    /// The last response sent, replayed for a retransmitted request.
    pub last_response: Option<Bytes>,
    pub to_tag: Option<String>,
    /// Client transactions (branch tokens) this request was forwarded on.
    pub branches: Vec<u64>,
    pub context: ResponseContext,
    pub final_sent: bool,
    pub cancelled: bool,
    pub retransmit: Duration,
    /// What another branch of this request is built from: the loop hash
    /// in our branches and what the core did to the Route set.
    pub loop_hash: u64,
    pub preroute: Preroute,
    /// A relay to a gateway destination: the candidates left to fail over to.
    pub failover: Option<Box<Failover>>,
    pub failure_hook: FailureHook,
    /// A 2xx this proxy made itself (the script's), retransmitted until
    /// its ACK (§13.3.1.4): the key the ACK is found by.
    pub ack_key: Option<u64>,
    /// Its spans, when the call is traced.
    pub trace: Option<Box<super::trace::TxTrace>>,
}

/// The failover state of a relay to a gateway destination (DESIGN.md §4.3).
pub struct Failover {
    pub relay: GatewayRelay,
    /// The script's decision, whose edits every branch carries.
    pub decision: Decision,
    /// The next candidate to try.
    pub next: usize,
    /// Branches opened so far.
    pub attempts: usize,
    /// A branch answered 101–199 or 2xx: the call is taken, no more failover.
    pub accepted: bool,
}

impl Failover {
    /// The next candidate, when failing over is still allowed.
    pub fn next_candidate(&self) -> Option<&RelayCandidate> {
        let policy = &self.relay.policy;
        if !policy.enabled || self.accepted || self.attempts >= policy.max_attempts {
            return None;
        }
        self.relay.candidates.get(self.next)
    }
}

/// Whether `@proxy.on_failure` ran for a server transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureHook {
    NotRun,
    /// Waiting for its decision, asked with this ticket.
    Running(u64),
    Ran,
}
