//! What nodes sharing health (`gateway.share_health`) tell each other: one
//! message per change of a node's own verdict on a destination, and the
//! destinations it still finds down every [`PEER_RENEW`]. Plain data; the
//! Redis channel that carries it is in `actors::health_share`.

use serde::{Deserialize, Serialize};

use super::destination::{Availability, Transition};

pub use super::destination::{PEER_HOLD, PEER_RENEW};

/// The longest message read off the channel; anything longer is dropped.
pub const MAX_NEWS_BYTES: usize = 4096;

/// One node's verdict on one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthNews {
    /// `server.instance_id` of the node that found it.
    pub node: String,
    /// Random per process: tells a node's own messages from those of
    /// another node misconfigured with the same `instance_id`.
    #[serde(default)]
    pub session: u64,
    pub group: String,
    pub uri: String,
    pub down: bool,
    /// What decided: `probe`, `passive`, `retry-after`, `script`, `admin`
    /// (`mark` for a mark made before the actors ran), or `renewal` for a
    /// repeat of a destination still down.
    pub source: String,
    /// The reporting node's own log text for it.
    pub reason: String,
}

impl HealthNews {
    /// The news of a change of this node's verdict; `source` names a mark's
    /// maker (a transition knows only that it was a mark).
    pub fn of_transition(
        node: &str,
        group: &str,
        uri: &str,
        transition: &Transition,
        source: Option<&str>,
    ) -> HealthNews {
        HealthNews {
            node: node.to_string(),
            session: 0,
            group: group.to_string(),
            uri: uri.to_string(),
            down: transition.to == Availability::Down,
            source: source
                .unwrap_or_else(|| transition.reason.source())
                .to_string(),
            reason: transition.reason.to_string(),
        }
    }

