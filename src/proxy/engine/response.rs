//! Responses: those from branches, chosen and forwarded upstream (RFC 3261
//! §16.7), and those this proxy makes itself, with or without a server
//! transaction.

use super::*;

impl<F: Clone> Engine<F> {
    // ----- responses ------------------------------------------------------

    /// A response arrived from `source`.
    pub fn handle_response(&mut self, now: Instant, msg: Message, source: SocketAddr) {
        let Some(via) = msg.top_via() else { return };
        if !self.is_our_via(&via) {
            tracing::debug!(
                call_id = msg.call_id().unwrap_or(""),
                "response not for us; dropped"
            );
            return;
        }
        let Some((loop_hash, token)) = via.branch().and_then(parse_client_branch) else {
            tracing::debug!("response with a branch we never sent; dropped");
            return;
        };
        let method = msg.cseq().map_or("", |(_, method)| method);
        if method == "CANCEL" {
            let matches = self
                .cancels
                .get(&token)
                .is_some_and(|cancel| cancel.loop_hash == loop_hash);
            if matches && msg.status().unwrap_or(0) >= 200 {
                self.cancels.remove(&token);
            }
            return;
        }
        match self.clients.get(&token) {
            Some(client) => {
                // §17.1.3 matches on branch and method only: a hop behind
                // a VIP, or bound to every address of a multi-homed host,
                // answers from another address than we sent to. The
                // branch's token is keyed, so it cannot be guessed.
                if client.loop_hash != loop_hash
                    || !client.method.matches(method)
                    || !client.accepts_from(source)
                {
                    tracing::debug!(
                        %source,
                        "response does not match the request we sent; dropped"
                    );
                    return;
                }
                self.on_client_response(now, token, msg);
            }
            None => match self.ended_clients.get(&token) {
                Some(ended)
                    if ended.loop_hash == loop_hash
                        && ended.method.matches(method)
                        && accepts_from(ended.strict_source, &ended.hop, source) =>
                {
                    self.on_ended_client_response(now, token, &msg)
                }
                Some(_) => tracing::debug!(
                    %source,
                    "response does not match the request we sent; dropped"
                ),
                // RFC 6026 §8.5: a response that matches no client
                // transaction is not forwarded (late 2xx ride on the
                // Accepted state).
                None => tracing::debug!("response for no transaction; dropped"),
            },
        }
    }

    /// A final response again for a branch that got its final: an INVITE's
    /// 2xx goes upstream (RFC 6026 §7.2; after a non-2xx one, the branch is
    /// Accepted from now on), an INVITE's non-2xx gets its ACK again, the
    /// rest is absorbed.
    fn on_ended_client_response(&mut self, now: Instant, token: u64, msg: &Message) {
        let code = msg.status().unwrap_or(0);
        let timeout = self.settings().timeout();
        let Some(ended) = self.ended_clients.get_mut(&token) else {
            return;
        };
        let (slot, candidate, abandoned) = (ended.server, ended.candidate, ended.abandoned);
        if code < 200 || !ended.invite {
            return;
        }
        if (200..300).contains(&code) {
            let first = ended.state != ClientState::Accepted;
            ended.state = ClientState::Accepted;
            ended.ack = Bytes::new();
            let caller_flow = ended.caller_flow.as_deref().cloned();
            if first {
                let owner = TimerOwner::Client(token);
                self.timers.arm(now, timeout, owner, TimerKind::M);
                self.recharge_client(token, now + timeout);
            }
            if let Some(index) = candidate {
                self.gateway_answered(slot, index, code, abandoned);
            }
            self.forward_2xx(slot, msg, caller_flow, now);
        } else if ended.state == ClientState::Completed {
            let (hop, ack) = (ended.hop.clone(), ended.ack.clone());
            self.send(hop, ack);
        }
    }

