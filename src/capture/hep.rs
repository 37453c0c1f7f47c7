//! HEPv3 (the Homer Encapsulation Protocol) framing, for Homer and sngrep.
//!
//! A packet is `HEP3`, its total length (u16, network order), then chunks:
//! vendor (u16, 0 for the generic ones), type (u16), length (u16, header
//! included), value. The chunk types used here are the ones Homer and
//! sngrep read: IP family (1), IP protocol (2), source and destination
//! address (3/4 for IPv4, 5/6 for IPv6), source and destination port (7/8),
//! timestamp seconds and microseconds (9/10), protocol type (11: 1 is SIP),
//! capture agent id (12), auth key (14), payload (15) and correlation id
//! (17, the Call-ID).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One captured message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HepPacket<'a> {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    /// Over a stream (TCP, TLS, WebSocket): IP protocol 6, else 17.
    pub stream: bool,
    pub time: SystemTime,
    pub capture_id: u32,
    pub auth_key: Option<&'a str>,
    pub correlation_id: &'a str,
    pub payload: &'a [u8],
}

const IP_FAMILY: u16 = 1;
const IP_PROTOCOL: u16 = 2;
const SOURCE_V4: u16 = 3;
const DESTINATION_V4: u16 = 4;
const SOURCE_V6: u16 = 5;
const DESTINATION_V6: u16 = 6;
const SOURCE_PORT: u16 = 7;
const DESTINATION_PORT: u16 = 8;
const SECONDS: u16 = 9;
const MICROSECONDS: u16 = 10;
const PROTOCOL_TYPE: u16 = 11;
const CAPTURE_ID: u16 = 12;
const AUTH_KEY: u16 = 14;
const PAYLOAD: u16 = 15;
const CORRELATION_ID: u16 = 17;

const SIP: u8 = 1;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Why a packet could not be framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// HEP lengths are 16 bits: a message this large cannot be carried.
    TooLarge(usize),
    /// One address is IPv4 and the other IPv6.
    MixedFamilies,
}

fn chunk(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    // A value too long wraps here, but then so does the packet's length,
    // and `encode` refuses the packet.
    out.extend_from_slice(&((value.len() + 6) as u16).to_be_bytes());
    out.extend_from_slice(value);
}

impl HepPacket<'_> {
    /// Appends the packet to `out` (cleared first).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.clear();
        out.extend_from_slice(b"HEP3\0\0");
        let since = self
            .time
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        match (self.source.ip(), self.destination.ip()) {
            (IpAddr::V4(source), IpAddr::V4(destination)) => {
                chunk(out, IP_FAMILY, &[AF_INET]);
                chunk(out, SOURCE_V4, &source.octets());
                chunk(out, DESTINATION_V4, &destination.octets());
            }
            (IpAddr::V6(source), IpAddr::V6(destination)) => {
                chunk(out, IP_FAMILY, &[AF_INET6]);
                chunk(out, SOURCE_V6, &source.octets());
                chunk(out, DESTINATION_V6, &destination.octets());
            }
            _ => return Err(EncodeError::MixedFamilies),
        }
        chunk(out, IP_PROTOCOL, &[if self.stream { 6 } else { 17 }]);
        chunk(out, SOURCE_PORT, &self.source.port().to_be_bytes());
        chunk(
            out,
            DESTINATION_PORT,
            &self.destination.port().to_be_bytes(),
        );
        chunk(out, SECONDS, &(since.as_secs() as u32).to_be_bytes());
        chunk(out, MICROSECONDS, &since.subsec_micros().to_be_bytes());
        chunk(out, PROTOCOL_TYPE, &[SIP]);
        chunk(out, CAPTURE_ID, &self.capture_id.to_be_bytes());
        if let Some(key) = self.auth_key {
            chunk(out, AUTH_KEY, key.as_bytes());
        }
        chunk(out, CORRELATION_ID, self.correlation_id.as_bytes());
        chunk(out, PAYLOAD, self.payload);
        // Every length is 16 bits: a packet that does not fit is refused
        // whole (a wrapped length would throw a stream collector's reading
        // out of step for every later packet).
        let total =
            u16::try_from(out.len()).map_err(|_| EncodeError::TooLarge(self.payload.len()))?;
        out[4..6].copy_from_slice(&total.to_be_bytes());
        Ok(())
    }
}

/// One chunk of a HEPv3 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk<'a> {
    pub vendor: u16,
    pub kind: u16,
    pub value: &'a [u8],
}

