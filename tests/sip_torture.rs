//! RFC 4475 torture messages: valid ones parse with the right fields, invalid
//! ones are rejected with an error the proxy turns into 400 (or 505), and the
//! ones a proxy may legitimately forward parse so that the layer that cares
//! (registrar, UAS) can decide. Nothing panics. Then every message goes
//! over UDP to `config/proxy.yaml` and gets the answer the table at the
//! end names.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use siphon::sip::{
    parse, HeaderName, Message, Method, NameAddr, ParseError, ParseErrorKind, Rewriter, Uri, Via,
};

fn load(name: &str) -> Bytes {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/rfc4475")
        .join(format!("{name}.dat"));
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn ok(name: &str) -> Message {
    match parse(load(name)) {
        Ok(m) => {
            // forwarding an untouched message reproduces it byte for byte,
            // but for the Content-Length a copy without one gains
            let copy = Rewriter::new(&m).finish();
            if m.header(HeaderName::ContentLength).is_some() {
                assert_eq!(copy, m.as_bytes(), "{name}: rewrite round trip");
            } else {
                let again = parse(Bytes::from(copy)).unwrap();
                let length = m.body().len().to_string();
                assert_eq!(
                    again.header(HeaderName::ContentLength),
                    Some(length.as_str()),
                    "{name}"
                );
                assert_eq!(again.body(), m.body(), "{name}");
            }
            m
        }
        Err(e) => panic!("{name} should parse, got {:?}: {e}", e.kind),
    }
}

fn rejected(name: &str) -> ParseError {
    match parse(load(name)) {
        Ok(_) => panic!("{name} should be rejected"),
        Err(e) => {
            assert_ne!(e.kind, ParseErrorKind::Keepalive, "{name}");
            e
        }
    }
}

/// Rejected, and the proxy can still answer because headers were framed.
fn answerable(name: &str, kind: ParseErrorKind, status: u16) -> ParseError {
    let e = rejected(name);
    assert_eq!(e.kind, kind, "{name}: {e}");
    assert_eq!(e.kind.status_code(), status, "{name}");
    let partial = e
        .partial
        .as_ref()
        .unwrap_or_else(|| panic!("{name}: no partial message"));
    let reply = siphon::sip::build::response(partial, status, &e.reason, Some("t1"), &[]);
    // The reply echoes the offending headers, so it may itself fail
    // validation, but it must be a framed response with our status.
    let framed = match parse(Bytes::from(reply)) {
        Ok(r) => r,
        Err(re) => match re.partial {
            Some(partial) => *partial,
            None => panic!("{name}: our {status} is not framed: {}", re.reason),
        },
    };
    assert_eq!(framed.status(), Some(status), "{name}");
    e
}

// ---- RFC 4475 §3.1.1: valid messages -------------------------------------

#[test]
fn wsinv_short_tortuous_invite() {
    let m = ok("wsinv");
    assert_eq!(m.method(), Some(Method::Invite));
    assert_eq!(
        m.request_uri(),
        Some("sip:vivekg@chair-dnrc.example.com;unknownparam")
    );
    assert_eq!(m.call_id(), Some("wsinv.ndaksdj@192.0.2.1"));
    assert_eq!(m.cseq(), Some((9, "INVITE")));
    assert_eq!(m.max_forwards(), Some(68));
    assert_eq!(m.to_tag(), Some("1918181833n"));
    assert_eq!(m.from_tag(), Some("98asjd8"));
    assert_eq!(m.body().len(), 150);
    let vias: Vec<Via> = m
        .header_values(HeaderName::Via)
        .map(|v| Via::parse(v).unwrap())
        .collect();
    assert_eq!(vias.len(), 3);
    assert_eq!(vias[0].host, "192.0.2.2");
    assert_eq!(vias[0].branch(), Some("390skdjuw"));
    assert_eq!(vias[1].transport, "TCP");
    assert_eq!(vias[1].host, "spindle.example.com");
    assert_eq!(vias[1].branch(), Some("z9hG4bK9ikj8"));
    assert_eq!(vias[2].host, "192.168.255.111");
    assert_eq!(vias[2].branch(), Some("z9hG4bK30239"));
    assert_eq!(m.header(HeaderName::Subject), Some(""));
    assert_eq!(
        m.header_named("newfangledheader"),
        Some("newfangled value\r\n continued newfangled value")
    );
    assert_eq!(
        m.header_named("UnknownHeaderWithUnusualValue"),
        Some(";;,,;;,;")
    );
    let contact = NameAddr::parse(m.header(HeaderName::Contact).unwrap()).unwrap();
    assert_eq!(contact.display, Some("Quoted string \\\"\\\""));
    assert_eq!(contact.param("newparam"), Some(Some("newvalue")));
    assert_eq!(contact.param("secondparam"), Some(None));
    assert_eq!(contact.param("q"), Some(Some("0.33")));
    let route = NameAddr::parse(m.header(HeaderName::Route).unwrap()).unwrap();
    assert!(Uri::parse(route.uri).unwrap().has_param("lr"));
}

#[test]
fn intmeth_wide_range_of_valid_characters() {
    let m = ok("intmeth");
    assert_eq!(m.method(), Some(Method::Other));
    assert_eq!(
        m.method_str(),
        "!interesting-Method0123456789_*+`.%indeed'~"
    );
    assert_eq!(
        m.cseq(),
        Some((139122385, "!interesting-Method0123456789_*+`.%indeed'~"))
    );
    let ruri = Uri::parse(m.request_uri().unwrap()).unwrap();
    assert_eq!(
        ruri.user,
        Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
    );
    assert_eq!(
        ruri.password,
        Some("&it+has=1,weird!*pas$wo~d_too.(doesn't-it)")
    );
    assert_eq!(
        m.call_id(),
        Some("intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{")
    );
    assert_eq!(m.from_tag(), Some("_token~1'+`*%!-."));
    assert_eq!(m.top_via().unwrap().branch(), Some("z9hG4bK-.!%66*_+`'~"));
    assert_eq!(m.max_forwards(), Some(255));
    assert!(m.header_named("extensionHeader-!.%*+_`'~").is_some());
}

#[test]
fn esc01_valid_use_of_escapes() {
    let m = ok("esc01");
    assert_eq!(
        m.request_uri(),
        Some("sip:sips%3Auser%40example.com@example.net")
    );
    let ruri = Uri::parse(m.request_uri().unwrap()).unwrap();
    assert_eq!(ruri.user, Some("sips%3Auser%40example.com"));
    assert_eq!(ruri.host, "example.net");
    assert_eq!(m.call_id(), Some("esc01.239409asdfakjkn23onasd0-3234"));
    assert_eq!(m.from_tag(), Some("938"));
    assert_eq!(m.body().len(), 150);
}

#[test]
fn escnull_escaped_nulls() {
    let m = ok("escnull");
    assert_eq!(m.method(), Some(Method::Register));
    assert_eq!(m.header_values(HeaderName::Contact).count(), 2);
    assert!(m.body().is_empty());
}

#[test]
fn esc02_escapes_in_method_and_names() {
    let m = ok("esc02");
    assert_eq!(m.method(), Some(Method::Other));
    assert_eq!(m.method_str(), "RE%47IST%45R");
    assert_eq!(m.cseq(), Some((29344, "RE%47IST%45R")));
    // C%6Fntact is not Contact: only two real Contacts
    assert_eq!(m.header_values(HeaderName::Contact).count(), 2);
    assert_eq!(
        m.header_named("C%6Fntact"),
        Some("<sip:alias2@host2.example.com>")
    );
}

#[test]
fn lwsdisp_no_lws_after_display_name() {
    let m = ok("lwsdisp");
    assert_eq!(m.method(), Some(Method::Options));
    let from = NameAddr::parse(m.header(HeaderName::From).unwrap()).unwrap();
    assert_eq!(from.display, Some("caller"));
    assert_eq!(from.tag(), Some("323"));
}

#[test]
fn longreq_long_values() {
    let m = ok("longreq");
    assert_eq!(m.method(), Some(Method::Invite));
    assert!(m.header_values(HeaderName::Via).count() > 30);
    assert!(m.top_via().is_some());
    assert_eq!(m.to_tag(), None);
    assert!(m.from_tag().unwrap().len() > 50);
    assert_eq!(m.body().len(), 150);
}

#[test]
fn dblreq_only_first_request_is_used() {
    let m = ok("dblreq");
    assert_eq!(m.method(), Some(Method::Register));
    assert!(m.body().is_empty());
    assert!(!m.as_bytes().windows(6).any(|w| w == b"INVITE"));
}

#[test]
fn semiuri_semicolon_in_user_part() {
    let m = ok("semiuri");
    let ruri = Uri::parse(m.request_uri().unwrap()).unwrap();
    assert_eq!(ruri.user, Some("user;par=u%40example.net"));
    assert_eq!(ruri.host, "example.com");
    assert_eq!(ruri.params, "");
}

#[test]
fn transports_varied_and_unknown() {
    let m = ok("transports");
    let transports: Vec<&str> = m
        .header_values(HeaderName::Via)
        .map(|v| Via::parse(v).unwrap().transport)
        .collect();
    assert_eq!(transports, ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]);
}