    fn on_client_response(&mut self, now: Instant, token: u64, msg: Message) {
        let code = msg.status().unwrap_or(0);
        let settings = self.settings();
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let slot = match client.owner {
            Owner::Server(slot) => slot,
            Owner::Probe { probe, sent } => {
                if code >= 200 {
                    self.remove_client(token);
                    self.out.push_back(Output::ProbeDone {
                        probe,
                        outcome: ProbeOutcome {
                            status: Some(code),
                            retry_after: retry_after(&msg),
                            latency: now.saturating_duration_since(sent),
                        },
                    });
                }
                return;
            }
        };
        let candidate = client.candidate;
        let abandoned = client.abandoned;
        // A branch that had its final counts again only for a 2xx (a
        // reordered 1xx after a 503 must not stop the failover); the same
        // as once it is in the compact table.
        let live = matches!(client.state, ClientState::Trying | ClientState::Proceeding);
        if let Some(index) = candidate.filter(|_| live || (200..300).contains(&code)) {
            self.gateway_answered(slot, index, code, abandoned);
        }
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        if code < 200 {
            if client.state == ClientState::Trying {
                client.state = ClientState::Proceeding;
                // Timer C only ends a Proceeding branch: one that fired
                // while the branch was still Trying (a branch opened near
                // its INVITE's end of life) must come again.
                if client.invite && client.timer_c_due <= now {
                    self.timers
                        .arm(now, Duration::ZERO, TimerOwner::Client(token), TimerKind::C);
                }
            }
            if client.state != ClientState::Proceeding {
                return;
            }
            client.got_provisional = true;
            client.accepted |= code > 100;
            // §16.8: only a provisional other than 100 resets Timer C, and
            // nothing extends a branch that is being CANCELed.
            if code > 100 && !client.cancel_sent {
                client.push_timer_c(now + settings.timer_c);
            }
            let abandoned = client.abandoned;
            if std::mem::take(&mut client.cancel_pending) {
                self.cancel_branch(token, now);
            }
            // A branch given up for another is being CANCELed: its ringing
            // or early media is not the caller's.
            if code > 100 && !abandoned {
                self.forward_provisional(slot, &msg);
            }
            return;
        }
        let success = (200..300).contains(&code);
        let client = if self.config.tracing.is_some() {
            self.trace_branch_ended(slot, token, now, Some(code), "");
            let Some(client) = self.clients.get_mut(&token) else {
                return;
            };
            client
        } else {
            client
        };
        if client.invite && success {
            let first = client.state != ClientState::Accepted;
            client.state = ClientState::Accepted;
            if let Some(call_slot) = client.call_slot.take().filter(|s| s.record_routed) {
                // The call counts at its destination until its BYE.
                let call_id = msg.call_id().unwrap_or("");
                let callee_tag = msg.to_tag().unwrap_or("");
                let started = self.calls.start(call_slot, call_id, callee_tag, now);
                if started == Err(NotCounted::TableFull) {
                    self.untracked_calls += 1;
                    if self.untracked_calls % 10_000 == 1 {
                        tracing::warn!(
                            untracked = self.untracked_calls,
                            counted = self.calls.len(),
                            "the table of calls is full: calls are relayed but not counted against their destinations"
                        );
                    }
                }
            }
            let Some(client) = self.clients.get_mut(&token) else {
                return;
            };
            // Only 2xx retransmissions are left to forward: nothing to resend.
            client.request = Bytes::new();
            let was_settled = std::mem::replace(&mut client.settled, true);
            if first {
                self.timers.arm(
                    now,
                    settings.timeout(),
                    TimerOwner::Client(token),
                    TimerKind::M,
                );
                self.client_ended(token, now + settings.timeout());
            }
            let Some(client) = self.clients.get_mut(&token) else {
                return;
            };
            if !was_settled {
                if let Some(tx) = self.servers.get_mut(&slot) {
                    tx.context.settle(None);
                }
            }
            let caller_flow = client.caller_flow.clone();
            self.forward_2xx(slot, &msg, caller_flow, now);
            return;
        }
        if matches!(client.state, ClientState::Completed | ClientState::Accepted) {
            // A retransmitted final: re-send an INVITE's ACK, absorb the rest.
            if client.invite && client.state == ClientState::Completed {
                let (hop, ack) = (client.hop.clone(), client.request.clone());
                self.send(hop, ack);
            }
            return;
        }
        client.state = ClientState::Completed;
        // No call: the slot is free at once, not when Timer D ends.
        client.call_slot = None;
        let reliable = client.hop.protocol.is_reliable();
        let was_settled = std::mem::replace(&mut client.settled, true);
        let invite = client.invite;
        if invite {
            self.send_ack(token, &msg);
            let linger = if reliable {
                Duration::ZERO
            } else {
                Duration::from_secs(32).max(settings.timeout())
            };
            self.timers
                .arm(now, linger, TimerOwner::Client(token), TimerKind::D);
            self.client_ended(token, now + linger);
        } else {
            client.request = Bytes::new();
            let linger = if reliable {
                Duration::ZERO
            } else {
                settings.t4
            };
            self.timers
                .arm(now, linger, TimerOwner::Client(token), TimerKind::K);
            self.client_ended(token, now + linger);
        }
        if was_settled {
            return;
        }
        if success {
            // §16.7 step 5: a non-INVITE 2xx goes upstream at once.
            if let Some(tx) = self.servers.get_mut(&slot) {
                tx.context.settle(None);
            }
            let bytes = Bytes::from(forward::strip_top_via(&msg));
            self.send_final(slot, code, bytes, now);
        } else {
            if let (Some(index), Some(failure)) = (candidate, self.status_failure(slot, code)) {
                // The next candidate's branch opens before this one settles,
                // so the context does not conclude in between.
                self.gateway_failed(now, (slot, token, index), failure, retry_after(&msg));
            }
            self.branch_done(slot, Some(Candidate::Response(msg)), now);
        }
    }

