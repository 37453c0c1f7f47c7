//! Client transactions (RFC 3261 §17.1): one per branch we forward a
//! request on, one per OPTIONS probe, and the CANCELs we send.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::proxy::capacity::CallSlot;
use crate::proxy::forward::Hop;
use crate::sip::Method;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientState {
    /// INVITE: Calling; non-INVITE: Trying.
    Trying,
    Proceeding,
    Completed,
    Accepted,
}

/// Who a client transaction answers to: the server transaction it forks
/// from, or a health probe waiting for the outcome of its OPTIONS.
#[derive(Clone, Copy, Debug)]
pub enum Owner {
    Server(u64),
    Probe { probe: u64, sent: Instant },
}

pub struct ClientTx {
    pub owner: Owner,
    /// The loop hash in our branch; a response must carry it back.
    pub loop_hash: u64,
    /// The request's method; a response's CSeq must name it.
    pub method: SentMethod,
    /// What a retransmission sends: the request, then (INVITE, non-2xx
    /// final) the ACK.
    pub request: Bytes,
    pub hop: Hop,
    pub invite: bool,
    pub state: ClientState,
    pub retransmit: Duration,
    pub got_provisional: bool,
    /// CANCEL this branch as soon as it answers provisionally (§9.1).
    pub cancel_pending: bool,
    pub cancel_sent: bool,
    /// The branch's outcome has been counted in its response context.
    pub settled: bool,
    /// Timer C's deadline: pushed back by provisionals other than 100,
    /// pulled in to 64·T1 once the branch is CANCELed.
    pub timer_c_due: Instant,
    /// The end of its INVITE's whole life (`max_invite_lifetime`): Timer C
    /// is never pushed past it, whatever the provisionals.
    pub lifetime_end: Option<Instant>,
    /// For a branch to a gateway destination: its index among the relay's
    /// candidates.
    pub candidate: Option<usize>,
    /// The branch got a 101–199 (the UAS took the call).
    pub accepted: bool,
    /// The branch was given up for another: no more retransmissions.
    pub abandoned: bool,
    /// Its failure went to its destination's passive health already.
    pub failure_reported: bool,
    /// Over UDP, responses count only from `hop` (a group's
    /// `strict_source`); otherwise the branch's keyed token is the proof.
    pub strict_source: bool,
    /// The request as it would have gone over UDP, had it not been too
    /// large (§18.1.1): sent instead if the TCP connection is refused.
    pub udp_fallback: Option<Bytes>,
    /// A gateway candidate's silence limit (its `no_response`).
    pub no_response: Option<Duration>,
    /// The caller's connection (TCP, TLS, WS), for a 2xx retransmission
    /// that outlives the server transaction: its Via does not lead back.
    pub caller_flow: Option<Hop>,
    /// An INVITE's slot at its gateway destination: it becomes a call on a
    /// 2xx, and is given back on any other end of the branch.
    pub call_slot: Option<CallSlot>,
    /// Set once the branch has ended and lingers for its timers.
    pub ended: Option<super::ended::EndedMark>,
}

impl ClientTx {
    /// A client transaction that has just sent `request` to `hop`.
    pub fn new(
        owner: Owner,
        loop_hash: u64,
        method: SentMethod,
        request: Bytes,
        hop: Hop,
        t1: Duration,
        timer_c_due: Instant,
    ) -> Self {
        let invite = matches!(method, SentMethod::Known(Method::Invite));
        ClientTx {
            owner,
            loop_hash,
            method,
            request,
            hop,
            invite,
            state: ClientState::Trying,
            retransmit: t1,
            got_provisional: false,
            cancel_pending: false,
            cancel_sent: false,
            settled: false,
            timer_c_due,
            lifetime_end: None,
            candidate: None,
            accepted: false,
            abandoned: false,
            failure_reported: false,
            strict_source: false,
            udp_fallback: None,
            caller_flow: None,
            no_response: None,
            call_slot: None,
            ended: None,
        }
    }
}

impl ClientTx {
    /// Moves Timer C to `due`, or to the INVITE's end of life if sooner.
    pub fn push_timer_c(&mut self, due: Instant) {
        self.timer_c_due = self.lifetime_end.map_or(due, |end| due.min(end));
    }

    /// Whether a response from `source` may be this branch's (§17.1.3
    /// matches on branch and method; `strict_source` adds the address).
    pub fn accepts_from(&self, source: std::net::SocketAddr) -> bool {
        accepts_from(self.strict_source, &self.hop, source)
    }

    /// The INVITE has reached its end of life.
    pub fn past_lifetime(&self, now: Instant) -> bool {
        self.lifetime_end.is_some_and(|end| now >= end)
    }
}

/// Whether a response from `source` may be that of a branch sent to `hop`:
/// with `strict_source` over UDP, only from that address.
pub fn accepts_from(strict_source: bool, hop: &Hop, source: std::net::SocketAddr) -> bool {
    !strict_source || hop.protocol.is_reliable() || hop.addr == source
}

/// A CANCEL we sent for a branch (a non-INVITE client transaction of its
/// own, sharing the branch of the INVITE it cancels).
pub struct CancelTx {
    pub request: Bytes,
    pub hop: Hop,
    pub loop_hash: u64,
    pub retransmit: Duration,
}

/// The method of a request we sent, to check a response's CSeq against:
/// known methods without an allocation, extensions by their text.
pub enum SentMethod {
    Known(Method),
    Extension(Box<str>),
}

impl SentMethod {
    pub fn of(token: &str) -> Self {
        match Method::from_token(token) {
            Method::Other => SentMethod::Extension(token.into()),
            known => SentMethod::Known(known),
        }
    }

    /// True when `token` (a response's CSeq method) names this method.
    pub fn matches(&self, token: &str) -> bool {
        match self {
            SentMethod::Known(method) => Method::from_token(token) == *method,
            SentMethod::Extension(text) => **text == *token,
        }
    }
}
