//! Relays to gateway candidates and failover between them (DESIGN.md
//! §4.3), passive health reports, and branches ended by a failed link.

use super::*;

impl<F: Clone> Engine<F> {
    /// `relay(uri)` to the first of a gateway group's candidates: the
    /// request keeps the rest to fail over to (DESIGN.md §4.3).
    pub(super) fn relay_to_gateway(
        &mut self,
        now: Instant,
        pending: &Pending,
        slot: u64,
        decision: Decision,
        relay: GatewayRelay,
    ) {
        let failover = Box::new(Failover {
            relay,
            decision,
            next: 0,
            attempts: 0,
            accepted: false,
        });
        self.open_candidate(now, pending, slot, failover);
    }

    /// Opens a branch to the failover's next candidate that can take the
    /// request, and keeps the failover with the server transaction. An
    /// INVITE takes a slot at its destination first: one that is full,
    /// paced or drained is skipped like one that is down, without
    /// counting as a failure. When none is left, the request is answered
    /// 503 with Retry-After (or `@proxy.on_failure` runs). Returns the
    /// candidate's uri.
    fn open_candidate(
        &mut self,
        now: Instant,
        pending: &Pending,
        slot: u64,
        mut failover: Box<Failover>,
    ) -> Option<Arc<str>> {
        let invite = pending.msg.method() == Some(Method::Invite);
        let mut refused: Option<u64> = None;
        let (index, candidate, call_slot) = loop {
            let index = failover.next;
            let Some(candidate) = failover.relay.candidates.get(index) else {
                let group = failover.relay.group.clone();
                if let Some(tx) = self.servers.get_mut(&slot) {
                    tx.failover = Some(failover);
                }
                if let Some(retry_after) = refused {
                    self.every_candidate_full(now, slot, group, retry_after);
                }
                return None;
            };
            failover.next += 1;
            let record_routed = failover.decision.record_route;
            match take_slot(
                candidate,
                &failover.relay.group,
                now,
                (invite, record_routed),
            ) {
                Ok(call_slot) => break (index, candidate.clone(), call_slot),
                Err(refusal) => {
                    let wait = refusal.retry_after_secs();
                    refused = Some(refused.map_or(wait, |known| known.min(wait)));
                }
            }
        };
        failover.attempts += 1;
        let decision = &failover.decision;
        let plan = BranchPlan {
            hop: candidate.hop,
            new_ruri: decision.new_ruri.as_deref(),
            push_routes: &[],
            routes_popped: decision.routes_popped,
            append_route: None,
            candidate: Some((
                index,
                failover.relay.policy.no_response,
                failover.relay.policy.strict_source,
            )),
            max_breadth: None,
            may_leave_udp: !pins_udp(&candidate.uri),
            call_slot,
        };
        let token = self.open_branch(now, pending, decision, plan);
        if let Some(token) = token {
            self.trace_branch_gateway(slot, token, &failover.relay.group, &candidate.uri);
        }
        if let Some(tx) = self.servers.get_mut(&slot) {
            tx.failover = Some(failover);
        }
        Some(candidate.uri)
    }

    /// No candidate could take the request: it settles as a 503 with
    /// `retry_after` once its other branches (if any) are done.
    fn every_candidate_full(&mut self, now: Instant, slot: u64, group: Arc<str>, retry_after: u64) {
        self.out.push_back(Output::GatewayFull { group });
        let Some(tx) = self.servers.get_mut(&slot) else {
            return;
        };
        tx.context.open_branch();
        self.branch_done(slot, Some(Candidate::Full(retry_after)), now);
    }

