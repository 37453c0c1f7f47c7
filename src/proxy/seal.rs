//! Dialog seals: our Record-Route URIs carry `;dlg=<16 hex><caller>`, a
//! keyed MAC (SipHash-2-4) over the dialog's Call-ID, the tag of the side
//! that started it and the address that side sent it from, followed by
//! that address in hex. An in-dialog request that pops our Route must
//! present it: the From tag is the initiator's in the caller's requests,
//! the To tag in the callee's, so either tag may match. The caller's
//! address, proven by the MAC, lets the callee's requests reach it even on
//! a private or loopback network (`security::relay`): it is where the
//! dialog came from. Nothing about the dialog is stored, and every node
//! configured with the same `security.route_secret` verifies every other
//! node's seals; `route_secret_previous` keeps the dialogs of a rotated key
//! alive.

use std::net::IpAddr;

use crate::proxy::engine::branch::{parse_hex16, push_hex16};
use crate::sip::{HeaderName, Message};

/// The URI parameter that carries the seal.
pub const SEAL_PARAM: &str = "dlg";

/// What an in-dialog request's popped Routes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealCheck {
    /// A seal of ours matches the Call-ID and a tag; the dialog's caller
    /// sent its first request from this address.
    Valid(IpAddr),
    /// None of our popped Routes carries a seal (a dialog older than seals,
    /// or a forged Route).
    Missing,
    /// A seal is there and does not match.
    Forged,
}