    /// ACKs a non-2xx final hop by hop (RFC 3261 §17.1.1.3).
    fn send_ack(&mut self, token: u64, response: &Message) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let Ok(sent) = sip::parse(client.request.clone()) else {
            return;
        };
        let ack = Bytes::from(build::ack_for_non2xx(&sent, response));
        // From now on the ACK is what a retransmitted final gets.
        client.request = ack.clone();
        let hop = client.hop.clone();
        self.send(hop, ack);
    }

    fn forward_provisional(&mut self, slot: u64, msg: &Message) {
        let Some(tx) = self.servers.get_mut(&slot) else {
            return;
        };
        if tx.final_sent {
            return;
        }
        let bytes = Bytes::from(forward::strip_top_via(msg));
        tx.last_response = Some(bytes.clone());
        let (flow, dest) = (tx.flow.clone(), tx.reply_to);
        self.reply(&flow, dest, bytes, msg.status());
    }

    /// Every 2xx goes upstream, even after another branch's (§16.7 step 5);
    /// the first one also settles the server transaction. Once the server
    /// transaction is gone, a retransmitted 2xx still goes on, by its Via.
    fn forward_2xx(&mut self, slot: u64, msg: &Message, caller_flow: Option<Hop>, now: Instant) {
        let code = msg.status().unwrap_or(200);
        let bytes = Bytes::from(forward::strip_top_via(msg));
        if self.servers.contains_key(&slot) {
            self.send_final(slot, code, bytes, now);
        } else if let Some(ended) = self.ended_servers.get(&slot) {
            // A later 2xx (another branch's, or a retransmission).
            let (flow, dest) = (ended.flow.clone(), ended.reply_to);
            self.reply(&flow, dest, bytes, Some(code));
        } else {
            self.forward_stray(msg, caller_flow);
        }
    }

    /// A branch ended with a non-2xx final, or gave up (`candidate` is then
    /// a timeout for an INVITE and nothing otherwise). Once no branch is
    /// pending, the best response goes upstream (§16.7 step 6).
    pub(super) fn branch_done(&mut self, slot: u64, candidate: Option<Candidate>, now: Instant) {
        let Some(tx) = self.servers.get_mut(&slot) else {
            return;
        };
        let six_hundred = candidate.as_ref().is_some_and(|c| c.code() >= 600);
        tx.context.settle(candidate);
        if tx.final_sent {
            return;
        }
        if tx.invite && six_hundred {
            // §16.7: CANCEL the others; those that never answered are given
            // up at once, as after the caller's CANCEL, so the 6xx need not
            // wait for Timer B.
            for token in tx.branches.clone() {
                self.cancel_branch(token, now);
                self.give_up_if_unanswered(slot, token, now);
            }
        }
        let Some(tx) = self.servers.get_mut(&slot) else {
            return;
        };
        if tx.context.branches_pending() > 0 {
            return;
        }
        // §16.7: after a 6xx no new branch may open, so the failure hook
        // (which may relay or fork) does not run.
        let declined = tx.context.has_global_failure();
        if let (false, false, FailureHook::NotRun, Some(request)) =
            (tx.cancelled, declined, tx.failure_hook, tx.request.clone())
        {
            // Failover (if any) has run out: the script may try elsewhere.
            self.next_slot += 1;
            let ticket = self.next_slot;
            tx.failure_hook = FailureHook::Running(ticket);
            let response = tx.context.best_response();
            let pending = Pending {
                failure_run: true,
                ..self.pending_of(slot, request)
            };
            self.trace_script_started(Some(slot), now, "proxy.on_failure");
            self.out.push_back(Output::RunFailure(Box::new(FailureRun {
                ticket,
                request: pending.msg.clone(),
                source: pending.source,
                protocol: pending.protocol,
                preroute: pending.preroute.clone(),
                response,
                trace_id: self.trace_id_of(Some(slot)),
            })));
            self.pending.insert(ticket, pending);
            return;
        }
        self.send_best(slot, now);
    }

    /// Every branch is done: the best response goes upstream (§16.7 step 6).
    pub(super) fn send_best(&mut self, slot: u64, now: Instant) {
        let Some(tx) = self.servers.get_mut(&slot) else {
            return;
        };
        if tx.final_sent {
            return;
        }
        let cancelled = tx.cancelled;
        match tx.context.take_best() {
            Some(Best::Response { msg, challenges }) => {
                let code = msg.status().unwrap_or(500);
                if code == 503 {
                    // §16.7 step 6: a 503 would mean this proxy is unavailable.
                    self.reply_local(slot, 500, "Server Internal Error", &[], now);
                } else {
                    let bytes = Bytes::from(upstream_copy(&msg, &challenges));
                    self.send_final(slot, code, bytes, now);
                }
            }
            Some(Best::Local(..) | Best::Full(_)) if cancelled => {
                self.reply_local(slot, 487, "Request Terminated", &[], now)
            }
            Some(Best::Local(code, reason)) => self.reply_local(slot, code, reason, &[], now),
            Some(Best::Full(retry_after)) => {
                let retry_after = itoa::Buffer::new().format(retry_after).to_string();
                let extra = [("Retry-After", retry_after.as_str())];
                self.reply_local(slot, 503, "Service Unavailable", &extra, now);
            }
            None if cancelled => self.reply_local(slot, 487, "Request Terminated", &[], now),
            None => {
                // Every non-INVITE branch timed out: RFC 4320 §4.2 forbids
                // a 408, and there is nothing else to send.
                tracing::debug!("every branch of a non-INVITE timed out; no response");
                self.remove_server(slot, now);
            }
        }
    }

    /// A 2xx whose server transaction is gone while its client transaction
    /// is still Accepted: it goes on statelessly (the UAs retransmit it end
    /// to end until the ACK), over the caller's connection when it came on
    /// one (a browser's Via names no reachable host), else by the next Via.
    /// Only a 2xx to an INVITE.
    fn forward_stray(&mut self, msg: &Message, caller_flow: Option<Hop>) {
        let is_2xx = msg.status().is_some_and(|c| (200..300).contains(&c));
        let to_invite = msg.cseq().is_some_and(|(_, method)| method == "INVITE");
        if !(is_2xx && to_invite) {
            tracing::debug!("response for no transaction; dropped");
            return;
        }
        if let Some(flow) = caller_flow {
            let bytes = Bytes::from(forward::strip_top_via(msg));
            self.send(flow, bytes);
            return;
        }
        let Some(next) = msg.header_values(HeaderName::Via).nth(1) else {
            return;
        };
        let Ok(via) = Via::parse(next) else { return };
        let Some(addr) = forward::response_destination(&via) else {
            return;
        };
        let protocol = Protocol::from_token(via.transport).unwrap_or(Protocol::Udp);
        let bytes = Bytes::from(forward::strip_top_via(msg));
        self.send(Hop::new(addr, protocol), bytes);
    }

    // ----- responses from here --------------------------------------------

    pub(super) fn reply(&mut self, flow: &F, dest: SocketAddr, bytes: Bytes, code: Option<u16>) {
        self.out.push_back(Output::Reply {
            flow: flow.clone(),
            dest,
            bytes,
            code,
        });
    }

    /// Answers the request of a server transaction from this proxy.
    pub(super) fn reply_local(
        &mut self,
        slot: u64,
        code: u16,
        reason: &str,
        extra: &[(&str, &str)],
        now: Instant,
    ) {
        let Some(tx) = self.servers.get_mut(&slot) else {
            return;
        };
        let Some(request) = &tx.request else {
            return; // a final response went out already
        };
        let to_tag = if code > 100 && request.to_tag().is_none() {
            Some(tx.to_tag.get_or_insert_with(build::new_tag).clone())
        } else {
            None
        };
        let bytes = Bytes::from(local_response(
            request,
            tx.source,
            code,
            reason,
            to_tag.as_deref(),
            extra,
        ));
        if code < 200 {
            tx.last_response = Some(bytes.clone());
            let (flow, dest) = (tx.flow.clone(), tx.reply_to);
            self.reply(&flow, dest, bytes, Some(code));
            return;
        }
        // §13.3.1.4: our own 2xx to an INVITE is retransmitted until its
        // ACK, which a stateless UDP network may lose.
        let ack = (tx.invite && code < 300).then(|| {
            let tag = to_tag.as_deref().or(request.to_tag()).unwrap_or("");
            let cseq = request.cseq().map_or(0, |(n, _)| n);
            ack_key(request.call_id().unwrap_or(""), tag, cseq)
        });
        self.send_final(slot, code, bytes.clone(), now);
        if let Some(key) = ack {
            let t1 = self.settings().t1;
            if let Some(tx) = self.ended_servers.get_mut(&slot) {
                let replay = tx.replay.get_or_insert_with(Default::default);
                replay.ack_key = Some(key);
                replay.last_response = Some(bytes);
                replay.retransmit = t1;
                if !tx.reliable {
                    self.timers
                        .arm(now, t1, TimerOwner::Server(slot), TimerKind::G);
                }
                let until = tx.mark.until;
                self.awaiting_ack.insert(key, slot);
                self.recharge_server(slot, until);
            }
        }
    }

    /// Sends a final response upstream and moves the server transaction on.
    fn send_final(&mut self, slot: u64, code: u16, bytes: Bytes, now: Instant) {
        let settings = self.settings();
        let Some(tx) = self.servers.get_mut(&slot) else {
            return;
        };
        if tx.final_sent {
            return;
        }
        tx.final_sent = true;
        // What lingers for the timers is kept small: the key, the flow and
        // the response to replay (none after a 2xx, which the UAs resend).
        // No branch opens any more, so the failover state goes too.
        tx.request = None;
        tx.failover = None;
        tx.last_response = Some(bytes.clone());
        let reliable = tx.protocol.is_reliable();
        let owner = TimerOwner::Server(slot);
        let linger = if tx.invite && (200..300).contains(&code) {
            tx.state = ServerState::Accepted;
            tx.last_response = None;
            self.timers
                .arm(now, settings.timeout(), owner, TimerKind::L);
            settings.timeout()
        } else if tx.invite {
            tx.state = ServerState::Completed;
            if !reliable {
                self.timers.arm(now, settings.t1, owner, TimerKind::G);
            }
            self.timers
                .arm(now, settings.timeout(), owner, TimerKind::H);
            settings.timeout()
        } else {
            tx.state = ServerState::Completed;
            let linger = if reliable {
                Duration::ZERO
            } else {
                settings.timeout()
            };
            self.timers.arm(now, linger, owner, TimerKind::J);
            linger
        };
        let branches = std::mem::take(&mut tx.branches);
        let (flow, dest) = (tx.flow.clone(), tx.reply_to);
        self.reply(&flow, dest, bytes, Some(code));
        self.trace_final(slot, now, code);
        // Branches still running are no longer wanted.
        for token in branches {
            self.cancel_branch(token, now);
        }
        self.retire_server(slot, now + linger);
    }

    /// Answers without a server transaction. The To tag comes from the
    /// request's key, so a retransmission gets the same one (§8.2.7).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn reply_stateless(
        &mut self,
        msg: &Message,
        key: &ServerKey,
        flow: &F,
        (source, dest): (SocketAddr, SocketAddr),
        code: u16,
        reason: &str,
        extra: &[(&str, &str)],
    ) {
        let tag = key.stateless_tag();
        let to_tag = msg.to_tag().is_none().then_some(tag.as_str());
        let bytes = local_response(msg, source, code, reason, to_tag, extra);
        self.reply(flow, dest, Bytes::from(bytes), Some(code));
    }

    pub(super) fn remove_server(&mut self, slot: u64, now: Instant) {
        if let Some(tx) = self.servers.remove(&slot) {
            self.server_index.remove(&tx.key);
            if let Some(key) = tx.ack_key {
                self.awaiting_ack.remove(&key);
            }
            self.end_trace(tx.trace, now);
        } else {
            self.remove_ended_server(slot, now);
        }
    }

    /// The ACK of a 2xx the script sent itself ends its retransmissions
    /// here (the script answered as the UAS: the ACK is ours).
    pub(super) fn absorb_ack_of_our_2xx(&mut self, ack: &Message) -> bool {
        if self.awaiting_ack.is_empty() {
            return false;
        }
        let (Some(call_id), Some(tag), Some((cseq, _))) = (ack.call_id(), ack.to_tag(), ack.cseq())
        else {
            return false;
        };
        let Some(slot) = self.awaiting_ack.remove(&ack_key(call_id, tag, cseq)) else {
            return false;
        };
        if let Some(tx) = self.ended_servers.get_mut(&slot) {
            if let Some(replay) = tx.replay.as_deref_mut() {
                replay.ack_key = None;
                replay.last_response = None;
            }
            let until = tx.mark.until;
            self.recharge_server(slot, until);
        }
        true
    }
}