#[test]
fn mpart01_binary_body() {
    let m = ok("mpart01");
    assert_eq!(m.method(), Some(Method::Message));
    let declared: usize = m
        .header(HeaderName::ContentLength)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(m.body().len(), declared);
    assert!(
        std::str::from_utf8(m.body()).is_err(),
        "body keeps its non-UTF-8 bytes"
    );
}

#[test]
fn unreason_unusual_reason_phrase() {
    let m = ok("unreason");
    assert_eq!(m.status(), Some(200));
    assert!(m.reason().unwrap().starts_with("= 2**3 * 5**2 но сто"));
    assert_eq!(m.method_str(), "INVITE");
}

#[test]
fn noreason_empty_reason_phrase() {
    let m = ok("noreason");
    assert_eq!(m.status(), Some(100));
    assert_eq!(m.reason(), Some(""));
}

// ---- §3.1.2: invalid messages --------------------------------------------

#[test]
fn badinv01_extraneous_separators_in_via() {
    answerable("badinv01", ParseErrorKind::BadVia, 400);
}

#[test]
fn clerr_content_length_larger_than_message() {
    let e = answerable("clerr", ParseErrorKind::BadContentLength, 400);
    assert!(e.reason.contains("9999"), "{e}");
}

#[test]
fn ncl_negative_content_length() {
    answerable("ncl", ParseErrorKind::BadContentLength, 400);
}