    /// A branch to gateway candidate `index` failed: its group hears of it,
    /// and the request fails over to the next candidate when it still may
    /// (never after a CANCEL, a final response sent, or a branch that took
    /// the call). Returns whether a new branch was opened.
    pub(super) fn gateway_failed(
        &mut self,
        now: Instant,
        (slot, token, index): (u64, u64, usize),
        failure: RelayFailure,
        retry_after: Option<Duration>,
    ) -> bool {
        // A branch counts once for its destination's health, whatever else
        // befalls it (silence, then Timer B; a link failure, then silence).
        // A destination that answered 100 is up: silence after it, or a 408,
        // is its callee's timeout, which any caller can provoke by calling
        // a number that never answers.
        let first_report = self.clients.get_mut(&token).is_some_and(|client| {
            let callee_timeout = client.got_provisional
                && matches!(
                    failure,
                    RelayFailure::NoResponse | RelayFailure::Status(408)
                );
            !std::mem::replace(&mut client.failure_reported, true) && !callee_timeout
        });
        let Some(tx) = self.servers.get_mut(&slot) else {
            return false;
        };
        let Some(failover) = tx.failover.take() else {
            return false;
        };
        let group = failover.relay.group.clone();
        let failed = failover.relay.candidates.get(index).map(|c| c.uri.clone());
        let passive_health = failover.relay.policy.passive_health;
        if let (Some(uri), true, true) = (&failed, first_report, passive_health) {
            self.out.push_back(Output::Health(HealthReport {
                group: group.clone(),
                uri: uri.clone(),
                failure: Some((failure, retry_after)),
            }));
        }
        // Never past an INVITE's end of life: its caller is owed a 408.
        let alive = !tx.invite || now < tx.started + self.config.timers.max_invite_lifetime;
        let may_fail_over = !tx.final_sent && !tx.cancelled && alive;
        let request = tx.request.clone();
        let (Some(msg), Some(failed), true, Some(_)) =
            (request, failed, may_fail_over, failover.next_candidate())
        else {
            tx.failover = Some(failover);
            self.trace_branch_failed(slot, token, now, failure, None);
            return false;
        };
        let pending = self.pending_of(slot, msg);
        let call_id = pending.msg.call_id().unwrap_or("").to_string();
        let Some(next) = self.open_candidate(now, &pending, slot, failover) else {
            self.trace_branch_failed(slot, token, now, failure, None);
            return false;
        };
        self.trace_branch_failed(slot, token, now, failure, Some(&next));
        let trace_id = self.trace_id_of(Some(slot));
        self.out.push_back(Output::Failover(FailoverEvent {
            group,
            call_id,
            failed,
            next,
            failure,
            trace_id,
        }));
        true
    }

    /// A candidate branch answered `code`: a success for its destination's
    /// passive health when from 101 to 499 (a 100 proves only that the
    /// host is up), and a 101–299 takes the call, unless the branch was
    /// given up for another already. A given-up branch's late answer is no
    /// success: it came too late for its caller, and it would wipe out the
    /// failure its silence counted.
    pub(super) fn gateway_answered(&mut self, slot: u64, index: usize, code: u16, abandoned: bool) {
        let Some(failover) = self
            .servers
            .get_mut(&slot)
            .and_then(|tx| tx.failover.as_mut())
        else {
            return;
        };
        if (101..300).contains(&code) && !abandoned {
            failover.accepted = true;
        }
        let group = &failover.relay.group;
        let Some(candidate) = failover.relay.candidates.get_mut(index) else {
            return;
        };
        if (101..500).contains(&code) && !abandoned && std::mem::take(&mut candidate.report_success)
        {
            self.out.push_back(Output::Health(HealthReport {
                group: group.clone(),
                uri: candidate.uri.clone(),
                failure: None,
            }));
        }
    }

    /// The failure a final response from a candidate amounts to, if its
    /// group's policy lists the code.
    pub(super) fn status_failure(&self, slot: u64, code: u16) -> Option<RelayFailure> {
        let failover = self.servers.get(&slot)?.failover.as_ref()?;
        failover
            .relay
            .policy
            .on_codes
            .contains(&code)
            .then_some(RelayFailure::Status(code))
    }

    /// The connection to `hop` failed (a TCP connect refused, a reset; a
    /// flow when the peer had opened it). A branch there with no answer yet
    /// ends now rather than at Timer B/F:
    /// - toward a gateway candidate, the request fails over (RFC 3261
    ///   §8.1.3.1 treats a transport error as a 503);
    /// - toward any other hop, it is as if the hop had answered 503 (§16.9),
    ///   which goes upstream as a 500 (§16.7 step 6);
    /// - over a client's own connection (a flow), it ends with 430 Flow
    ///   Failed (RFC 5626 §5.3), ringing or not: no answer can come, and
    ///   nothing can be sent to it any more.
    pub fn handle_link_failure(&mut self, now: Instant, hop: &Hop) {
        if hop.flow {
            // A caller's own connection closed (a browser tab, a phone
            // gone): when no new connection can reach it (§18.2.2 would
            // open one to its Via), nobody is left to answer its pending
            // INVITEs, so they are CANCELed rather than left ringing until
            // Timer C.
            let orphaned: Vec<u64> = self
                .servers
                .iter()
                .filter(|(_, tx)| {
                    tx.invite
                        && !tx.final_sent
                        && tx.protocol == hop.protocol
                        && tx.source == hop.addr
                        && !reachable_anew(tx)
                })
                .map(|(&slot, _)| slot)
                .collect();
            for slot in orphaned {
                tracing::debug!(caller = %hop.addr, "the caller's connection closed; CANCELing its INVITE");
                self.cancel_request(slot, now);
            }
        }
        let waiting: Vec<(u64, bool, bool)> = self
            .clients
            .iter()
            .filter(|(_, c)| c.hop == *hop && c.hop.flow == hop.flow && !c.settled)
            .filter(|(_, c)| match c.hop.flow {
                true => matches!(c.state, ClientState::Trying | ClientState::Proceeding),
                false => c.state == ClientState::Trying,
            })
            .map(|(&token, c)| (token, c.hop.flow, c.candidate.is_some()))
            .collect();
        for (token, flow, candidate) in waiting {
            if self.fall_back_to_udp(token, now) {
                continue;
            }
            match (flow, candidate) {
                (true, _) => {
                    self.end_branch(token, now, "flow failed", |_| Some(Candidate::FLOW_FAILED))
                }
                (false, true) => self.candidate_failed(now, token, RelayFailure::Transport),
                (false, false) => self.end_branch(token, now, "transport error", |_| {
                    Some(Candidate::TRANSPORT_ERROR)
                }),
            }
        }
    }

