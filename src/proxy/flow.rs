//! Flow tokens (in the manner of RFC 5626 §5.2): the user part of the
//! Record-Route or Path this proxy writes for a peer on a connection (TCP,
//! TLS, WS, WSS) names that connection, so that a request toward the peer
//! goes over it: a browser or a phone behind NAT cannot be reached by a new
//! connection, and its Contact (`df7jal23ls0d.invalid`) does not resolve.
//! The token is the flow's protocol and address with an HMAC, so nobody can
//! aim one at another client's connection.
//!
//! The two kinds are told apart, under the MAC:
//! - a Record-Route token (`f...`) routes requests within a dialog, once the
//!   script has loose-routed them;
//! - a Path token (`p...`, RFC 3327) routes the initial requests a registrar
//!   sends to a client registered through us. The core relays those over the
//!   flow without running the script: the Path is our own promise to the
//!   registrar. Only the registrar and the client itself see a Path token,
//!   while any dialog peer sees the Record-Route ones, so a dialog peer cannot
//!   start new requests toward a client on its own.

use std::net::{IpAddr, SocketAddr};

use hmac::{KeyInit, Mac};
use sha2::Sha256;

use crate::proxy::forward::Hop;
use crate::sip::Protocol;

/// The MAC's length in the token, in bytes.
const MAC_LEN: usize = 8;

/// What a token is for: see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    RecordRoute,
    Path,
}

impl TokenKind {
    fn prefix(self) -> char {
        match self {
            TokenKind::RecordRoute => 'f',
            TokenKind::Path => 'p',
        }
    }
}

#[derive(Clone)]
pub struct FlowTokens {
    key: [u8; 32],
}

impl FlowTokens {
    pub fn new(key: [u8; 32]) -> Self {
        FlowTokens { key }
    }

    fn mac(&self, flow: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(flow);
        let full = mac.finalize().into_bytes();
        let mut short = [0; MAC_LEN];
        short.copy_from_slice(&full[..MAC_LEN]);
        short
    }

    /// The token of `kind` for the flow to `peer` over `protocol`: hex,
    /// after the kind's letter.
    pub fn encode(&self, kind: TokenKind, protocol: Protocol, peer: SocketAddr) -> String {
        let mut flow = flow_bytes(kind, protocol, peer);
        let mac = self.mac(&flow);
        // The kind is under the MAC but not written twice: the letter says it.
        flow.extend_from_slice(&mac);
        format!(
            "{}{}",
            kind.prefix(),
            crate::security::digest::hex(&flow[1..])
        )
    }

    /// The kind and flow of a token, when it is one of ours and intact.
    pub fn decode(&self, token: &str) -> Option<(TokenKind, Hop)> {
        let kind = match token.as_bytes().first()? {
            b'f' => TokenKind::RecordRoute,
            b'p' => TokenKind::Path,
            _ => return None,
        };
        let hex = &token[1..];
        if !hex.len().is_multiple_of(2) || hex.len() > 2 * (1 + 16 + 2 + MAC_LEN) {
            return None;
        }
        let bytes: Vec<u8> = std::iter::once(Some(kind as u8))
            .chain(
                (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()),
            )
            .collect::<Option<_>>()?;
        let (under_mac, mac) = bytes.split_at(bytes.len().checked_sub(MAC_LEN)?);
        let flow = under_mac.get(1..)?;
        if !crate::security::digest::constant_time_eq(mac, &self.mac(under_mac)) {
            return None;
        }
        let protocol = *Protocol::ALL.get(usize::from(*flow.first()?))?;
        let (ip, port) = match flow.len() {
            7 => (
                IpAddr::from(<[u8; 4]>::try_from(&flow[1..5]).ok()?),
                &flow[5..7],
            ),
            19 => (
                IpAddr::from(<[u8; 16]>::try_from(&flow[1..17]).ok()?),
                &flow[17..19],
            ),
            _ => return None,
        };
        let port = u16::from_be_bytes([port[0], port[1]]);
        Some((kind, Hop::flow(SocketAddr::new(ip, port), protocol)))
    }
}

/// Whether `user` has the shape of a token of `kind` (its letter, then the
/// hex of an IPv4 or IPv6 flow and its MAC), whatever its MAC says.
pub fn is_token_shaped(kind: TokenKind, user: &str) -> bool {
    let Some(hex) = user.strip_prefix(kind.prefix()) else {
        return false;
    };
    let written = |ip_len: usize| 2 * (1 + ip_len + 2 + MAC_LEN);
    (hex.len() == written(4) || hex.len() == written(16))
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What the MAC covers: the kind, then the flow written in the token.
fn flow_bytes(kind: TokenKind, protocol: Protocol, peer: SocketAddr) -> Vec<u8> {
    let mut flow = vec![kind as u8, protocol.index() as u8];
    match peer.ip() {
        IpAddr::V4(ip) => flow.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => flow.extend_from_slice(&ip.octets()),
    }
    flow.extend_from_slice(&peer.port().to_be_bytes());
    flow
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_flow_and_only_ours_decode() {
        let tokens = FlowTokens::new([7; 32]);
        for (protocol, peer) in [
            (Protocol::Ws, "192.0.2.10:50123"),
            (Protocol::Tcp, "[2001:db8::10]:5060"),
            (Protocol::Wss, "198.51.100.3:443"),
        ] {
            let peer: SocketAddr = peer.parse().unwrap();
            let token = tokens.encode(TokenKind::RecordRoute, protocol, peer);
            assert!(token.chars().all(|c| c.is_ascii_alphanumeric()), "{token}");
            let (kind, hop) = tokens.decode(&token).expect("our token");
            assert_eq!(
                (kind, hop.protocol, hop.addr),
                (TokenKind::RecordRoute, protocol, peer)
            );
            let path = tokens.encode(TokenKind::Path, protocol, peer);
            assert_eq!(
                tokens.decode(&path).map(|(kind, _)| kind),
                Some(TokenKind::Path)
            );
            // A Record-Route token cannot be turned into a Path one.
            assert_eq!(tokens.decode(&token.replacen('f', "p", 1)), None);
            // Another process's key, a changed byte, or junk: nothing.
            assert_eq!(FlowTokens::new([8; 32]).decode(&token), None);
            let mut forged = token.clone().into_bytes();
            let last = forged.len() - 1;
            forged[last] = if forged[last] == b'0' { b'1' } else { b'0' };
            assert_eq!(tokens.decode(std::str::from_utf8(&forged).unwrap()), None);
        }
        let short = format!("p{}", "ab".repeat(MAC_LEN - 1));
        for junk in ["", "f", "p", "alice", "f0", "fzz", &short, &"f".repeat(200)] {
            assert_eq!(tokens.decode(junk), None, "{junk}");
        }
    }
}