/// The chunks of one HEPv3 packet, in order; for tests and tools.
pub fn chunks(packet: &[u8]) -> Option<Vec<Chunk<'_>>> {
    if packet.get(..4)? != b"HEP3" {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([*packet.get(4)?, *packet.get(5)?]));
    let packet = packet.get(..total)?;
    let mut at = 6;
    let mut found = Vec::new();
    while at < packet.len() {
        let field = |i: usize| {
            Some(u16::from_be_bytes([
                *packet.get(at + i)?,
                *packet.get(at + i + 1)?,
            ]))
        };
        let (vendor, kind, length) = (field(0)?, field(2)?, usize::from(field(4)?));
        if length < 6 {
            return None;
        }
        let value = packet.get(at + 6..at + length)?;
        found.push(Chunk {
            vendor,
            kind,
            value,
        });
        at += length;
    }
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(packet: &[u8], kind: u16) -> Vec<u8> {
        chunks(packet)
            .expect("a HEPv3 packet")
            .into_iter()
            .find(|chunk| chunk.vendor == 0 && chunk.kind == kind)
            .map(|chunk| chunk.value.to_vec())
            .unwrap_or_else(|| panic!("no chunk {kind}"))
    }

    #[test]
    fn every_chunk_homer_reads_is_there_in_network_order() {
        let time = UNIX_EPOCH + Duration::new(1_765_000_000, 123_456_789);
        let packet = HepPacket {
            source: "192.0.2.1:5060".parse().unwrap(),
            destination: "198.51.100.7:5080".parse().unwrap(),
            stream: false,
            time,
            capture_id: 2001,
            auth_key: Some("s3cret"),
            correlation_id: "call-1@example.com",
            payload: b"OPTIONS sip:a@example.com SIP/2.0\r\n\r\n",
        };
        let mut out = Vec::new();
        packet.encode(&mut out).expect("framed");
        assert_eq!(&out[..4], b"HEP3");
        assert_eq!(usize::from(u16::from_be_bytes([out[4], out[5]])), out.len());
        assert_eq!(value(&out, IP_FAMILY), [2]);
        assert_eq!(value(&out, IP_PROTOCOL), [17]);
        assert_eq!(value(&out, SOURCE_V4), [192, 0, 2, 1]);
        assert_eq!(value(&out, DESTINATION_V4), [198, 51, 100, 7]);
        assert_eq!(value(&out, SOURCE_PORT), 5060u16.to_be_bytes());
        assert_eq!(value(&out, DESTINATION_PORT), 5080u16.to_be_bytes());
        assert_eq!(value(&out, SECONDS), 1_765_000_000u32.to_be_bytes());
        assert_eq!(value(&out, MICROSECONDS), 123_456u32.to_be_bytes());
        assert_eq!(value(&out, PROTOCOL_TYPE), [1]);
        assert_eq!(value(&out, CAPTURE_ID), 2001u32.to_be_bytes());
        assert_eq!(value(&out, AUTH_KEY), b"s3cret");
        assert_eq!(value(&out, CORRELATION_ID), b"call-1@example.com");
        assert_eq!(value(&out, PAYLOAD), packet.payload);
    }

    #[test]
    fn ipv6_and_streams_and_what_cannot_be_framed() {
        let packet = HepPacket {
            source: "[2001:db8::1]:5061".parse().unwrap(),
            destination: "[2001:db8::2]:40000".parse().unwrap(),
            stream: true,
            time: SystemTime::now(),
            capture_id: 1,
            auth_key: None,
            correlation_id: "c",
            payload: b"SIP/2.0 200 OK\r\n\r\n",
        };
        let mut out = Vec::new();
        packet.encode(&mut out).expect("framed");
        assert_eq!(value(&out, IP_FAMILY), [10]);
        assert_eq!(value(&out, IP_PROTOCOL), [6]);
        assert_eq!(value(&out, SOURCE_V6).len(), 16);
        assert!(chunks(&out)
            .unwrap()
            .iter()
            .all(|chunk| chunk.kind != AUTH_KEY));
        let mixed = HepPacket {
            destination: "192.0.2.1:5060".parse().unwrap(),
            ..packet.clone()
        };
        assert_eq!(mixed.encode(&mut out), Err(EncodeError::MixedFamilies));
        let huge = vec![b'x'; 70_000];
        let large = HepPacket {
            payload: &huge,
            ..packet.clone()
        };
        assert_eq!(large.encode(&mut out), Err(EncodeError::TooLarge(70_000)));
        // At the boundary: the largest payload that fits, and one more byte.
        packet.encode(&mut out).expect("framed");
        let room = usize::from(u16::MAX) - (out.len() - packet.payload.len());
        let edge = vec![b'x'; room];
        let fits = HepPacket {
            payload: &edge,
            ..packet.clone()
        };
        fits.encode(&mut out).expect("exactly 65535 bytes");
        assert_eq!(out.len(), usize::from(u16::MAX));
        let over = vec![b'x'; room + 1];
        let one_more = HepPacket {
            payload: &over,
            ..packet
        };
        assert!(one_more.encode(&mut out).is_err());
        assert!(chunks(b"HEP2\0\0").is_none());
        assert!(
            chunks(b"HEP3\0\x0c\0\0\0\x01\0\x02").is_none(),
            "a chunk shorter than its header"
        );
    }
}
