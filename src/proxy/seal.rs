//! Dialog seals: our Record-Route URIs carry `;dlg=<16 hex>`, a keyed MAC
//! (SipHash-2-4) over the dialog's Call-ID and the tag of the side that
//! started it. An in-dialog request that pops our Route must present it:
//! the From tag is the initiator's in the caller's requests, the To tag in
//! the callee's, so either tag may match. Nothing about the dialog is
//! stored, and every node configured with the same `security.route_secret`
//! verifies every other node's seals; `route_secret_previous` keeps the
//! dialogs of a rotated key alive.

use crate::sip::{HeaderName, Message, NameAddr, Uri};

/// The URI parameter that carries the seal.
pub const SEAL_PARAM: &str = "dlg";

/// What an in-dialog request's popped Routes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealCheck {
    /// A seal of ours matches the Call-ID and a tag.
    Valid,
    /// None of our popped Routes carries a seal (a dialog older than seals,
    /// or a forged Route).
    Missing,
    /// A seal is there and does not match.
    Forged,
}

#[derive(Debug, Clone)]
pub struct DialogSeals {
    current: [u64; 2],
    previous: Option<[u64; 2]>,
}

impl DialogSeals {
    /// Keys derived from the configured secrets (any length).
    pub fn new(secret: &[u8], previous: Option<&[u8]>) -> Self {
        DialogSeals {
            current: derive_keys(secret),
            previous: previous.map(derive_keys),
        }
    }

    /// The seal for a dialog started with `tag` (the initial request's From tag).
    pub fn seal(&self, call_id: &str, tag: &str) -> u64 {
        mac(self.current, call_id, tag)
    }

    /// Does `seal` (hex) match this Call-ID and one of the tags, under the
    /// current or the previous key?
    pub fn verify(&self, call_id: &str, tags: [Option<&str>; 2], seal: &str) -> bool {
        let Some(seal) = parse_hex16(seal) else {
            return false;
        };
        [Some(self.current), self.previous]
            .into_iter()
            .flatten()
            .any(|keys| {
                tags.iter()
                    .flatten()
                    .any(|tag| mac(keys, call_id, tag) == seal)
            })
    }

    /// Checks an in-dialog request whose top `popped` Route values (and,
    /// from a strict router, its Request-URI) named us.
    pub fn check(&self, msg: &Message, popped: usize, strict_ruri: bool) -> SealCheck {
        let ours = msg
            .header_values(HeaderName::Route)
            .take(popped)
            .filter_map(|value| NameAddr::parse(value).ok().map(|a| a.uri))
            .chain(strict_ruri.then(|| msg.request_uri()).flatten());
        let call_id = msg.call_id().unwrap_or("");
        let tags = [msg.from_tag(), msg.to_tag()];
        let mut seen = false;
        for uri in ours {
            let Some(seal) = Uri::parse(uri).ok().and_then(|u| u.param(SEAL_PARAM)) else {
                continue;
            };
            if self.verify(call_id, tags, seal.unwrap_or("")) {
                return SealCheck::Valid;
            }
            seen = true;
        }
        if seen {
            SealCheck::Forged
        } else {
            SealCheck::Missing
        }
    }
}

/// `entry` (`<sip:host;lr>`, ours) with the seal as its last parameter.
pub fn sealed_entry(entry: &str, seal: u64) -> String {
    let open = entry.strip_suffix('>').unwrap_or(entry);
    let mut out = String::with_capacity(open.len() + SEAL_PARAM.len() + 19);
    out.push_str(open);
    out.push(';');
    out.push_str(SEAL_PARAM);
    out.push('=');
    out.push_str(&format!("{seal:016x}"));
    out.push('>');
    out
}

fn derive_keys(secret: &[u8]) -> [u64; 2] {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(secret);
    let word = |at: usize| {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&digest[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    [word(0), word(8)]
}

fn mac(keys: [u64; 2], call_id: &str, tag: &str) -> u64 {
    use std::hash::Hasher;
    // SipHash-2-4 with a secret key is a MAC for short inputs (see branch.rs).
    #[allow(deprecated)]
    let mut hasher = std::hash::SipHasher::new_with_keys(keys[0], keys[1]);
    hasher.write(call_id.as_bytes());
    hasher.write_u8(0);
    hasher.write(tag.as_bytes());
    hasher.finish()
}

fn parse_hex16(text: &str) -> Option<u64> {
    (text.len() == 16)
        .then(|| u64::from_str_radix(text, 16).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn bye(route: &str, from_tag: &str, to_tag: &str) -> Message {
        let raw = format!(
            "BYE sip:bob@192.0.2.50 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK1\r\n\
Route: {route}\r\nTo: <sip:bob@example.com>;tag={to_tag}\r\n\
From: <sip:alice@example.com>;tag={from_tag}\r\nCall-ID: call-1\r\nCSeq: 2 BYE\r\n\
Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        crate::sip::parse(Bytes::from(raw)).unwrap()
    }

    #[test]
    fn a_seal_holds_for_both_directions_of_its_dialog_only() {
        let seals = DialogSeals::new(b"secret", None);
        let entry = sealed_entry("<sip:192.0.2.1;lr>", seals.seal("call-1", "caller"));
        // The caller hangs up (its tag in From), then the callee (in To).
        assert_eq!(
            seals.check(&bye(&entry, "caller", "callee"), 1, false),
            SealCheck::Valid
        );
        assert_eq!(
            seals.check(&bye(&entry, "callee", "caller"), 1, false),
            SealCheck::Valid
        );
        // Another dialog's tags, or no seal at all.
        assert_eq!(
            seals.check(&bye(&entry, "x", "y"), 1, false),
            SealCheck::Forged
        );
        let plain = "<sip:192.0.2.1;lr>";
        assert_eq!(
            seals.check(&bye(plain, "caller", "callee"), 1, false),
            SealCheck::Missing
        );
        let forged = "<sip:192.0.2.1;lr;dlg=0123456789abcdef>";
        assert_eq!(
            seals.check(&bye(forged, "caller", "callee"), 1, false),
            SealCheck::Forged
        );
        // Not popped: not checked as ours.
        assert_eq!(
            seals.check(&bye(&entry, "caller", "callee"), 0, false),
            SealCheck::Missing
        );
    }

    #[test]
    fn another_node_with_the_secret_and_a_rotated_key_verify_the_seal() {
        let old = DialogSeals::new(b"old", None);
        let entry = sealed_entry("<sip:192.0.2.1;lr>", old.seal("call-1", "caller"));
        let twin = DialogSeals::new(b"old", None);
        assert_eq!(
            twin.check(&bye(&entry, "caller", "callee"), 1, false),
            SealCheck::Valid
        );
        let rotated = DialogSeals::new(b"new", Some(b"old"));
        assert_eq!(
            rotated.check(&bye(&entry, "caller", "callee"), 1, false),
            SealCheck::Valid
        );
        let stranger = DialogSeals::new(b"new", None);
        assert_eq!(
            stranger.check(&bye(&entry, "caller", "callee"), 1, false),
            SealCheck::Forged
        );
    }
}