    /// A branch to a candidate got no response in time: if the request
    /// fails over, this branch is given up (CANCELed once it answers).
    pub(super) fn candidate_silent(&mut self, now: Instant, token: u64) {
        self.candidate_failed(now, token, RelayFailure::NoResponse);
    }

    /// A branch to a candidate failed without a final response: if the
    /// request fails over, this branch is given up (CANCELed should it
    /// answer after all).
    fn candidate_failed(&mut self, now: Instant, token: u64, failure: RelayFailure) {
        let Some(client) = self.clients.get(&token) else {
            return;
        };
        let (Owner::Server(slot), Some(index), false) =
            (client.owner, client.candidate, client.settled)
        else {
            return;
        };
        if !self.gateway_failed(now, (slot, token, index), failure, None) {
            if failure == RelayFailure::Transport {
                // Nowhere left to go, and nothing will come over a dead
                // link: the branch ends now rather than at Timer B, as if
                // it had answered 503 (§16.9).
                self.end_branch(token, now, "transport error", |_| {
                    Some(Candidate::TRANSPORT_ERROR)
                });
            }
            return;
        }
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        client.abandoned = true;
        client.settled = true;
        // Given up for another: its slot goes free now, not at Timer B (a
        // late 2xx from it is then relayed but not counted).
        client.call_slot = None;
        let invite = client.invite;
        self.cancel_branch(token, now);
        if let Some(tx) = self.servers.get_mut(&slot) {
            tx.context.settle(invite.then_some(Candidate::TIMEOUT));
        }
    }

    /// What another branch of a server transaction's request is built from.
    pub(super) fn pending_of(&self, slot: u64, msg: Arc<Message>) -> Pending {
        let tx = self.servers.get(&slot);
        Pending {
            msg,
            source: tx.map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |tx| tx.source),
            protocol: tx.map_or(Protocol::Udp, |tx| tx.protocol),
            listener: tx.map_or(0, |tx| tx.listener),
            loop_hash: tx.map_or(0, |tx| tx.loop_hash),
            preroute: tx.map(|tx| tx.preroute.clone()).unwrap_or_default(),
            slot: Some(slot),
            failure_run: false,
        }
    }
}

/// A gateway candidate's go-ahead: for an INVITE, a slot at its
/// destination (its call limit and pace); for anything else, only that it
/// is not drained. A place that is no destination always goes.
fn take_slot(
    candidate: &crate::proxy::decision::RelayCandidate,
    group: &Arc<str>,
    now: Instant,
    (invite, record_routed): (bool, bool),
) -> Result<Option<CallSlot>, Refusal> {
    let Some(capacity) = &candidate.capacity else {
        return Ok(None);
    };
    if !invite {
        return match capacity.is_draining() {
            true => Err(Refusal::Draining),
            false => Ok(None),
        };
    }
    Ok(Some(CallSlot {
        reservation: capacity.reserve(now)?,
        group: group.clone(),
        uri: candidate.uri.clone(),
        record_routed,
    }))
}

/// Whether a caller whose connection closed can be reached by a new one
/// (RFC 3261 §18.2.2): a TCP or TLS caller whose Via names a host (its
/// name, or the address it connected from). Not a WebSocket client, nor
/// one whose Via is `.invalid` or another address than its own (behind NAT).
fn reachable_anew<F>(tx: &ServerTx<F>) -> bool {
    let Some(via) = tx.request.as_ref().and_then(|r| r.top_via()) else {
        return false;
    };
    let host = via.host.trim_matches(['[', ']']);
    let reachable = match host.parse::<IpAddr>() {
        Ok(ip) => crate::security::canonical(ip) == crate::security::canonical(tx.source.ip()),
        Err(_) => !host.to_ascii_lowercase().ends_with(".invalid"),
    };
    matches!(tx.protocol, Protocol::Tcp | Protocol::Tls) && reachable
}
