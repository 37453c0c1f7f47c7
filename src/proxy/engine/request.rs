//! The intake of requests: a new request's server transaction, the
//! RFC 3261 §16.3 checks before the script runs, and retransmissions and
//! ACKs absorbed by the server transaction (§17.2), and initial requests
//! our Path (RFC 3327) routed here.

use super::*;

impl<F: Clone> Engine<F> {
    // ----- requests -------------------------------------------------------

    /// A request arrived from `source` over `protocol`; `flow` is the way
    /// back. `draining` refuses new dialogs with 503.
    pub fn handle_request(
        &mut self,
        now: Instant,
        msg: Message,
        source: SocketAddr,
        listener: usize,
        flow: F,
        draining: bool,
    ) {
        let Some(protocol) = self.config.listeners.get(listener).map(|l| l.protocol) else {
            tracing::warn!(listener, "request on an unknown listener; dropped");
            return;
        };
        let method = msg.method();
        let key = ServerKey::of(&msg, self.config.branch_secret[0]);
        match method {
            Some(Method::Ack) => {
                if self.absorb_ack_of_our_2xx(&msg) {
                    return;
                }
                if let Some(&slot) = self.server_index.get(&key) {
                    if self.absorb_ack(slot, now) {
                        return;
                    }
                    // An ACK for a 2xx (an RFC 2543 one shares the INVITE's
                    // key): end to end, so the script routes it.
                } else if msg.to_tag().is_some_and(|tag| key.is_stateless_tag(tag)) {
                    // The ACK of a refusal we sent statelessly (483, 482,
                    // 420, 503): it ends here.
                    return;
                }
            }
            Some(Method::Cancel) => {
                self.on_cancel(now, &msg, key, source, protocol, flow);
                return;
            }
            _ => {
                if let Some(&slot) = self.server_index.get(&key) {
                    self.replay_last_response(slot);
                    return;
                }
            }
        }

        let is_ack = method == Some(Method::Ack);
        let reply_to = reply_destination(&msg, source, protocol);
        let reply = |engine: &mut Self, code: u16, reason: &str, extra: &[(&str, &str)]| {
            let addresses = (source, reply_to);
            engine.reply_stateless(&msg, &key, &flow, addresses, code, reason, extra)
        };
        let refused_while_draining = matches!(method, Some(Method::Invite | Method::Options));
        if draining && refused_while_draining && msg.to_tag().is_none() {
            // Tell whoever balances over us to go elsewhere for a while.
            let retry_after = itoa::Buffer::new()
                .format(self.config.drain_secs.max(1))
                .to_string();
            let extra = [("Retry-After", retry_after.as_str())];
            reply(self, 503, "Service Unavailable", &extra);
            return;
        }
        if !is_ack && self.active() >= self.config.max_transactions {
            crate::metrics::get().transactions_refused.inc();
            if method == Some(Method::Invite) {
                reply(
                    self,
                    503,
                    "Service Unavailable",
                    &[("Retry-After", FULL_RETRY_AFTER)],
                );
            }
            return;
        }
        let loop_hash = forward::loop_hash(&msg);
        if is_ack && msg.max_forwards() == Some(0) {
            // §16.3 step 3 holds for ACK too (it cannot be answered): it
            // bounds an ACK loop at Max-Forwards hops.
            tracing::debug!(
                call_id = msg.call_id().unwrap_or(""),
                "ACK dropped: Max-Forwards 0"
            );
            return;
        }
        if !is_ack {
            let looping = || forward::is_looping(&msg, loop_hash, |via| self.is_our_via(via));
            if let Some(refusal) = route::refusal(&msg, looping) {
                let unsupported = refusal
                    .unsupported
                    .as_deref()
                    .map(|list| ("Unsupported", list));
                let extra: Vec<(&str, &str)> = unsupported.into_iter().collect();
                reply(self, refusal.code, refusal.reason, &extra);
                return;
            }
        }

        let mut preroute = route::preroute(&msg, &self.config.local);
        let checked = match msg.to_tag() {
            Some(_) => self.check_dialog_route(&msg, &preroute),
            None => Ok(None),
        };
        preroute.dialog_caller = checked.unwrap_or(None);
        if let Err(refused) = checked {
            crate::metrics::get().relay_refused(refused);
            if is_ack {
                tracing::debug!(
                    call_id = msg.call_id().unwrap_or(""),
                    "ACK dropped: our Route without a valid seal"
                );
            } else {
                reply(self, 403, "Forbidden", &[]);
            }
            return;
        }
        let ours = preroute.routes_popped > 0 || preroute.strict_ruri.is_some();
        if method == Some(Method::Bye) && ours {
            // The dialog ends here: its call no longer counts. A BYE that
            // does not follow our Route is not relayed by us, so the call
            // goes on as far as we know.
            let tags = (msg.from_tag().unwrap_or(""), msg.to_tag().unwrap_or(""));
            self.calls.end(msg.call_id().unwrap_or(""), tags.0, tags.1);
        }
        let msg = Arc::new(msg);
        self.next_slot += 1;
        let ticket = self.next_slot;
        let slot = (!is_ack).then(|| {
            let invite = method == Some(Method::Invite);
            let mut tx = ServerTx {
                key,
                started: now,
                request: Some(msg.clone()),
                flow: flow.clone(),
                protocol,
                listener,
                source,
                reply_to,
                invite,
                state: ServerState::Proceeding,
                last_response: None,
                to_tag: None,
                branches: Vec::new(),
                context: ResponseContext::default(),
                final_sent: false,
                cancelled: false,
                retransmit: self.settings().t1,
                loop_hash,
                preroute: preroute.clone(),
                failover: None,
                failure_hook: FailureHook::NotRun,
                ack_key: None,
                trace: None,
            };
            tx.trace = self.begin_trace(now, &msg, source, protocol);
            if invite {
                let trying = Bytes::from(local_response(&msg, source, 100, "Trying", None, &[]));
                self.reply(&flow, reply_to, trying.clone(), Some(100));
                tx.last_response = Some(trying);
            }
            self.server_index.insert(key, ticket);
            self.servers.insert(ticket, tx);
            ticket
        });
        self.pending.insert(
            ticket,
            Pending {
                msg: msg.clone(),
                source,
                protocol,
                listener,
                loop_hash,
                preroute: preroute.clone(),
                slot,
                failure_run: false,
            },
        );
        match self.path_route(&msg, &preroute, (source, protocol)) {
            Some(PathRoute::Flow) => {
                // Toward a client registered through us: over its flow,
                // and we stay in the dialog (both sides named).
                let decision = Decision {
                    action: Some(Action::Relay { uri: None }),
                    record_route: true,
                    routes_popped: preroute.routes_popped,
                    new_ruri: preroute.strict_ruri.clone(),
                    ..Decision::default()
                };
                let mut no_lookup = |uri: &str| Err(HopError::Unsupported(uri.to_string()));
                self.handle_decision(now, ticket, decision, &mut no_lookup);
            }
            Some(PathRoute::Stale) => {
                self.pending.remove(&ticket);
                match slot {
                    Some(slot) => self.reply_local(slot, 430, "Flow Failed", &[], now),
                    None => tracing::debug!("ACK toward a stale flow dropped"),
                }
            }
            None => {
                self.trace_script_started(slot, now, "proxy.on_request");
                let trace_id = self.trace_id_of(slot);
                self.out.push_back(Output::RunScript(ScriptRun {
                    ticket,
                    request: msg,
                    source,
                    protocol,
                    preroute,
                    trace_id,
                }))
            }
        }
    }

