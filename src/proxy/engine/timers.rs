//! Timers: the §17 transaction timers of server and client transactions,
//! retransmissions, and branches that got no final response in time.

use super::*;

impl<F: Clone> Engine<F> {
    // ----- timers -----------------------------------------------------------

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.calls.next_deadline().is_some_and(|due| now >= due) {
            for collected in self.calls.collect(now) {
                self.out.push_back(Output::CallCollected(collected));
            }
        }
        self.evict_ended(now);
        while let Some((owner, kind)) = self.timers.pop_due(now) {
            match owner {
                TimerOwner::Server(slot) => self.server_timer(slot, kind, now),
                TimerOwner::Client(token) => self.client_timer(token, kind, now),
                TimerOwner::Cancel(token) => self.cancel_timer(token, kind, now),
            }
        }
        // Entries of gone transactions, and an ended branch's Timer B, C
        // (180 s) or F, are swept once they could be half the queue.
        if self.timers.len() >= TIMER_SWEEP_FLOOR.max(2 * self.timers_kept) {
            let (servers, ended, clients, ended_clients, cancels) = (
                &self.servers,
                &self.ended_servers,
                &self.clients,
                &self.ended_clients,
                &self.cancels,
            );
            self.timers.retain(|owner, kind| match owner {
                TimerOwner::Server(slot) => {
                    servers.contains_key(&slot)
                        || (ended.contains_key(&slot) && kind.ends_a_server())
                }
                TimerOwner::Client(token) => {
                    clients.contains_key(&token)
                        || (ended_clients.contains_key(&token) && kind.ends_a_client())
                }
                TimerOwner::Cancel(token) => cancels.contains_key(&token),
            });
            self.timers_kept = self.timers.len();
        }
    }

    /// Timer entries held, live or not yet swept (for tests).
    pub fn timer_entries(&self) -> usize {
        self.timers.len()
    }

    /// The kinds of those entries (for tests).
    #[cfg(test)]
    pub fn timer_kinds(&self) -> Vec<TimerKind> {
        self.timers.kinds()
    }

    fn server_timer(&mut self, slot: u64, kind: TimerKind, now: Instant) {
        let Some(tx) = self.servers.get_mut(&slot) else {
            self.ended_server_timer(slot, kind, now);
            return;
        };
        match kind {
            // A script's provisional reply was all this request got.
            TimerKind::Guard if !tx.final_sent && tx.context.branches_pending() == 0 => {
                if tx.invite {
                    self.reply_local(slot, 408, "Request Timeout", &[], now);
                } else {
                    self.remove_server(slot, now);
                }
            }
            _ => {}
        }
    }

    /// The timers of a server transaction that sent its final response.
    fn ended_server_timer(&mut self, slot: u64, kind: TimerKind, now: Instant) {
        let settings = self.settings();
        let Some(tx) = self.ended_servers.get_mut(&slot) else {
            return;
        };
        let awaits_ack = match tx.state {
            ServerState::Completed => true,
            // Our own 2xx, until its ACK or Timer L.
            ServerState::Accepted => tx.ack_key().is_some(),
            _ => false,
        };
        match kind {
            TimerKind::G if awaits_ack => {
                let (flow, dest) = (tx.flow.clone(), tx.reply_to);
                let Some(replay) = tx.replay.as_deref_mut() else {
                    return;
                };
                replay.retransmit = settings.backoff(replay.retransmit, true);
                self.timers.arm(
                    now,
                    replay.retransmit,
                    TimerOwner::Server(slot),
                    TimerKind::G,
                );
                if let Some(response) = replay.last_response.clone() {
                    self.reply(&flow, dest, response, None);
                }
            }
            TimerKind::H if tx.state == ServerState::Completed => {
                tracing::debug!("no ACK for a final response (Timer H)");
                self.remove_ended_server(slot, now);
            }
            TimerKind::I | TimerKind::J | TimerKind::L => {
                self.remove_ended_server(slot, now);
            }
            _ => {}
        }
    }

    fn client_timer(&mut self, token: u64, kind: TimerKind, now: Instant) {
        let settings = self.settings();
        let Some(client) = self.clients.get_mut(&token) else {
            self.ended_client_timer(token, kind);
            return;
        };
        let live = matches!(client.state, ClientState::Trying | ClientState::Proceeding);
        if kind == TimerKind::B
            && client.state == ClientState::Proceeding
            && !client.cancel_sent
            && matches!(client.owner, Owner::Server(_))
        {
            // Timer C from here on (see `add_client`; a CANCEL armed its own).
            let wait = client.timer_c_due.saturating_duration_since(now);
            self.timers
                .arm(now, wait, TimerOwner::Client(token), TimerKind::C);
        }
        match kind {
            // A branch given up for another goes on until it answers
            // provisionally (and is CANCELed) or Timer B: its 1xx may have
            // been lost, and §9.1 allows no CANCEL before one.
            TimerKind::A if client.state == ClientState::Trying => {
                client.retransmit = settings.backoff(client.retransmit, false);
                let (hop, bytes) = (client.hop.clone(), client.request.clone());
                let next = (client.retransmit, TimerOwner::Client(token), TimerKind::A);
                self.resend(now, hop, bytes, next);
            }
            TimerKind::E if live && !client.abandoned => {
                client.retransmit = if client.state == ClientState::Proceeding {
                    settings.t2
                } else {
                    settings.backoff(client.retransmit, true)
                };
                let (hop, bytes) = (client.hop.clone(), client.request.clone());
                let next = (client.retransmit, TimerOwner::Client(token), TimerKind::E);
                self.resend(now, hop, bytes, next);
            }
            TimerKind::B if client.state == ClientState::Trying => {
                self.branch_timeout(token, now, "Timer B")
            }
            // A candidate that sent only 100 by Timer B has not taken the
            // call: fail over rather than wait for Timer C.
            TimerKind::B
                if client.state == ClientState::Proceeding
                    && client.candidate.is_some()
                    && !client.accepted =>
            {
                self.candidate_silent(now, token)
            }
            TimerKind::NoResponse if matches!(client.owner, Owner::Probe { .. }) && live => {
                self.end_branch(token, now, "probe given up", |_| None)
            }
            // A branch that left UDP for its size and heard nothing (a
            // firewall that drops the SYN) tries UDP before failing over.
            TimerKind::NoResponse
                if client.state == ClientState::Trying && client.udp_fallback.is_some() =>
            {
                let silence = client.no_response.unwrap_or(settings.t1);
                if self.fall_back_to_udp(token, now) {
                    self.timers.arm(
                        now,
                        silence,
                        TimerOwner::Client(token),
                        TimerKind::NoResponse,
                    );
                }
            }
            TimerKind::NoResponse if client.state == ClientState::Trying => {
                self.candidate_silent(now, token)
            }
            TimerKind::F if live => self.branch_timeout(token, now, "Timer F"),
            TimerKind::C if client.state == ClientState::Proceeding => {
                if now < client.timer_c_due {
                    let wait = client.timer_c_due - now;
                    self.timers
                        .arm(now, wait, TimerOwner::Client(token), TimerKind::C);
                    return;
                }
                // §16.8: CANCEL the branch and act as if it returned 408.
                let why = if client.past_lifetime(now) {
                    "max_invite_lifetime"
                } else {
                    "Timer C"
                };
                self.cancel_branch(token, now);
                self.branch_timeout(token, now, why);
            }
            // A CANCELed branch that then answered 2xx is Accepted: Timer M,
            // not the D armed when it was given up, ends it.
            TimerKind::D if client.state == ClientState::Accepted => {}
            TimerKind::D | TimerKind::K | TimerKind::M => {
                self.remove_client(token);
            }
            _ => {}
        }
    }

    /// The timers of a branch that got its final response: D, K or M end
    /// it (D not once a 2xx made it Accepted: Timer M does).
    fn ended_client_timer(&mut self, token: u64, kind: TimerKind) {
        let Some(ended) = self.ended_clients.get(&token) else {
            return;
        };
        match kind {
            TimerKind::D if ended.state == ClientState::Accepted => {}
            TimerKind::D | TimerKind::K | TimerKind::M => {
                self.remove_ended_client(token);
            }
            _ => {}
        }
    }

    /// Sends a request again and arms the retransmission after it.
    fn resend(
        &mut self,
        now: Instant,
        hop: Hop,
        bytes: Bytes,
        (after, owner, kind): (Duration, TimerOwner, TimerKind),
    ) {
        self.timers.arm(now, after, owner, kind);
        self.send(hop, bytes);
    }

    /// A branch got no final response in time: an INVITE branch counts as a
    /// 408 (§16.7, §16.8); a non-INVITE one leaves nothing (RFC 4320).
    fn branch_timeout(&mut self, token: u64, now: Instant, timer: &str) {
        self.end_branch(token, now, timer, |invite| {
            invite.then_some(Candidate::TIMEOUT)
        });
    }

    /// A branch ends with no final response from its peer; `left` says
    /// what it leaves in the response context (given whether it is an
    /// INVITE's).
    pub(super) fn end_branch(
        &mut self,
        token: u64,
        now: Instant,
        why: &str,
        left: impl FnOnce(bool) -> Option<Candidate>,
    ) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let slot = match client.owner {
            Owner::Server(slot) => slot,
            Owner::Probe { probe, sent } => {
                self.remove_client(token);
                self.out.push_back(Output::ProbeDone {
                    probe,
                    outcome: ProbeOutcome {
                        status: None,
                        retry_after: None,
                        latency: now.saturating_duration_since(sent),
                    },
                });
                return;
            }
        };
        let was_settled = std::mem::replace(&mut client.settled, true);
        let invite = client.invite;
        client.call_slot = None;
        // A CANCELed branch stays (settled) to ACK its 487 when that comes;
        // Timer D removes it either way.
        if client.cancel_sent {
            let linger = self.settings().timeout();
            // Live still: a 2xx racing the CANCEL must be relayed (§16.7).
            self.timers
                .arm(now, linger, TimerOwner::Client(token), TimerKind::D);
        } else {
            self.remove_client(token);
        }
        self.trace_branch_ended(slot, token, now, None, why);
        if was_settled {
            return;
        }
        tracing::debug!(why, "branch ended without a response");
        self.branch_done(slot, left(invite), now);
    }

    fn cancel_timer(&mut self, token: u64, kind: TimerKind, now: Instant) {
        let settings = self.settings();
        let Some(cancel) = self.cancels.get_mut(&token) else {
            return;
        };
        match kind {
            TimerKind::E => {
                cancel.retransmit = settings.backoff(cancel.retransmit, true);
                let (hop, bytes) = (cancel.hop.clone(), cancel.request.clone());
                let next = (cancel.retransmit, TimerOwner::Cancel(token), TimerKind::E);
                self.resend(now, hop, bytes, next);
            }
            TimerKind::F => {
                self.cancels.remove(&token);
            }
            _ => {}
        }
    }
}
