//! CANCEL: the caller's CANCEL of a pending request (RFC 3261 §9.2,
//! §16.10) and CANCELs sent on its branches (§9.1).

use super::*;

impl<F: Clone> Engine<F> {
    pub(super) fn on_cancel(
        &mut self,
        now: Instant,
        msg: &Message,
        key: ServerKey,
        source: SocketAddr,
        protocol: Protocol,
        flow: F,
    ) {
        let reply_to = reply_destination(msg, source, protocol);
        // The INVITE with the same branch and sent-by, from the same host.
        let slot = self
            .server_index
            .get(&key.invite_of_cancel())
            .copied()
            .filter(|slot| match self.servers.get(slot) {
                Some(tx) => tx.source.ip() == source.ip(),
                None => self
                    .ended_servers
                    .get(slot)
                    .is_some_and(|ended| ended.source_ip == source.ip()),
            });
        let Some(slot) = slot else {
            let reason = "Call/Transaction Does Not Exist";
            self.reply_stateless(msg, &key, &flow, (source, reply_to), 481, reason, &[]);
            return;
        };
        let (to_tag, live) = match (
            self.servers.get_mut(&slot),
            self.ended_servers.get_mut(&slot),
        ) {
            (Some(tx), _) => (tx.to_tag.get_or_insert_with(build::new_tag).clone(), true),
            // Answered already: the CANCEL has no effect but its 200 (§9.2).
            // The tag of the final we relayed is the callee's: a
            // retransmitted CANCEL gets the same one of ours.
            (None, Some(ended)) => (
                ended
                    .replay
                    .as_ref()
                    .and_then(|replay| replay.to_tag.clone())
                    .unwrap_or_else(|| key.stateless_tag()),
                false,
            ),
            (None, None) => return,
        };
        let ok = local_response(msg, source, 200, "OK", Some(&to_tag), &[]);
        self.reply(&flow, reply_to, Bytes::from(ok), Some(200));
        if live {
            self.cancel_request(slot, now);
        }
    }

    /// The caller gave the request up (its CANCEL, or its connection
    /// closed): every branch is CANCELed, and the caller gets 487.
    pub(super) fn cancel_request(&mut self, slot: u64, now: Instant) {
        let Some(tx) = self.servers.get_mut(&slot) else {
            return;
        };
        let done = tx.final_sent || tx.cancelled;
        tx.cancelled = true;
        let branches = tx.branches.clone();
        let hook_running = matches!(tx.failure_hook, FailureHook::Running(_));
        let nothing_pending = tx.context.branches_pending() == 0;
        if done {
            return;
        }
        if hook_running {
            // Every branch is over; the script's answer is no longer wanted.
            self.send_best(slot, now);
            return;
        }
        if nothing_pending {
            // No branch is running (none yet, or the script answered only
            // provisionally after they ended): 487 from here.
            self.reply_local(slot, 487, "Request Terminated", &[], now);
            return;
        }
        for token in branches {
            self.cancel_branch(token, now);
            self.give_up_if_unanswered(slot, token, now);
        }
    }

    /// After the caller's CANCEL, a branch that has not answered at all
    /// cannot be CANCELed yet (§9.1) and may never answer: it is given up
    /// at once as if it had returned 487, so the caller hears 487 without
    /// waiting for Timer B (Kamailio's `cancel_b_method` 1). It is still
    /// CANCELed, and its final ACKed, should it answer later.
    pub(super) fn give_up_if_unanswered(&mut self, slot: u64, token: u64, now: Instant) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        if client.got_provisional || client.settled || !client.invite {
            return;
        }
        client.abandoned = true;
        client.settled = true;
        self.branch_done(slot, Some(Candidate::TIMEOUT), now);
    }

    /// Sends CANCEL on a branch once it has answered provisionally; before
    /// that, remembers to (RFC 3261 §9.1). A CANCELed branch that never
    /// answers is given up after 64·T1.
    pub(super) fn cancel_branch(&mut self, token: u64, now: Instant) {
        let settings = self.settings();
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        if client.cancel_sent
            || !client.invite
            || !matches!(client.state, ClientState::Trying | ClientState::Proceeding)
        {
            return;
        }
        if !client.got_provisional {
            client.cancel_pending = true;
            return;
        }
        client.cancel_sent = true;
        let give_up = now + settings.timeout();
        if give_up < client.timer_c_due {
            client.timer_c_due = give_up;
            self.timers.arm(
                now,
                settings.timeout(),
                TimerOwner::Client(token),
                TimerKind::C,
            );
        }
        let Ok(sent) = sip::parse(client.request.clone()) else {
            return;
        };
        let cancel = Bytes::from(build::cancel(&sent));
        let hop = client.hop.clone();
        let loop_hash = client.loop_hash;
        self.send(hop.clone(), cancel.clone());
        let owner = TimerOwner::Cancel(token);
        if !hop.protocol.is_reliable() {
            self.timers.arm(now, settings.t1, owner, TimerKind::E);
        }
        self.timers
            .arm(now, settings.timeout(), owner, TimerKind::F);
        self.cancels.insert(
            token,
            CancelTx {
                request: cancel,
                hop,
                loop_hash,
                retransmit: settings.t1,
            },
        );
    }
}