#[derive(Debug, Clone, PartialEq, Eq)]
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

    /// These seals, taking over from `running`: with no previous secret
    /// of their own, the running key is the previous one, so that the
    /// dialogs it sealed go on (a run's random key cannot be named).
    pub fn succeeding(mut self, running: &DialogSeals) -> Self {
        if self.previous.is_none() && self.current != running.current {
            self.previous = Some(running.current);
        }
        self
    }

    /// The seal for a dialog started with `tag` (the initial request's
    /// From tag) by a caller at `caller`.
    pub fn seal(&self, call_id: &str, tag: &str, caller: IpAddr) -> Seal {
        let caller = crate::security::canonical(caller);
        Seal {
            mac: mac(self.current, call_id, tag, caller),
            caller,
        }
    }

    /// The caller's address when `seal` (the parameter's text) matches
    /// this Call-ID and one of the tags, under the current or the previous
    /// key.
    pub fn verify(&self, call_id: &str, tags: [Option<&str>; 2], seal: &str) -> Option<IpAddr> {
        let text = seal.as_bytes();
        let seal = parse_hex16(text.get(..16)?)?;
        let caller = parse_ip(text.get(16..)?)?;
        let matches = [Some(self.current), self.previous]
            .into_iter()
            .flatten()
            .any(|keys| {
                tags.iter()
                    .flatten()
                    .any(|tag| mac(keys, call_id, tag, caller) == seal)
            });
        matches.then_some(caller)
    }

    /// Checks an in-dialog request whose top `popped` Route values (and,
    /// from a strict router, its Request-URI) named us.
    pub fn check(&self, msg: &Message, popped: usize, strict_ruri: bool) -> SealCheck {
        let ours = msg
            .header_values(HeaderName::Route)
            .take(popped)
            .chain(strict_ruri.then(|| msg.request_uri()).flatten());
        let call_id = msg.call_id().unwrap_or("");
        let tags = [msg.from_tag(), msg.to_tag()];
        let mut seen = false;
        // The values are ours (they named us), written as `sealed_entry`
        // does: the parameter is found without parsing the URI, and a
        // value shaped otherwise simply fails the MAC.
        for value in ours {
            let Some(seal) = seal_param(value) else {
                continue;
            };
            if let Some(caller) = self.verify(call_id, tags, seal) {
                return SealCheck::Valid(caller);
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

/// One dialog's seal: the MAC, and the caller's address it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal {
    mac: u64,
    caller: IpAddr,
}

/// `entry` (`<sip:host;lr>`, ours) with the seal as its last parameter.
pub fn sealed_entry(entry: &str, seal: &Seal) -> String {
    let open = entry.strip_suffix('>').unwrap_or(entry);
    let mut out = String::with_capacity(open.len() + SEAL_PARAM.len() + 51);
    out.push_str(open);
    out.push(';');
    out.push_str(SEAL_PARAM);
    out.push('=');
    push_hex16(&mut out, seal.mac);
    match seal.caller {
        IpAddr::V4(v4) => push_hex(&mut out, &v4.octets()),
        IpAddr::V6(v6) => push_hex(&mut out, &v6.octets()),
    }
    out.push('>');
    out
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
}

/// An IPv4 (8 hex digits) or IPv6 (32) address.
fn parse_ip(hex: &[u8]) -> Option<IpAddr> {
    fn nibble(digit: u8) -> Option<u8> {
        match digit {
            b'0'..=b'9' => Some(digit - b'0'),
            b'a'..=b'f' => Some(digit - b'a' + 10),
            b'A'..=b'F' => Some(digit - b'A' + 10),
            _ => None,
        }
    }
    let mut octets = [0u8; 16];
    let len = match hex.len() {
        8 => 4,
        32 => 16,
        _ => return None,
    };
    for (octet, pair) in octets.iter_mut().zip(hex.chunks_exact(2)) {
        *octet = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(match len {
        4 => IpAddr::from([octets[0], octets[1], octets[2], octets[3]]),
        _ => IpAddr::from(octets),
    })
}

/// `value` (one of our Route or Record-Route entries) without its seal,
/// for comparing the rest of it.
pub fn unsealed(value: &str) -> String {
    match value.find(";dlg=") {
        Some(at) => {
            let rest = &value[at + 5..];
            let end = rest.find([';', '>']).unwrap_or(rest.len());
            format!("{}{}", &value[..at], &rest[end..])
        }
        None => value.to_string(),
    }
}

/// The seal's text in a Route value or URI of ours, if it has one: up to
/// the next parameter or the end of the URI.
fn seal_param(value: &str) -> Option<&str> {
    const NEEDLE: &[u8] = b";dlg=";
    let at = memchr::memmem::find(value.as_bytes(), NEEDLE)? + NEEDLE.len();
    let rest = value.as_bytes().get(at..)?;
    let end = rest
        .iter()
        .position(|b| matches!(b, b';' | b'>' | b',' | b'?'))
        .unwrap_or(rest.len());
    value.get(at..at + end)
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

fn mac(keys: [u64; 2], call_id: &str, tag: &str, caller: IpAddr) -> u64 {
    use std::hash::Hasher;
    // SipHash-2-4 with a secret key is a MAC for short inputs (see branch.rs).
    #[allow(deprecated)]
    let mut hasher = std::hash::SipHasher::new_with_keys(keys[0], keys[1]);
    hasher.write(call_id.as_bytes());
    hasher.write_u8(0);
    hasher.write(tag.as_bytes());
    hasher.write_u8(0);
    match caller {
        IpAddr::V4(v4) => hasher.write(&v4.octets()),
        IpAddr::V6(v6) => hasher.write(&v6.octets()),
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const CALLER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7));

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
        let entry = sealed_entry(
            "<sip:192.0.2.1;lr>",
            &seals.seal("call-1", "caller", CALLER),
        );
        // The caller hangs up (its tag in From), then the callee (in To).
        assert_eq!(
            seals.check(&bye(&entry, "caller", "callee"), 1, false),
            SealCheck::Valid(CALLER)
        );
        assert_eq!(
            seals.check(&bye(&entry, "callee", "caller"), 1, false),
            SealCheck::Valid(CALLER)
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
        let forged = "<sip:192.0.2.1;lr;dlg=0123456789abcdefc6336407>";
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
    fn the_caller_s_address_is_under_the_mac() {
        let seals = DialogSeals::new(b"secret", None);
        let entry = sealed_entry(
            "<sip:192.0.2.1;lr>",
            &seals.seal("call-1", "caller", CALLER),
        );
        assert!(entry.ends_with("c6336407>"), "{entry}");
        // Another address written in its place breaks the seal.
        let moved = entry.replace("c6336407>", "7f000001>");
        assert_eq!(
            seals.check(&bye(&moved, "caller", "callee"), 1, false),
            SealCheck::Forged
        );
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        let entry = sealed_entry("<sip:192.0.2.1;lr>", &seals.seal("call-1", "caller", v6));
        assert_eq!(
            seals.check(&bye(&entry, "caller", "callee"), 1, false),
            SealCheck::Valid(v6)
        );
    }

    #[test]
    fn another_node_with_the_secret_and_a_rotated_key_verify_the_seal() {
        let old = DialogSeals::new(b"old", None);
        let entry = sealed_entry("<sip:192.0.2.1;lr>", &old.seal("call-1", "caller", CALLER));
        let twin = DialogSeals::new(b"old", None);
        assert_eq!(
            twin.check(&bye(&entry, "caller", "callee"), 1, false),
            SealCheck::Valid(CALLER)
        );
        let rotated = DialogSeals::new(b"new", Some(b"old"));
        assert_eq!(
            rotated.check(&bye(&entry, "caller", "callee"), 1, false),
            SealCheck::Valid(CALLER)
        );
        let stranger = DialogSeals::new(b"new", None);
        assert_eq!(
            stranger.check(&bye(&entry, "caller", "callee"), 1, false),
            SealCheck::Forged
        );
    }
}
