//! The script's decision, carried out: a request relayed on one or more
//! branches (RFC 3261 §16.6), with our Record-Route or Path entries, its
//! transport chosen by size (§18.1.1), or kept pending while a name is
//! looked up.

use super::*;

impl<F: Clone> Engine<F> {
    // ----- decisions --------------------------------------------------------

    /// The script's decision for the request of `ticket`. `next_hop` maps a
    /// URI to where its packets go (a gateway address, or DNS). When a next
    /// hop's name is not resolved yet ([`HopError::Lookup`]), nothing is sent
    /// and the decision comes back as [`Deferred`]: hand it in again once
    /// the name is looked up. The request stays pending meanwhile, and a
    /// CANCEL answered in the wait makes the later call a no-op.
    pub fn handle_decision(
        &mut self,
        now: Instant,
        ticket: u64,
        mut decision: Decision,
        next_hop: &mut dyn NextHops,
    ) -> Option<Deferred> {
        let pending = self.pending.remove(&ticket)?;
        let slot = pending.slot;
        self.trace_decision(slot, now, &decision);
        if slot.is_some_and(|slot| self.servers.get(&slot).is_none_or(|tx| tx.final_sent)) {
            // Answered meanwhile (a CANCEL's 487): nothing more to do.
            return None;
        }
        let msg = pending.msg.clone();
        if pending.failure_run {
            let slot = slot?;
            let cancelled = self.servers.get_mut(&slot).is_none_or(|tx| {
                tx.failure_hook = FailureHook::Ran;
                tx.cancelled
            });
            if decision.action.is_none() || cancelled {
                // Nothing more to try: the best response goes upstream.
                self.send_best(slot, now);
                return None;
            }
        }
        if decision.failed {
            match slot {
                Some(slot) => self.reply_local(slot, 500, "Server Internal Error", &[], now),
                None => tracing::warn!(
                    call_id = msg.call_id().unwrap_or(""),
                    "ACK dropped: the script failed"
                ),
            }
            return None;
        }
        match decision.action.take() {
            None => {
                self.no_action(slot, &msg, now);
                None
            }
            Some(Action::Reply {
                code,
                reason,
                headers,
            }) => {
                let Some(slot) = slot else {
                    tracing::debug!("script replied to an ACK; nothing sent");
                    return None;
                };
                let reason = reason.as_deref().unwrap_or(build::default_reason(code));
                let extra: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_str()))
                    .collect();
                self.reply_local(slot, code, reason, &extra, now);
                if code < 200 {
                    // Nothing else will answer: bound the transaction's life.
                    self.timers.arm(
                        now,
                        self.settings().timeout(),
                        TimerOwner::Server(slot),
                        TimerKind::Guard,
                    );
                }
                None
            }
            Some(Action::Relay { uri }) => {
                let (mut decision, host) =
                    self.relay(now, &pending, decision, uri.as_deref(), next_hop)?;
                decision.action = Some(Action::Relay { uri });
                Some(self.defer(ticket, pending, decision, vec![host]))
            }
            Some(Action::Fork { targets }) => {
                let Some(slot) = slot else {
                    tracing::debug!("script forked an ACK; nothing sent");
                    return None;
                };
                let hops: Vec<_> = targets
                    .iter()
                    .map(|target| {
                        let first_hop = target.path.first().map_or_else(
                            || target.uri.clone(),
                            |route| {
                                sip::NameAddr::parse(route)
                                    .map_or_else(|_| route.clone(), |a| a.uri.to_string())
                            },
                        );
                        next_hop.next_hop(&first_hop)
                    })
                    .collect();
                // Every branch's hop is known before the first opens, so a
                // lookup never leaves the fork half open.
                // Every name missing is looked up at once.
                let hosts: Vec<String> = hops
                    .iter()
                    .filter_map(|hop| match hop {
                        Err(HopError::Lookup(host)) => Some(host.clone()),
                        _ => None,
                    })
                    .collect();
                if !hosts.is_empty() {
                    decision.action = Some(Action::Fork { targets });
                    return Some(self.defer(ticket, pending, decision, hosts));
                }
                // RFC 5393: the branches share the request's Max-Breadth.
                let parallel = targets.len();
                let Some(shares) = breadth_shares(&msg, parallel) else {
                    self.reply_local(slot, 440, "Max-Breadth Exceeded", &[], now);
                    return None;
                };
                let mut refused = 0;
                for ((target, hop), breadth) in targets.iter().zip(hops).zip(shares) {
                    if !sip::parse::is_valid_request_uri(&target.uri) {
                        tracing::warn!(call_id = msg.call_id().unwrap_or(""), target = %target.uri, "fork branch skipped: not a Request-URI");
                        continue;
                    }
                    let hop = match hop {
                        Err(HopError::Refused(hop, why))
                            if target.vouched && why.may_be_vouched() =>
                        {
                            Ok(hop)
                        }
                        Err(HopError::Refused(hop, why)) => {
                            refused += 1;
                            relay_refused(&target.uri, &hop, why);
                            continue;
                        }
                        hop => hop,
                    };
                    match hop {
                        Ok(hop) if !self.listening[hop.protocol.index()] => {
                            tracing::debug!(target = %target.uri, protocol = hop.protocol.as_str(), "fork branch skipped: no listener of its protocol")
                        }
                        Ok(hop) => {
                            let plan = BranchPlan {
                                hop,
                                new_ruri: Some(&target.uri),
                                push_routes: &target.path,
                                routes_popped: decision.routes_popped,
                                append_route: None,
                                candidate: None,
                                max_breadth: Some(breadth),
                                may_leave_udp: !pins_udp(
                                    target.path.first().unwrap_or(&target.uri),
                                ),
                                call_slot: None,
                            };
                            self.open_branch(now, &pending, &decision, plan);
                        }
                        Err(e) => {
                            tracing::warn!(call_id = msg.call_id().unwrap_or(""), target = %target.uri, error = %e, "fork branch skipped")
                        }
                    }
                }
                if self
                    .servers
                    .get(&slot)
                    .is_some_and(|tx| tx.context.branches_pending() == 0)
                {
                    if refused > 0 {
                        self.reply_local(slot, 403, "Forbidden", &[], now);
                    } else {
                        self.reply_local(slot, 478, "Unresolvable Destination", &[], now);
                    }
                }
                None
            }
        }
    }

    /// Keeps the request pending while `host` is looked up.
    fn defer(
        &mut self,
        ticket: u64,
        pending: Pending,
        decision: Decision,
        hosts: Vec<String>,
    ) -> Deferred {
        self.pending.insert(ticket, pending);
        Deferred {
            ticket,
            decision,
            hosts,
        }
    }

    /// The script took no action. An INVITE has had its 100 Trying and must
    /// not be left hanging: it gets a 500. Anything else is dropped.
    fn no_action(&mut self, slot: Option<u64>, msg: &Message, now: Instant) {
        let Some(slot) = slot else {
            tracing::debug!(
                call_id = msg.call_id().unwrap_or(""),
                "ACK dropped: no action"
            );
            return;
        };
        if msg.method() == Some(Method::Invite) {
            let trace_id = self.trace_id_of(Some(slot)).map(|t| t.hex());
            tracing::warn!(
                call_id = msg.call_id().unwrap_or(""),
                trace_id,
                "the script took no action on an INVITE; answering 500"
            );
            self.reply_local(slot, 500, "Server Internal Error", &[], now);
        } else {
            tracing::debug!(
                method = msg.method_str(),
                call_id = msg.call_id().unwrap_or(""),
                "script took no action; request dropped"
            );
            self.trace_dropped(slot, now);
            self.absorb_retransmissions(slot, now);
        }
    }

    /// A non-INVITE dropped without an answer: its transaction stays, with
    /// nothing to replay, until Timer J, so its retransmissions end here
    /// rather than run the script again.
    fn absorb_retransmissions(&mut self, slot: u64, now: Instant) {
        let timeout = self.settings().timeout();
        let Some(tx) = self.servers.get_mut(&slot) else {
            return;
        };
        tx.final_sent = true;
        tx.state = ServerState::Completed;
        tx.request = None;
        tx.failover = None;
        tx.last_response = None;
        let linger = if tx.protocol.is_reliable() {
            Duration::ZERO
        } else {
            timeout
        };
        self.timers
            .arm(now, linger, TimerOwner::Server(slot), TimerKind::J);
        self.retire_server(slot, now + linger);
    }

    /// `relay(uri)`: to `uri` as the next hop, else along the Route set
    /// (§16.6 step 7 when its first hop is a strict router), else to the
    /// Request-URI. A next hop still to be looked up gives the decision
    /// back, with the name.
    fn relay(
        &mut self,
        now: Instant,
        pending: &Pending,
        mut decision: Decision,
        uri: Option<&str>,
        next_hop: &mut dyn NextHops,
    ) -> Option<(Decision, String)> {
        let gateway = decision.gateway.take();
        if let (Some(slot), Some(relay), Some(uri)) = (pending.slot, gateway, uri) {
            let first = relay.candidates.first();
            if first.is_some_and(|c| *c.uri == *uri) {
                self.relay_to_gateway(now, pending, slot, decision, relay);
                return None;
            }
        }
        let msg = &pending.msg;
        let dropped = usize::from(pending.preroute.strict_ruri.is_some());
        let route::RelayTarget {
            target,
            first_remaining,
            routes_popped,
            new_ruri,
            append_route,
        } = route::relay_target(msg, &decision, uri, dropped);
        // Toward a caller on a connection: over that connection, whatever
        // its Contact says (a browser's does not resolve).
        let flow = match (uri, &first_remaining) {
            (None, false) => self
                .popped_flow(msg, routes_popped, (pending.source, pending.protocol))
                .map(|(_, hop)| udp_flow_or_contact(hop, &target)),
            _ => None,
        };
        // The dialog's own caller may be reached wherever it sits: its
        // address is under our seal.
        let from_flow = flow.is_some();
        let hop = match flow.map_or_else(|| next_hop.next_hop(&target), Ok) {
            Err(HopError::Refused(hop, why))
                if why.may_be_vouched_by_dialog()
                    && pending.preroute.dialog_caller
                        == Some(crate::security::canonical(hop.addr.ip())) =>
            {
                Ok(hop)
            }
            hop => hop,
        };
        match hop {
            Ok(hop) => {
                // RFC 3263: a name with more than one place to try fails
                // over to the next on a timeout or a 503 (§4.3), as a
                // gateway group's candidates do (without their health).
                // Places over a protocol we do not listen on are dropped:
                // no Via could name how the request left (§18.1.1).
                let mut alternates = match (pending.slot, &append_route, from_flow) {
                    (Some(_), None, false) => next_hop.alternates(&target),
                    _ => Vec::new(),
                };
                alternates.retain(|alternate| self.listening[alternate.protocol.index()]);
                let hop = match (self.listening[hop.protocol.index()], alternates.is_empty()) {
                    (true, _) => hop,
                    (false, false) => alternates.remove(0),
                    (false, true) => {
                        tracing::debug!(%target, protocol = hop.protocol.as_str(), "no listener of the next hop's protocol");
                        if let Some(slot) = pending.slot {
                            self.reply_local(slot, 503, "Service Unavailable", &[], now)
                        }
                        return None;
                    }
                };
                if let (Some(slot), false) = (pending.slot, alternates.is_empty()) {
                    let decision = Decision {
                        new_ruri: new_ruri.clone(),
                        routes_popped,
                        ..decision
                    };
                    let relay = dns_failover(&target, hop, alternates, self.settings().t1 * 63);
                    self.relay_to_gateway(now, pending, slot, decision, relay);
                    return None;
                }
                let plan = BranchPlan {
                    hop,
                    new_ruri: new_ruri.as_deref(),
                    push_routes: &[],
                    routes_popped,
                    append_route: append_route.as_deref(),
                    candidate: None,
                    max_breadth: None,
                    may_leave_udp: !pins_udp(&target),
                    call_slot: None,
                };
                self.open_branch(now, pending, &decision, plan);
            }
            Err(HopError::Lookup(host)) => return Some((decision, host)),
            Err(HopError::Refused(hop, why)) => {
                relay_refused(&target, &hop, why);
                if let Some(slot) = pending.slot {
                    self.reply_local(slot, 403, "Forbidden", &[], now)
                }
            }
            Err(e) => {
                tracing::debug!(target = %target, error = %e, "cannot relay");
                if let Some(slot) = pending.slot {
                    if routable_scheme(&target) {
                        self.reply_local(slot, 478, "Unresolvable Destination", &[], now)
                    } else {
                        // §16.3 step 1 / §21.4.16.
                        self.reply_local(slot, 416, "Unsupported URI Scheme", &[], now)
                    }
                }
            }
        }
        None
    }

    /// Our Record-Route or Path entry on `listener`'s side for the peer
    /// at `peer` over `protocol`: the listener's, with a flow token of
    /// `kind` as its user part.
    fn flow_entry(
        &self,
        kind: TokenKind,
        protocol: Protocol,
        peer: SocketAddr,
        (listener, sips): (usize, bool),
    ) -> String {
        let token = self.config.flow_tokens.encode(kind, protocol, peer);
        let name = self.route_name(listener, sips);
        let (scheme, host_and_params) = name
            .strip_prefix("<sips:")
            .map(|rest| ("sips", rest))
            .unwrap_or(("sip", name.strip_prefix("<sip:").unwrap_or(name)));
        format!("<{scheme}:{token}@{host_and_params}")
    }

    /// Our Record-Route value on `listener`: `sips:` on a TLS or WSS
    /// listener when the request is a `sips:` one.
    fn route_name(&self, listener: usize, sips: bool) -> &str {
        let secure = sips
            .then(|| {
                self.record_route_sips
                    .get(listener)
                    .and_then(Option::as_deref)
            })
            .flatten();
        secure.unwrap_or_else(|| self.record_route.get(listener).map_or("", String::as_str))
    }

    /// The connection a request that popped our Route goes on: the one
    /// the flow token in the *last* entry we popped names. Where a token is
    /// involved we write one entry for each side (see `route_entries`), and
    /// a request pops the sender's side first, so the last names the other
    /// side, whatever address the sender now has (a browser whose
    /// WebSocket reconnected, a phone that moved networks). A Record-Route
    /// token counts only within a dialog: an initial request must not reach
    /// a client through a token some dialog peer has seen.
    pub(super) fn popped_flow(
        &self,
        msg: &Message,
        popped: usize,
        (source, protocol): (SocketAddr, Protocol),
    ) -> Option<(TokenKind, Hop)> {
        let last = msg.header_values(HeaderName::Route).take(popped).last()?;
        let (kind, hop) = self.config.flow_tokens.decode(route_user(last)?)?;
        // A dialog from an earlier build, which wrote one entry only: a
        // token naming the sender's own flow is going the other way.
        let own_flow = popped == 1 && hop.addr == source && hop.protocol == protocol;
        (!own_flow && (kind == TokenKind::Path || msg.to_tag().is_some())).then_some((kind, hop))
    }

    /// Forwards the request on one new branch (statelessly for an ACK).
    pub(super) fn open_branch(
        &mut self,
        now: Instant,
        pending: &Pending,
        decision: &Decision,
        plan: BranchPlan<'_>,
    ) -> Option<u64> {
        let msg = &pending.msg;
        let mut hop = plan.hop.clone();
        let token = pending.slot.map(|_| self.fresh_token());
        let traceparent = match (pending.slot, token) {
            (Some(slot), Some(token)) if self.config.tracing.is_some() => {
                let target = plan.new_ruri.or(msg.request_uri());
                self.trace_branch_opened(slot, token, now, &hop, target)
            }
            _ => None,
        };
        let traced = (token, traceparent.as_deref());
        let mut bytes = self.branch_bytes(pending, decision, &plan, &hop, traced);
        let mut udp_fallback = None;
        if token.is_some() && plan.may_leave_udp && self.too_large_for_udp(&hop, bytes.len()) {
            // §18.1.1: IP fragments are what cloud NATs drop first.
            let over_tcp = Hop {
                protocol: Protocol::Tcp,
                ..hop.clone()
            };
            let tcp_bytes = self.branch_bytes(pending, decision, &plan, &over_tcp, traced);
            udp_fallback = Some(std::mem::replace(&mut bytes, tcp_bytes));
            hop = over_tcp;
            if let (Some(slot), Some(token), Some(_)) = (pending.slot, token, traced.1) {
                self.trace_branch_transport(slot, token, Protocol::Tcp);
            }
        }
        self.send(hop.clone(), bytes.clone());
        let (Some(slot), Some(token)) = (pending.slot, token) else {
            return None;
        };
        let settings = self.settings();
        let mut client = ClientTx::new(
            Owner::Server(slot),
            pending.loop_hash,
            SentMethod::of(msg.method_str()),
            bytes,
            hop,
            settings.t1,
            now + settings.timer_c,
        );
        if let Some(started) = self.servers.get(&slot).map(|tx| tx.started) {
            client.lifetime_end = Some(started + settings.max_invite_lifetime);
            client.push_timer_c(now + settings.timer_c);
        }
        client.udp_fallback = udp_fallback;
        client.call_slot = plan.call_slot;
        client.caller_flow = (pending.protocol != Protocol::Udp)
            .then(|| Hop::flow(pending.source, pending.protocol));
        if let Some((index, silence, strict_source)) = plan.candidate {
            client.candidate = Some(index);
            client.strict_source = strict_source;
            client.no_response = Some(silence);
            let owner = TimerOwner::Client(token);
            self.timers.arm(now, silence, owner, TimerKind::NoResponse);
        }
        self.add_client(now, token, client);
        if let Some(tx) = self.servers.get_mut(&slot) {
            tx.branches.push(token);
            tx.context.open_branch();
        }
        Some(token)
    }

    /// The copy of the request one branch sends to `hop`: our Via (with
    /// the branch of `token`, or a stateless one for an ACK) from the
    /// listener that reaches it, the plan's edits, and the branch span's
    /// `traceparent` when the call is traced.
    fn branch_bytes(
        &self,
        pending: &Pending,
        decision: &Decision,
        plan: &BranchPlan<'_>,
        hop: &Hop,
        (token, traceparent): (Option<u64>, Option<&str>),
    ) -> Bytes {
        let msg = &pending.msg;
        let out_listener = self.listener_for(hop);
        let via = self.via_value(out_listener, |out| match token {
            Some(token) => push_client_branch(out, pending.loop_hash, token),
            None => {
                let upstream = msg.top_via().and_then(|v| v.branch()).unwrap_or("");
                push_stateless_branch(out, pending.loop_hash, upstream)
            }
        });
        let (record_route, path) = self.route_entries(pending, decision, hop, out_listener);
        Bytes::from(forward::forward_request(
            msg,
            &ForwardEdits {
                new_ruri: plan.new_ruri,
                routes_popped: plan.routes_popped,
                routes_dropped: usize::from(pending.preroute.strict_ruri.is_some()),
                append_route: plan.append_route,
                header_edits: &decision.header_edits,
                record_route: record_route.as_deref(),
                path: path.as_deref(),
                push_routes: plan.push_routes,
                max_breadth: plan.max_breadth,
                via: &via,
                source: pending.source,
                traceparent,
            },
        ))
    }

    /// A request of `len` bytes to `hop` is over `limits.udp_max_request_bytes`
    /// and could go over TCP instead (we have a TCP listener to name).
    fn too_large_for_udp(&self, hop: &Hop, len: usize) -> bool {
        let limit = self.config.udp_max_request_bytes;
        limit > 0
            && len > limit
            && hop.protocol == Protocol::Udp
            && !hop.flow
            && self
                .config
                .listeners
                .iter()
                .any(|l| l.protocol == Protocol::Tcp)
    }

    /// A branch that left UDP for its size and whose TCP connection
    /// failed is sent over UDP after all (§18.1.1). False when the branch
    /// did not switch.
    pub(super) fn fall_back_to_udp(&mut self, token: u64, now: Instant) -> bool {
        let t1 = self.settings().t1;
        let Some(client) = self.clients.get_mut(&token) else {
            return false;
        };
        let Some(udp) = client.udp_fallback.take() else {
            return false;
        };
        client.hop.protocol = Protocol::Udp;
        client.request = udp.clone();
        client.retransmit = t1;
        let kind = if client.invite {
            TimerKind::A
        } else {
            TimerKind::E
        };
        let hop = client.hop.clone();
        self.timers.arm(now, t1, TimerOwner::Client(token), kind);
        self.send(hop, udp);
        true
    }

    /// What we add to a request we forward when the script asked for
    /// record_route(): the Record-Route (RFC 5658: leaving by another
    /// interface, address family or transport, it names us once for each
    /// side, the outbound one on top, as the callee's first hop), or for a
    /// REGISTER, a Path (RFC 3327) instead, so that the registrar's requests
    /// for the client come back through us and over its connection (or to
    /// the address its UDP REGISTER came from). A peer on a connection is named by a flow token
    /// in the entry for its side (see `proxy::flow`).
    fn route_entries(
        &self,
        pending: &Pending,
        decision: &Decision,
        hop: &Hop,
        out_listener: usize,
    ) -> (Option<Cow<'_, str>>, Option<String>) {
        if !decision.record_route {
            return (None, None);
        }
        let caller_on_connection = pending.protocol != Protocol::Udp;
        let sips = pending.msg.request_uri().is_some_and(|uri| {
            uri.get(..5)
                .is_some_and(|s| s.eq_ignore_ascii_case("sips:"))
        });
        if pending.msg.method() == Some(Method::Register) {
            // Whatever the transport: a UDP phone behind NAT is reached
            // only at the address its REGISTER came from, through us.
            let path = self.flow_entry(
                TokenKind::Path,
                pending.protocol,
                pending.source,
                (out_listener, sips),
            );
            return (None, Some(path));
        }
        let caller_side = caller_on_connection.then(|| {
            self.flow_entry(
                TokenKind::RecordRoute,
                pending.protocol,
                pending.source,
                (pending.listener, sips),
            )
        });
        // A callee on a flow: its connection, or (UDP) the address a Path
        // token sent us to, which its dialog's requests must use too.
        let callee_side = hop.flow.then(|| {
            self.flow_entry(
                TokenKind::RecordRoute,
                hop.protocol,
                hop.addr,
                (out_listener, sips),
            )
        });
        let name = |index: usize| self.route_name(index, sips);
        // Every entry of ours carries the dialog's seal (`proxy::seal`).
        let msg = &pending.msg;
        let seal = self.config.seals.seal(
            msg.call_id().unwrap_or(""),
            msg.from_tag().unwrap_or(""),
            pending.source.ip(),
        );
        let sealed = |entry: &str| sealed_entry(entry, &seal);
        // Where a token is involved both sides get an entry, even on one
        // listener: a request pops its sender's side first, and goes on by
        // the other (see `popped_flow`).
        let record_route = match (pending.listener == out_listener, callee_side, caller_side) {
            (true, None, None) => sealed(name(out_listener)),
            (_, callee_side, caller_side) => format!(
                "{}, {}",
                sealed(callee_side.as_deref().unwrap_or(name(out_listener))),
                sealed(caller_side.as_deref().unwrap_or(name(pending.listener)))
            ),
        };
        (Some(Cow::Owned(record_route)), None)
    }
}