    /// An in-dialog request that pops our Route must carry our seal over
    /// its dialog (see `proxy::seal`): a Route of ours copied into another
    /// dialog, or written by hand, is refused. One that pops nothing of
    /// ours is the script's to judge (`loose_route()` is then False).
    /// Returns the dialog's caller the seal proves, or why the request is
    /// refused (the metric's reason).
    fn check_dialog_route(
        &self,
        msg: &Message,
        preroute: &Preroute,
    ) -> Result<Option<IpAddr>, &'static str> {
        let strict = preroute.strict_ruri.is_some();
        if preroute.routes_popped == 0 && !strict {
            return Ok(None);
        }
        match self.config.seals.check(msg, preroute.routes_popped, strict) {
            SealCheck::Valid(caller) => Ok(Some(caller)),
            SealCheck::Missing if self.config.accept_unsealed => Ok(None),
            SealCheck::Missing => Err("dialog_seal_missing"),
            SealCheck::Forged => Err("dialog_seal_forged"),
        }
    }

    /// A retransmitted request: send the last response again (RFC 3261
    /// §17.2.1, §17.2.2), except after a 2xx, which the UAs retransmit.
    fn replay_last_response(&mut self, slot: u64) {
        let last = match (self.servers.get(&slot), self.ended_servers.get(&slot)) {
            (Some(tx), _) => tx
                .last_response
                .as_ref()
                .map(|r| (&tx.flow, tx.reply_to, r)),
            (None, Some(ended)) if ended.state != ServerState::Accepted => ended
                .last_response()
                .map(|r| (&ended.flow, ended.reply_to, r)),
            _ => None,
        };
        if let Some((flow, dest, response)) = last {
            let (flow, bytes) = (flow.clone(), response.clone());
            self.reply(&flow, dest, bytes, None);
        }
    }

    /// Absorbs the ACK of a non-2xx final; false when the transaction did
    /// not send one (the ACK is then for a 2xx, and goes on).
    fn absorb_ack(&mut self, slot: u64, now: Instant) -> bool {
        let t4 = self.settings().t4;
        // A live transaction sent no final yet: the ACK is not its own.
        let Some(tx) = self.ended_servers.get_mut(&slot) else {
            return false;
        };
        match tx.state {
            ServerState::Completed => {
                tx.state = ServerState::Confirmed;
                let linger = if tx.reliable { Duration::ZERO } else { t4 };
                self.timers
                    .arm(now, linger, TimerOwner::Server(slot), TimerKind::I);
                self.recharge_server(slot, now + linger);
                true
            }
            ServerState::Confirmed => true,
            ServerState::Proceeding | ServerState::Accepted => false,
        }
    }

    /// How the core routes an initial request that our Path sent here
    /// (RFC 3327), without the script: its popped Route names a client's
    /// flow by a Path token. None for any other request.
    fn path_route(
        &self,
        msg: &Message,
        preroute: &Preroute,
        arrived: (SocketAddr, Protocol),
    ) -> Option<PathRoute> {
        let popped = preroute.routes_popped;
        if popped == 0 || msg.to_tag().is_some() || msg.method() == Some(Method::Ack) {
            return None;
        }
        let dropped = usize::from(preroute.strict_ruri.is_some());
        if route::first_remaining_route(msg, popped, dropped).is_some() {
            return None;
        }
        if let Some((TokenKind::Path, _)) = self.popped_flow(msg, popped, arrived) {
            return Some(PathRoute::Flow);
        }
        // A Path token that does not verify is one of an earlier run's
        // (connections do not outlive us): the flow is gone. Only the
        // token's shape says so: `sip:proxy@...` is no token.
        msg.header_values(HeaderName::Route)
            .take(popped)
            .filter_map(route_user)
            .any(|user| {
                crate::proxy::flow::is_token_shaped(TokenKind::Path, user)
                    && self.config.flow_tokens.decode(user).is_none()
            })
            .then_some(PathRoute::Stale)
    }
}

/// An initial request our Path routed here (see [`Engine::path_route`]).
enum PathRoute {
    /// Over the client's flow.
    Flow,
    /// With a token of ours from an earlier run: answered 430.
    Stale,
}
