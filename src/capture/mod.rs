//! Capture of every SIP message sent and received, for Homer and sngrep
//! (`capture.hep`): the HEPv3 framing ([`hep`]) and which messages to
//! capture. Pure: the capture thread (`actors::capture`) does the I/O.

pub mod hep;

/// Which messages a capture takes: by the method they belong to (a
/// response by its CSeq's), and a share of calls (the same decision for
/// every message of a Call-ID).
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureFilter {
    /// Upper-case methods; None: every method.
    pub methods: Option<Vec<String>>,
    /// From 0 to 1.
    pub sample: f64,
    /// Keys the sampling hash, so that calls are not chosen predictably.
    pub seed: u64,
}

impl CaptureFilter {
    /// Whether to capture `message` of `call_id`, whose method (or, for a
    /// response, its CSeq's method) is `method`.
    pub fn takes(&self, call_id: &str, method: &str) -> bool {
        if let Some(methods) = &self.methods {
            if !methods.iter().any(|m| m.eq_ignore_ascii_case(method)) {
                return false;
            }
        }
        if self.sample >= 1.0 {
            return true;
        }
        let hash = xxhash_rust::xxh3::xxh3_64_with_seed(call_id.as_bytes(), self.seed);
        (hash as f64 / u64::MAX as f64) < self.sample
    }
}

/// The calls a script took out of capture (`request.capture(False)`), by
/// Call-ID: a fixed table of hashes, so it never grows. A newer mark that
/// lands on an older one's place replaces it (the older call is captured
/// again from then on); with [`Uncaptured::SLOTS`] places, a mark outlives
/// tens of thousands of later ones on average.
pub struct Uncaptured {
    slots: Box<[std::sync::atomic::AtomicU64]>,
    seed: u64,
}

impl Uncaptured {
    pub const SLOTS: usize = 1 << 16;

    pub fn new(seed: u64) -> Self {
        Uncaptured {
            slots: (0..Self::SLOTS).map(|_| Default::default()).collect(),
            seed,
        }
    }

    fn place(&self, call_id: &str) -> (usize, u64) {
        let hash = xxhash_rust::xxh3::xxh3_64_with_seed(call_id.as_bytes(), self.seed) | 1;
        ((hash >> 1) as usize % self.slots.len(), hash)
    }

    /// Takes `call_id` out of capture (`on` false), or puts it back.
    pub fn set(&self, call_id: &str, on: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let (place, hash) = self.place(call_id);
        if !on {
            self.slots[place].store(hash, Relaxed);
        } else {
            let _ = self.slots[place].compare_exchange(hash, 0, Relaxed, Relaxed);
        }
    }

    /// Whether `call_id` was taken out of capture.
    pub fn contains(&self, call_id: &str) -> bool {
        let (place, hash) = self.place(call_id);
        self.slots[place].load(std::sync::atomic::Ordering::Relaxed) == hash
    }
}

/// The Call-ID and method (a response's CSeq method) of a framed message,
/// read from its header lines without a full parse; empty when absent. A
/// body that is not text (ISUP in a multipart, say) does not matter.
pub fn call_id_and_method(message: &[u8]) -> (&str, &str) {
    let head = match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => &message[..end],
        None => message,
    };
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let first = lines.next().unwrap_or(b"");
    let mut method = match first.starts_with(b"SIP/") {
        true => "",
        false => text(first.split(|&b| b == b' ').next().unwrap_or(b"")),
    };
    let mut call_id = "";
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (text(&line[..colon]), &line[colon + 1..]);
        if name.eq_ignore_ascii_case("call-id") || name.eq_ignore_ascii_case("i") {
            call_id = text(value);
        } else if method.is_empty() && name.eq_ignore_ascii_case("cseq") {
            method = text(value).split_whitespace().nth(1).unwrap_or("");
        }
    }
    (call_id, method)
}

/// `bytes` as trimmed text; empty when not UTF-8.
fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or("").trim()
}

/// Whether `bytes` may be a SIP message rather than a keepalive (CR/LF,
/// STUN, NUL): after any CR/LF it starts with a letter.
pub fn looks_like_sip(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .find(|&&b| b != b'\r' && b != b'\n')
        .is_some_and(u8::is_ascii_alphabetic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_taken_out_of_capture_stays_out_until_put_back() {
        let marks = Uncaptured::new(7);
        assert!(!marks.contains("ping-1@h"));
        marks.set("ping-1@h", false);
        assert!(marks.contains("ping-1@h"));
        assert!(!marks.contains("call-2@h"), "other calls are captured");
        // Putting back a call that was never out changes nothing else.
        marks.set("call-2@h", true);
        assert!(marks.contains("ping-1@h"));
        marks.set("ping-1@h", true);
        assert!(!marks.contains("ping-1@h"));
        // Most of many marks are kept (only a collision replaces one).
        let calls: Vec<String> = (0..1000).map(|n| format!("opt-{n}@h")).collect();
        calls.iter().for_each(|c| marks.set(c, false));
        let kept = calls.iter().filter(|c| marks.contains(c)).count();
        assert!(kept >= 980, "{kept} of 1000 kept");
    }

    #[test]
    fn a_response_belongs_to_its_cseq_method_and_compact_names_count() {
        let request = b"OPTIONS sip:a@example.com SIP/2.0\r\ni: abc@h\r\nCSeq: 1 OPTIONS\r\n\r\n";
        assert_eq!(call_id_and_method(request), ("abc@h", "OPTIONS"));
        let response = b"SIP/2.0 200 OK\r\nCall-ID: xyz\r\nCSeq: 7 INVITE\r\n\r\nbody: x";
        assert_eq!(call_id_and_method(response), ("xyz", "INVITE"));
        assert_eq!(call_id_and_method(b"\xff\xfe"), ("", ""));
        let binary_body =
            b"INVITE sip:a@h SIP/2.0\r\nI: bin@h\r\nCSeq: 1 INVITE\r\n\r\n\xff\x00\xfe";
        assert_eq!(call_id_and_method(binary_body), ("bin@h", "INVITE"));
        assert!(looks_like_sip(b"\r\nOPTIONS sip:a@h SIP/2.0"));
        assert!(!looks_like_sip(b"\r\n\r\n"));
        assert!(!looks_like_sip(b"\x00\x01\x00\x00"), "STUN");
        assert!(!looks_like_sip(b""));
    }

    #[test]
    fn methods_filter_and_calls_are_sampled_whole() {
        let only_invites = CaptureFilter {
            methods: Some(vec!["INVITE".into(), "BYE".into()]),
            sample: 1.0,
            seed: 1,
        };
        assert!(only_invites.takes("a", "INVITE"));
        assert!(!only_invites.takes("a", "OPTIONS"));
        let half = CaptureFilter {
            methods: None,
            sample: 0.5,
            seed: 7,
        };
        let taken = (0..10_000)
            .filter(|n| half.takes(&format!("call-{n}"), "INVITE"))
            .count();
        assert!((4_500..5_500).contains(&taken), "{taken} of 10000");
        // Every message of a call: the same answer.
        for n in 0..100 {
            let id = format!("call-{n}");
            assert_eq!(half.takes(&id, "INVITE"), half.takes(&id, "BYE"));
        }
        let none = CaptureFilter {
            sample: 0.0,
            ..half
        };
        assert!(!none.takes("call-1", "INVITE"));
    }
}