#[test]
fn scalar02_overlarge_request_scalars() {
    answerable("scalar02", ParseErrorKind::BadCSeq, 400);
}

#[test]
fn scalarlg_overlarge_response_scalars() {
    // A response cannot be answered; the proxy drops it (logged).
    let e = rejected("scalarlg");
    assert_eq!(e.kind, ParseErrorKind::BadCSeq);
}

#[test]
fn quotbal_unterminated_quote() {
    answerable("quotbal", ParseErrorKind::BadAddress, 400);
}

#[test]
fn ltgtruri_angle_brackets_around_request_uri() {
    answerable("ltgtruri", ParseErrorKind::BadRequestUri, 400);
}

#[test]
fn lwsruri_whitespace_in_request_uri() {
    answerable("lwsruri", ParseErrorKind::BadStartLine, 400);
}

#[test]
fn lwsstart_multiple_spaces_in_request_line() {
    answerable("lwsstart", ParseErrorKind::BadStartLine, 400);
}

#[test]
fn trws_trailing_spaces_after_version() {
    answerable("trws", ParseErrorKind::BadStartLine, 400);
}

#[test]
fn escruri_escaped_headers_in_request_uri() {
    answerable("escruri", ParseErrorKind::BadRequestUri, 400);
}

#[test]
fn baddate_is_forwarded() {
    // The Date header is end-to-end information a proxy neither reads nor
    // rewrites; RFC 4475 §3.1.2.12 lets elements that do not use Date accept
    // the message. We forward it untouched.
    let m = ok("baddate");
    assert_eq!(
        m.header_named("Date"),
        Some("Fri, 01 Jan 2010 16:00:00 EST")
    );
}

#[test]
fn regbadct_contact_needs_angle_brackets() {
    // A proxy forwards this REGISTER (Contact is for the registrar); the
    // registrar sees that the Contact value is not a valid addr-spec and
    // answers 400 (RFC 4475 §3.1.2.13).
    let m = ok("regbadct");
    let contact = m.header(HeaderName::Contact).unwrap();
    assert!(NameAddr::parse(contact).is_err());
}

#[test]
fn badaspec_spaces_inside_addr_spec() {
    answerable("badaspec", ParseErrorKind::BadAddress, 400);
}

#[test]
fn baddn_unquoted_non_token_display_name() {
    answerable("baddn", ParseErrorKind::BadAddress, 400);
}

#[test]
fn badvers_unknown_protocol_version() {
    answerable("badvers", ParseErrorKind::BadVersion, 505);
}

#[test]
fn mismatch01_start_line_and_cseq_method() {
    answerable("mismatch01", ParseErrorKind::BadCSeq, 400);
}

#[test]
fn mismatch02_unknown_method_with_cseq_mismatch() {
    answerable("mismatch02", ParseErrorKind::BadCSeq, 400);
}

