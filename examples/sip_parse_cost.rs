//! Cost of parsing a SIP message plus the accessors the proxy core calls on
//! every message (top Via branch, tags, Call-ID, CSeq, Max-Forwards).
//!
//! Measure instruction counts, not time (the build machines are shared):
//!
//! ```text
//! cargo build --release --example sip_parse_cost
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \
//!     target/release/examples/sip_parse_cost 100000
//! callgrind_annotate /tmp/cg.out | head -30
//! ```
//!
//! Instructions per message = total Ir / (3 * N) (startup is < 0.1% at N=100000).
//!
//! Figures (instructions per parse + accessors, release build, N=100000,
//! callgrind total / messages; startup included, < 0.1%):
//!
//! | messages                         | before | after  |
//! |----------------------------------|--------|--------|
//! | mix (INVITE 687 B, 180, 200)     | 29,305 | 10,835 |
//! | INVITE only (687 B, SDP body)    |   n/a  | 11,966 |
//! | 180 Ringing only                 |   n/a  | 10,092 |
//! | 200 OK only (SDP body)           |   n/a  | 10,467 |
//!
//! ("before" predates the per-message argument.) Accessors went from ~8K
//! to ~700 instructions per message; the rest is validation of the Via,
//! From/To, Request-URI and header framing.

use std::hint::black_box;

use bytes::Bytes;
use siphon::sip::{parse, Message};

const INVITE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP lb.example.net:5060;branch=z9hG4bK74bf9a81c2d3e4f5;rport\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;received=192.0.2.101\r\n\
Max-Forwards: 69\r\n\
Record-Route: <sip:lb.example.net;lr>\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@pc33.atlanta.example.com>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 149\r\n\
\r\n\
v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 pc33.atlanta.example.com\r\n\
s=-\r\n\
c=IN IP4 192.0.2.101\r\n\
t=0 0\r\n\
m=audio 49172 RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n";

const RINGING: &str = "SIP/2.0 180 Ringing\r\n\
Via: SIP/2.0/UDP lb.example.net:5060;branch=z9hG4bK74bf9a81c2d3e4f5;rport=5060\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;received=192.0.2.101\r\n\
Record-Route: <sip:lb.example.net;lr>\r\n\
To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:bob@192.0.2.4>\r\n\
Content-Length: 0\r\n\
\r\n";

const OK: &str = "SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP lb.example.net:5060;branch=z9hG4bK74bf9a81c2d3e4f5;rport=5060\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;received=192.0.2.101\r\n\
Record-Route: <sip:lb.example.net;lr>\r\n\
To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:bob@192.0.2.4>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 129\r\n\
\r\n\
v=0\r\n\
o=bob 2890844527 2890844527 IN IP4 192.0.2.4\r\n\
s=-\r\n\
c=IN IP4 192.0.2.4\r\n\
t=0 0\r\n\
m=audio 3456 RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n";

/// What the proxy core reads from every message; folded into a checksum so
/// the optimiser cannot drop any of it.
fn use_accessors(msg: &Message) -> usize {
    let mut sum = 0usize;
    if let Some(via) = msg.top_via() {
        sum += via.branch().map_or(0, str::len);
    }
    sum += msg.to_tag().map_or(0, str::len);
    sum += msg.from_tag().map_or(0, str::len);
    sum += msg.call_id().map_or(0, str::len);
    sum += msg.cseq().map_or(0, |(n, m)| n as usize + m.len());
    sum += msg.max_forwards().unwrap_or(0) as usize;
    sum
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    // Optional second argument: only one of the messages (invite, 180, 200).
    let all = [INVITE, RINGING, OK];
    let chosen: &[&str] = match std::env::args().nth(2).as_deref() {
        Some("invite") => &all[..1],
        Some("180") => &all[1..2],
        Some("200") => &all[2..],
        _ => &all,
    };
    let messages: Vec<Bytes> = chosen
        .iter()
        .map(|m| Bytes::from_static(m.as_bytes()))
        .collect();
    for m in &messages {
        if let Err(e) = parse(m.clone()) {
            eprintln!("sample message does not parse: {e}");
            std::process::exit(1);
        }
    }
    let mut checksum = 0usize;
    for _ in 0..rounds {
        for m in &messages {
            if let Ok(msg) = parse(black_box(m.clone())) {
                checksum = checksum.wrapping_add(use_accessors(black_box(&msg)));
            }
        }
    }
    println!(
        "{rounds} rounds x {} messages ({} bytes in all), checksum {checksum}",
        messages.len(),
        messages.iter().map(Bytes::len).sum::<usize>()
    );
}