/// The failover of a relay to a name RFC 3263 found several places for:
/// a group of its own (`dns`) whose candidates share the URI and report
/// no health. §4.3: the next place after a transaction timeout (`timeout`,
/// 63·T1, just before Timer B or F would end the branch: a slow answer to
/// a MESSAGE must not deliver it twice) or a 503.
fn dns_failover(target: &str, first: Hop, alternates: Vec<Hop>, timeout: Duration) -> GatewayRelay {
    let uri: Arc<str> = Arc::from(target);
    GatewayRelay {
        group: Arc::from("dns"),
        policy: Arc::new(crate::proxy::decision::FailoverPolicy {
            passive_health: false,
            no_response: timeout,
            ..Default::default()
        }),
        candidates: std::iter::once(first)
            .chain(alternates)
            .map(|hop| crate::proxy::decision::RelayCandidate {
                uri: uri.clone(),
                hop,
                report_success: false,
                capacity: None,
            })
            .collect(),
    }
}

/// RFC 5393 §5.3: the Max-Breadth we hold for a request (60 when it has
/// none, and never more).
const MAX_BREADTH: u32 = 60;

/// Each of `parallel` branches' share of the request's Max-Breadth, or
/// None when there is not one unit for each (440 Max-Breadth Exceeded).
/// A single branch is forwarding, not forking: it keeps the whole.
fn breadth_shares(msg: &Message, parallel: usize) -> Option<impl Iterator<Item = u32>> {
    let received = msg
        .header_named("Max-Breadth")
        .and_then(|v| v.trim().parse::<u32>().ok());
    let breadth = received.map_or(MAX_BREADTH, |b| b.min(MAX_BREADTH));
    let n = u32::try_from(parallel.max(1)).unwrap_or(u32::MAX);
    if n > 1 && n > breadth {
        return None;
    }
    Some((0..n).map(move |i| breadth / n + u32::from(i < breadth % n)))
}

/// Where a request our UDP Path token routes goes: the address the phone's
/// REGISTER came from, which is the only way to a phone behind NAT; but a
/// Request-URI (its Contact) on that same host names the phone's own SIP
/// port there, which a client that registers from another socket listens
/// on.
fn udp_flow_or_contact(hop: Hop, target: &str) -> Hop {
    if hop.protocol != Protocol::Udp {
        return hop;
    }
    let Ok(uri) = sip::Uri::parse(target) else {
        return hop;
    };
    match uri.host.trim_matches(['[', ']']).parse::<IpAddr>() {
        Ok(ip) if ip == hop.addr.ip() => Hop::flow(
            SocketAddr::new(ip, uri.port.unwrap_or(Protocol::Udp.default_port())),
            Protocol::Udp,
        ),
        _ => hop,
    }
}

/// Whether a URI's scheme is one we route (sip, sips).
fn routable_scheme(uri: &str) -> bool {
    let scheme = uri.split(':').next().unwrap_or("");
    scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips")
}