#[test]
fn bigcode_overlarge_status_code() {
    let e = rejected("bigcode");
    assert_eq!(e.kind, ParseErrorKind::BadStartLine);
    assert!(e.partial.is_none());
}

// ---- §3.2 / §3.3 / §3.4: transaction and application layer ---------------

#[test]
fn badbranch_parses_and_is_not_rfc3261() {
    // Parsed normally; the transaction layer falls back to RFC 2543 matching.
    let m = ok("badbranch");
    assert!(!m.top_via().unwrap().has_rfc3261_branch());
}

#[test]
fn insuf_missing_required_headers() {
    let e = answerable("insuf", ParseErrorKind::MissingHeader, 400);
    assert!(e.reason.starts_with("missing "), "{e}");
}

#[test]
fn unkscm_unknown_request_uri_scheme_is_framed() {
    // Syntactically fine; whoever must interpret the URI answers 416. The
    // proxy sees that `Uri::parse` rejects it.
    let m = ok("unkscm");
    assert!(Uri::parse(m.request_uri().unwrap()).is_err());
}

#[test]
fn novelsc_atypical_scheme_is_framed() {
    let m = ok("novelsc");
    assert_eq!(m.request_uri(), Some("soap.beep://192.0.2.103:3002"));
}

#[test]
fn unksm2_unknown_schemes_in_headers_are_forwarded() {
    // RFC 4475 §3.3.4: unknown schemes in To/From/Contact must not cause a
    // rejection by elements that do not need to resolve those URIs.
    let m = ok("unksm2");
    assert_eq!(
        NameAddr::parse(m.header(HeaderName::To).unwrap())
            .unwrap()
            .uri,
        "isbn:2983792873"
    );
    assert_eq!(m.from_tag(), Some("3234233"));
}

#[test]
fn application_layer_messages_parse() {
    // bext01 (Proxy-Require: the core answers 420, see e2e_calls), invut, regaut01,
    // sdp01, cparam01/02, regescrt, inv2543 and zeromf (483 decided by the
    // proxy core) are all well-formed.
    let m = ok("bext01");
    assert!(m.header(HeaderName::ProxyRequire).is_some());
    assert!(m.header(HeaderName::Require).is_some());
    ok("invut");
    ok("regaut01");
    ok("sdp01");
    let c1 = ok("cparam01");
    let contact = NameAddr::parse(c1.header(HeaderName::Contact).unwrap()).unwrap();
    assert_eq!(contact.param("unknownparam"), Some(None));
    let c2 = ok("cparam02");
    let contact = NameAddr::parse(c2.header(HeaderName::Contact).unwrap()).unwrap();
    assert!(Uri::parse(contact.uri).unwrap().has_param("unknownparam"));
    assert_eq!(contact.param("unknownparam"), None);
    ok("regescrt");
    let old = ok("inv2543");
    assert_eq!(old.top_via().unwrap().branch(), None);
    assert_eq!(old.max_forwards(), None);
    assert_eq!(ok("zeromf").max_forwards(), Some(0));
}

#[test]
fn multi01_multiple_single_value_headers() {
    answerable("multi01", ParseErrorKind::DuplicateHeader, 400);
}

#[test]
fn mcl01_multiple_content_lengths() {
    answerable("mcl01", ParseErrorKind::BadContentLength, 400);
}

#[test]
fn bcast_response_parses() {
    // The broadcast sent-by is in the second Via; the proxy only routes by the
    // top one (its own) and strips it, so the message is well-formed here.
    let m = ok("bcast");
    assert_eq!(m.status(), Some(200));
    let second = m.header_values(HeaderName::Via).nth(1).unwrap();
    assert_eq!(Via::parse(second).unwrap().host, "255.255.255.255");
}

// ---- every file ------------------------------------------------------------

#[test]
fn every_file_is_classified_and_none_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rfc4475");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        let outcome = parse(Bytes::from(bytes.clone()));
        assert!(
            CLASSIFIED.contains(&name.as_str()),
            "{name} has no expectation in this file"
        );
        // also through stream framing, when a Content-Length is present
        let _ = siphon::sip::framing::frame_len(&bytes);
        if let Ok(m) = outcome {
            let _ = (
                m.top_via(),
                m.from_tag(),
                m.to_tag(),
                m.cseq(),
                m.max_forwards(),
            );
        }
        seen += 1;
    }
    assert_eq!(seen, CLASSIFIED.len());
}