    /// The repeat of a destination this node still finds down.
    pub fn renewal(node: &str, group: &str, uri: &str) -> HealthNews {
        HealthNews {
            node: node.to_string(),
            session: 0,
            group: group.to_string(),
            uri: uri.to_string(),
            down: true,
            source: "renewal".to_string(),
            reason: "still down".to_string(),
        }
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a message; a clear error for anything else on the channel.
    pub fn decode(payload: &[u8]) -> Result<HealthNews, String> {
        if payload.len() > MAX_NEWS_BYTES {
            return Err(format!(
                "{} bytes, more than {MAX_NEWS_BYTES}",
                payload.len()
            ));
        }
        serde_json::from_slice(payload).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::{Destination, FailureReason, Group};
    use std::time::{Duration, Instant};

    fn group() -> Group {
        let destinations = vec![
            Destination::new("sip:a.example.com", "192.0.2.1:5060".parse().unwrap()),
            Destination::new("sip:b.example.com", "192.0.2.2:5060".parse().unwrap()),
        ];
        Group::new("backends", crate::gateway::Algorithm::Hash, destinations, 3)
    }

    #[test]
    fn news_round_trips_and_junk_is_refused() {
        let news = HealthNews::renewal("lb1", "backends", "sip:a.example.com");
        assert_eq!(HealthNews::decode(news.encode().as_bytes()), Ok(news));
        assert!(HealthNews::decode(b"hello").is_err());
        assert!(HealthNews::decode(br#"{"node":"lb1"}"#).is_err());
        let long = vec![b' '; MAX_NEWS_BYTES + 1];
        assert!(HealthNews::decode(&long).unwrap_err().contains("more than"));
    }

    #[test]
    fn a_peer_report_keeps_a_destination_out_until_lifted_or_silent() {
        let mut group = group();
        let t0 = Instant::now();
        let down = group.record_peer("sip:a.example.com", "lb1", true, "timeout", t0);
        let down = down.expect("a transition");
        assert_eq!(down.to, Availability::Down);
        assert_eq!(down.reason.source(), "peer");
        assert!(down
            .reason
            .to_string()
            .contains("node lb1 reports it down (timeout)"));
        assert!(!group.is_up(0, t0));
        // A renewal says nothing new; an up from another peer lifts nothing.
        assert_eq!(
            group.record_peer("sip:a.example.com", "lb1", true, "still down", t0),
            None
        );
        assert_eq!(
            group.record_peer("sip:a.example.com", "lb3", false, "", t0),
            None
        );
        // Its own up lifts it.
        let up = group
            .record_peer("sip:a.example.com", "lb1", false, "", t0)
            .unwrap();
        assert_eq!((up.from, up.to), (Availability::Down, Availability::Up));
        assert!(group.is_up(0, t0));

        // Not renewed: out for PEER_HOLD, then back with the reason logged.
        group.record_peer("sip:a.example.com", "lb1", true, "timeout", t0);
        let renewed = t0 + PEER_RENEW;
        group.record_peer("sip:a.example.com", "lb1", true, "still down", renewed);
        assert_eq!(
            group.refresh(t0 + PEER_HOLD).count(),
            0,
            "renewed, still held"
        );
        assert!(!group.is_up(0, t0 + PEER_HOLD));
        let back: Vec<_> = group.refresh(renewed + PEER_HOLD).collect();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].1.to, Availability::Up);
        assert!(back[0]
            .1
            .reason
            .to_string()
            .contains("lb1's report was not renewed"));
        // Unknown uris are ignored.
        assert_eq!(
            group.record_peer("sip:z.example.com", "lb1", true, "x", t0),
            None
        );
    }

    #[test]
    fn peers_never_bring_back_what_this_node_finds_down() {
        let mut group = group();
        let t0 = Instant::now();
        group.mark_down("sip:b.example.com");
        group.record_peer("sip:b.example.com", "lb1", true, "x", t0);
        assert_eq!(
            group.record_peer("sip:b.example.com", "lb1", false, "", t0),
            None
        );
        assert!(!group.is_up(1, t0));
        // This node's own mark_up does not override a peer either.
        group.record_peer("sip:b.example.com", "lb1", true, "x", t0);
        group.mark_up("sip:b.example.com", t0);
        assert!(!group.is_up(1, t0));
        assert_eq!(
            group
                .health(1)
                .unwrap()
                .peers_reporting_down(t0)
                .collect::<Vec<_>>(),
            ["lb1"]
        );
    }

    #[test]
    fn peers_never_leave_a_group_with_nothing_to_choose() {
        // A partial partition: lb1 cannot reach a, and this node cannot
        // reach b. Peers hold a out, this node's probes hold b out.
        let mut group = group();
        let t0 = Instant::now();
        group.record_peer("sip:a.example.com", "lb1", true, "timeout", t0);
        let mut eligible = Vec::new();
        group.view(t0).fill_eligible(None, t0, &mut eligible);
        assert_eq!(eligible, [1], "b while it is up here");
        for _ in 0..3 {
            group.record_failure(1, FailureReason::Timeout, None, t0);
        }
        // Nothing up by the combined verdict: a, which this node reaches.
        group.view(t0).fill_eligible(None, t0, &mut eligible);
        assert_eq!(eligible, [0]);
        assert_eq!(group.select(None, None, t0), Some(0));
        // Passive health ejects b although a peer holds a out: this node
        // finds a up, so the group is left with a, not with nothing.
        let mut group = self::group();
        group.record_peer("sip:a.example.com", "lb1", true, "timeout", t0);
        for _ in 0..3 {
            group.record_passive_failure(1, FailureReason::Timeout, None, t0);
        }
        assert!(group.health(1).unwrap().ejected(t0));
        group.view(t0).fill_eligible(None, t0, &mut eligible);
        assert_eq!(eligible, [0]);
    }

    #[test]
    fn a_hold_running_out_is_this_nodes_news_with_its_own_reason() {
        let mut group = group();
        let t0 = Instant::now();
        let hold = Duration::from_secs(2);
        group.record_failure(0, FailureReason::Status(503), Some(hold), t0);
        assert_eq!(group.take_news()[0].1.reason.source(), "retry-after");
        // A peer's report runs out in the same tick as the Retry-After hold.
        group.record_peer("sip:a.example.com", "lb1", true, "x", t0 + hold - PEER_HOLD);
        let back: Vec<_> = group.refresh(t0 + hold).collect();
        assert_eq!(back.len(), 1, "{back:?}");
        let news = group.take_news();
        assert_eq!(news.len(), 1);
        assert_eq!(news[0].1.to, Availability::Up);
        assert_eq!(news[0].1.reason.to_string(), "Retry-After hold expired");
    }

    #[test]
    fn mark_up_after_a_peer_report_ran_out_is_up_at_once() {
        let mut group = group();
        let t0 = Instant::now();
        group.record_peer("sip:a.example.com", "lb1", true, "x", t0);
        group.mark_down("sip:a.example.com");
        let later = t0 + PEER_HOLD;
        group.mark_up("sip:a.example.com", later);
        assert!(group.is_up(0, later));
        assert_eq!(
            group.refresh(later).count(),
            0,
            "no spurious down -> up line"
        );
    }

    #[test]
    fn only_this_nodes_own_verdict_is_news() {
        let mut group = group();
        let t0 = Instant::now();
        // A peer's report changes availability but is not this node's news.
        group.record_peer("sip:a.example.com", "lb1", true, "x", t0);
        assert!(group.take_news().is_empty());
        assert!(group.own_down(t0).is_empty());

        // Probes fail while the peer holds it: no transition to log, but
        // this node's own verdict changed, and that is news.
        for _ in 0..3 {
            let transition = group.record_failure(0, FailureReason::Timeout, None, t0);
            assert_eq!(transition, None);
        }
        let news = group.take_news();
        assert_eq!(news.len(), 1);
        assert_eq!((news[0].0, news[0].1.to), (0, Availability::Down));
        assert_eq!(news[0].1.reason.source(), "probe");
        assert!(group.take_news().is_empty(), "taken once");
        assert_eq!(group.own_down(t0), [0]);

        // Marks are news too, and only the latest change waits.
        group.mark_down("sip:b.example.com");
        group.mark_up("sip:b.example.com", t0);
        assert!(
            group.take_news().is_empty(),
            "down then up again: nothing changed"
        );
        group.mark_down("sip:b.example.com");
        let news = group.take_news();
        let message = HealthNews::of_transition(
            "lb2",
            "backends",
            "sip:b.example.com",
            &news[0].1,
            Some("admin"),
        );
        assert_eq!(
            (
                message.down,
                message.source.as_str(),
                message.reason.as_str()
            ),
            (true, "admin", "marked down")
        );
    }
}
