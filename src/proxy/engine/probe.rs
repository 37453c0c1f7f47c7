//! OPTIONS probes the caller asks for, sent as non-INVITE client
//! transactions (their outcomes come back from `response` and `timers`).

use super::*;

impl<F: Clone> Engine<F> {
    // ----- probes -----------------------------------------------------------

    /// Sends an OPTIONS probe to `uri` at `target` as a non-INVITE client
    /// transaction; its outcome comes back as [`Output::ProbeDone`] with
    /// `probe`, a timeout once the prober gives up on it (the transaction
    /// then ends, rather than retransmit until Timer F for nobody).
    pub fn start_probe(
        &mut self,
        now: Instant,
        probe: u64,
        uri: &str,
        target: ProbeTarget,
        call_id: &str,
    ) {
        let ProbeTarget {
            hop,
            strict_source,
            give_up,
            from,
        } = target;
        let token = self.fresh_token();
        let out_listener = self.listener_for(&hop);
        let via = self.via_value(out_listener, |out| push_client_branch(out, 0, token));
        let host = self
            .config
            .listeners
            .get(out_listener)
            .map_or("invalid", Listener::host);
        let from = match from {
            Some(uri) => format!("<{uri}>;tag={}", build::new_tag()),
            None => format!("<sip:siphon@{host}>;tag={}", build::new_tag()),
        };
        let to = format!("<{uri}>");
        let bytes = Bytes::from(build::request(
            "OPTIONS",
            uri,
            &via,
            &from,
            &to,
            call_id,
            1,
            &[],
        ));
        self.send(hop.clone(), bytes.clone());
        let mut client = ClientTx::new(
            Owner::Probe { probe, sent: now },
            0,
            SentMethod::Known(Method::Options),
            bytes,
            hop,
            self.settings().t1,
            now,
        );
        client.strict_source = strict_source;
        self.add_client(now, token, client);
        self.timers.arm(
            now,
            give_up,
            TimerOwner::Client(token),
            TimerKind::NoResponse,
        );
    }
}
