//! Any datagram: parse must return Ok or Err without panicking, and whatever
//! parses must forward unchanged and support the accessors the proxy uses.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use siphon::sip::{build, parse, HeaderName, NameAddr, Rewriter, Uri, Via};

fuzz_target!(|data: &[u8]| {
    match parse(Bytes::copy_from_slice(data)) {
        Ok(msg) => {
            assert_eq!(Rewriter::new(&msg).finish(), msg.as_bytes());
            let _ = (
                msg.top_via(),
                msg.from_tag(),
                msg.to_tag(),
                msg.cseq(),
                msg.max_forwards(),
            );
            for via in msg.header_values(HeaderName::Via) {
                let _ = Via::parse(via).map(|v| (v.branch(), v.rport()));
            }
            for route in msg.header_values(HeaderName::Route) {
                if let Ok(addr) = NameAddr::parse(route) {
                    let _ = Uri::parse(addr.uri).map(|u| u.to_string());
                }
            }
            let _ = Rewriter::new(&msg)
                .push_top_header("Via", "SIP/2.0/UDP fuzz;branch=z9hG4bKf")
                .remove_first_value(0)
                .replace_header(1, "x")
                .set_request_uri("sip:fuzz")
                .finish();
            if msg.is_request() {
                let _ = build::response(&msg, 200, "OK", Some("t"), &[]);
                let _ = build::cancel(&msg);
            }
        }
        Err(err) => {
            if let Some(partial) = err.partial {
                let _ = build::response(&partial, 400, &err.reason, None, &[]);
            }
        }
    }
});
