//! The response context of a server transaction (RFC 3261 §16.7): the final
//! responses its branches returned, and which of them goes upstream once
//! every branch is done. 2xx responses never wait here: the engine forwards
//! them at once (step 5).

use crate::sip::{HeaderName, Message, Rewriter};

/// What a finished branch left in the context.
pub enum Candidate {
    /// A final response from 300 to 699, as received.
    Response(Message),
    /// A response made here: [`Candidate::TIMEOUT`] for an INVITE branch
    /// with no final response in time (a non-INVITE branch that times out
    /// leaves nothing: RFC 4320 §4.2 forbids a 408 to a non-INVITE
    /// request), [`Candidate::FLOW_FAILED`] for a branch over a client's
    /// connection that has closed, and [`Candidate::TRANSPORT_ERROR`] for a
    /// branch whose connection failed.
    Local(u16, &'static str),
    /// Every gateway candidate left was full, paced or drained: a 503
    /// with this Retry-After (seconds), made here.
    Full(u64),
}

impl Candidate {
    pub const TIMEOUT: Candidate = Candidate::Local(408, "Request Timeout");
    /// RFC 5626 §5.3: the flow a request was routed over is gone.
    pub const FLOW_FAILED: Candidate = Candidate::Local(430, "Flow Failed");
    /// §16.9: a transport error counts as a 503, and a proxy answers a 503
    /// with a 500 of its own (§16.7 step 6).
    pub const TRANSPORT_ERROR: Candidate = Candidate::Local(500, "Server Internal Error");

    pub fn code(&self) -> u16 {
        match self {
            Candidate::Response(msg) => msg.status().unwrap_or(500),
            Candidate::Local(code, _) => *code,
            Candidate::Full(_) => 503,
        }
    }
}

/// The chosen response.
pub enum Best {
    /// Forward this response (top Via still ours), with `challenges` added.
    Response {
        msg: Box<Message>,
        challenges: Vec<(String, String)>,
    },
    /// Answer with a response of our own (a 408 or 430).
    Local(u16, &'static str),
    /// Answer 503 with this Retry-After: no destination could take it.
    Full(u64),
}

/// Response codes that tell the client how to resubmit, preferred within
/// the 4xx class (§16.7 step 6).
const RESUBMIT_HINTS: [u16; 5] = [401, 407, 415, 420, 484];

/// The headers a 401/407 carries its challenges in (§16.7 step 7).
const CHALLENGE_HEADERS: [&str; 2] = ["WWW-Authenticate", "Proxy-Authenticate"];

#[derive(Default)]
pub struct ResponseContext {
    pending: usize,
    finals: Vec<Candidate>,
}

impl ResponseContext {
    pub fn open_branch(&mut self) {
        self.pending += 1;
    }

    /// A branch finished, leaving `candidate` (or nothing).
    pub fn settle(&mut self, candidate: Option<Candidate>) {
        self.pending = self.pending.saturating_sub(1);
        self.finals.extend(candidate);
    }

    pub fn branches_pending(&self) -> usize {
        self.pending
    }

    /// A branch returned a 6xx (a global failure, §21.6).
    pub fn has_global_failure(&self) -> bool {
        self.finals.iter().any(|c| c.code() >= 600)
    }

    /// A copy of the response [`ResponseContext::take_best`] would choose
    /// (None when that is a timeout or there is none), for the script.
    pub fn best_response(&self) -> Option<Message> {
        let codes: Vec<u16> = self.finals.iter().map(Candidate::code).collect();
        match self.finals.get(choose(&codes)?)? {
            Candidate::Response(msg) => Some(msg.clone()),
            Candidate::Local(..) | Candidate::Full(_) => None,
        }
    }

    /// Takes the response to send upstream (§16.7 steps 6 and 7); None when
    /// no branch left a candidate.
    pub fn take_best(&mut self) -> Option<Best> {
        let codes: Vec<u16> = self.finals.iter().map(Candidate::code).collect();
        let chosen = choose(&codes)?;
        let candidate = self.finals.swap_remove(chosen);
        let best = match candidate {
            Candidate::Local(code, reason) => Best::Local(code, reason),
            Candidate::Full(retry_after) => Best::Full(retry_after),
            Candidate::Response(msg) => {
                let challenges = if matches!(codes[chosen], 401 | 407) {
                    self.challenges()
                } else {
                    Vec::new()
                };
                Best::Response {
                    msg: Box::new(msg),
                    challenges,
                }
            }
        };
        self.finals.clear();
        Some(best)
    }

    /// Every challenge line of the other 401 and 407 responses.
    fn challenges(&self) -> Vec<(String, String)> {
        let mut lines = Vec::new();
        for candidate in &self.finals {
            let Candidate::Response(msg) = candidate else {
                continue;
            };
            if !matches!(msg.status(), Some(401 | 407)) {
                continue;
            }
            for header in msg.headers() {
                let name = header.name_str(msg);
                if header.name == HeaderName::Other
                    && CHALLENGE_HEADERS
                        .iter()
                        .any(|c| c.eq_ignore_ascii_case(name))
                {
                    lines.push((name.to_string(), header.value(msg).to_string()));
                }
            }
        }
        lines
    }
}

/// The index of the response to forward (§16.7 step 6): a 6xx if any, else
/// the lowest class; within 4xx a response that helps resubmission; else the
/// first received of the class.
pub fn choose(codes: &[u16]) -> Option<usize> {
    if let Some(six) = codes.iter().position(|&c| c >= 600) {
        return Some(six);
    }
    let class = codes.iter().map(|&c| c / 100).min()?;
    let in_class = |&(_, &c): &(usize, &u16)| c / 100 == class;
    if class == 4 {
        if let Some((i, _)) = codes
            .iter()
            .enumerate()
            .filter(in_class)
            .find(|(_, c)| RESUBMIT_HINTS.contains(c))
        {
            return Some(i);
        }
    }
    codes
        .iter()
        .enumerate()
        .find(|e| in_class(e))
        .map(|(i, _)| i)
}

/// The upstream copy of a branch's response: our Via removed, and `extra`
/// header lines (merged challenges) added.
pub fn upstream_copy(msg: &Message, extra: &[(String, String)]) -> Vec<u8> {
    let mut rw = Rewriter::new(msg);
    if let Some(index) = msg.headers().iter().position(|h| h.name == HeaderName::Via) {
        rw.remove_first_value(index);
    }
    for (name, value) in extra {
        rw.append_header(name, value);
    }
    rw.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn six_hundreds_win_then_the_lowest_class_then_resubmission_hints() {
        assert_eq!(choose(&[]), None);
        assert_eq!(choose(&[486, 603, 302]), Some(1));
        assert_eq!(
            choose(&[503, 486, 404]),
            Some(1),
            "first of the lowest class"
        );
        assert_eq!(choose(&[486, 404, 407]), Some(2), "407 helps resubmission");
        assert_eq!(choose(&[404, 484, 401]), Some(1), "the first hint wins");
        assert_eq!(choose(&[503, 302, 408]), Some(1));
        assert_eq!(choose(&[408, 415]), Some(1));
        assert_eq!(choose(&[500, 503]), Some(0));
    }
}