const CLASSIFIED: &[&str] = &[
    "wsinv",
    "intmeth",
    "esc01",
    "escnull",
    "esc02",
    "lwsdisp",
    "longreq",
    "dblreq",
    "semiuri",
    "transports",
    "mpart01",
    "unreason",
    "noreason",
    "badinv01",
    "clerr",
    "ncl",
    "scalar02",
    "scalarlg",
    "quotbal",
    "ltgtruri",
    "lwsruri",
    "lwsstart",
    "trws",
    "escruri",
    "baddate",
    "regbadct",
    "badaspec",
    "baddn",
    "badvers",
    "mismatch01",
    "mismatch02",
    "bigcode",
    "badbranch",
    "insuf",
    "unkscm",
    "novelsc",
    "unksm2",
    "bext01",
    "invut",
    "regaut01",
    "multi01",
    "mcl01",
    "bcast",
    "zeromf",
    "cparam01",
    "cparam02",
    "regescrt",
    "sdp01",
    "inv2543",
];

// ---- over the wire ---------------------------------------------------------

/// What `config/proxy.yaml` (with `scripts/proxy.py`) answers each RFC 4475
/// message sent over UDP from a host it does not trust, and why. Every
/// request in the set names a domain that is not ours, so a valid one is
/// processed and refused by policy (`403 Not relaying`: this is no open
/// relay); what matters is that it is not refused as malformed. A response
/// that is not to a request of ours is dropped (None).
const OVER_THE_WIRE: &[(&str, Option<u16>, &str)] = &[
    // §3.1.1 valid messages
    (
        "wsinv",
        Some(404),
        "valid; its To tag makes it in-dialog, not along our Route",
    ),
    ("intmeth", Some(403), "valid extension method: processed"),
    ("esc01", Some(403), "valid escapes: processed"),
    ("escnull", Some(403), "escaped nulls are valid: processed"),
    (
        "esc02",
        Some(403),
        "escaped method is an extension method: processed",
    ),
    ("lwsdisp", Some(403), "valid: processed"),
    ("longreq", Some(403), "long values are valid: processed"),
    ("dblreq", Some(403), "the first request of the datagram"),
    ("semiuri", Some(403), "valid: processed"),
    (
        "transports",
        Some(403),
        "unknown transports in lower Vias: processed",
    ),
    ("mpart01", Some(403), "binary multipart body: processed"),
    ("unreason", None, "a response to nothing of ours: dropped"),
    ("noreason", None, "a response to nothing of ours: dropped"),
    // §3.1.2 invalid messages
    ("badinv01", Some(400), "extraneous separators in Via"),
    ("clerr", Some(400), "Content-Length larger than the message"),
    ("ncl", Some(400), "negative Content-Length"),
    ("scalar02", Some(400), "overlarge scalars"),
    ("scalarlg", None, "a response: dropped"),
    ("quotbal", Some(400), "unterminated quote"),
    ("ltgtruri", Some(400), "<> around the Request-URI"),
    ("lwsruri", Some(400), "whitespace in the Request-URI"),
    ("lwsstart", Some(400), "extra spaces in the request line"),
    ("trws", Some(400), "trailing spaces after the version"),
    ("escruri", Some(400), "escaped headers in the Request-URI"),
    (
        "baddate",
        Some(403),
        "a bad Date is not a proxy's concern: processed",
    ),
    (
        "regbadct",
        Some(403),
        "the registrar's concern; not our domain: processed",
    ),
    ("badaspec", Some(400), "spaces inside an addr-spec"),
    ("baddn", Some(400), "unquoted non-token display name"),
    ("badvers", Some(505), "SIP/7.0"),
    (
        "mismatch01",
        Some(400),
        "CSeq method differs from the request line",
    ),
    (
        "mismatch02",
        Some(400),
        "CSeq method differs from the request line",
    ),
    ("bigcode", None, "a response: dropped"),
    // §3.2 transaction layer
    (
        "badbranch",
        Some(403),
        "a branch without the cookie is valid: processed",
    ),
    // §3.3 application layer
    ("insuf", Some(400), "missing required headers"),
    (
        "unkscm",
        Some(416),
        "§16.3 step 1: a scheme we cannot route",
    ),
    (
        "novelsc",
        Some(416),
        "§16.3 step 1: a scheme we cannot route",
    ),
    (
        "unksm2",
        Some(403),
        "unknown schemes in To/From are not ours to judge",
    ),
    ("bext01", Some(420), "Proxy-Require of an unknown extension"),
    (
        "invut",
        Some(403),
        "an unknown Content-Type is the UAS's concern",
    ),
    (
        "regaut01",
        Some(403),
        "an unknown auth scheme is the registrar's concern",
    ),
    ("multi01", Some(400), "several single-value headers"),
    ("mcl01", Some(400), "several Content-Lengths"),
    ("bcast", None, "a response: dropped"),
    ("zeromf", Some(483), "Max-Forwards 0"),
    ("cparam01", Some(403), "valid: processed"),
    ("cparam02", Some(403), "valid: processed"),
    ("regescrt", Some(403), "valid: processed"),
    ("sdp01", Some(403), "an unknown SDP is the UAS's concern"),
    ("inv2543", Some(403), "an RFC 2543 request: processed"),
];

/// The Call-ID of a message by a plain scan of its header lines (long or
/// compact name), so that an answer that echoes a malformed header, and a
/// message that does not parse, still have one.
fn call_id_in(bytes: &[u8]) -> Option<String> {
    String::from_utf8_lossy(bytes)
        .split("\r\n")
        .skip(1)
        .take_while(|line| !line.is_empty())
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            let name = name.trim();
            (name.eq_ignore_ascii_case("call-id") || name.eq_ignore_ascii_case("i"))
                .then(|| value.trim().to_string())
        })
}

/// `config/proxy.yaml` with its script, on a port of its own.
fn shipped_proxy() -> common::Siphon {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let yaml = std::fs::read_to_string(root.join("config/proxy.yaml")).unwrap();
    let script = std::fs::read_to_string(root.join("scripts/proxy.py")).unwrap();
    let yaml = yaml
        .replace("127.0.0.1:5060", "127.0.0.1:@PORT@")
        .replace("../scripts/proxy.py", "script.py");
    common::Siphon::start(&yaml, &script)
}

#[test]
fn every_message_over_udp_gets_the_answer_a_proxy_should_give() {
    let mut proxy = shipped_proxy();
    let mut transactions = std::collections::HashSet::new();
    let mut wrong = Vec::new();
    for (name, expected, why) in OVER_THE_WIRE {
        // From an address the proxy does not trust, on the port its top
        // Via names: the answer goes to the source address and that port
        // (§18.2.2; these Vias ask for no rport).
        let bytes = load(name);
        let framed = match parse(bytes.clone()) {
            Ok(m) => Some(m),
            Err(e) => e.partial.map(|m| *m),
        };
        let via_port = framed
            .as_ref()
            .and_then(|m| m.top_via().and_then(|v| v.port));
        // Earlier messages' finals are retransmitted to the same port:
        // only an answer with this message's Call-ID counts.
        let call_id = call_id_in(&bytes);
        // Some messages share a branch and sent-by (`z9hG4bKkdjuw` from
        // `saturn.example.com`): by §17.2.3 a second one is a retransmission
        // of the first, so it goes to a proxy of its own.
        let transaction = framed.as_ref().and_then(|m| {
            let via = m.top_via()?;
            Some(format!(
                "{}|{}|{:?}|{}",
                via.branch()?,
                via.host,
                via.port,
                m.method_str()
            ))
        });
        if transaction.is_some_and(|key| !transactions.insert(key)) {
            proxy = shipped_proxy();
            transactions.clear();
        }
        let socket = std::net::UdpSocket::bind(("127.0.0.2", via_port.unwrap_or(5060)))
            .unwrap_or_else(|e| panic!("{name}: bind 127.0.0.2: {e}"));
        let sender = common::UdpPeer { socket };
        sender.send_to(&bytes, proxy.addr());
        let deadline = Instant::now() + Duration::from_millis(700);
        let mut answer = None;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Some((reply, _)) = sender.recv(left) else {
                break;
            };
            let same_call = call_id.is_none() || call_id_in(reply.as_bytes()) == call_id;
            if !same_call {
                continue;
            }
            match common::status_code(&reply) {
                Some(code) if code >= 200 => {
                    answer = Some(code);
                    break;
                }
                _ => continue, // 100 Trying
            }
        }
        if answer != *expected {
            wrong.push(format!("{name}: {answer:?}, expected {expected:?} ({why})"));
        }
    }
    assert_eq!(
        OVER_THE_WIRE.len(),
        CLASSIFIED.len(),
        "every message has a row"
    );
    assert!(
        wrong.is_empty(),
        "{} of {} answered otherwise:\n{}\n{}",
        wrong.len(),
        OVER_THE_WIRE.len(),
        wrong.join("\n"),
        proxy.log_tail(20)
    );
}
