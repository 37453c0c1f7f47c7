//! Property tests: generated valid requests parse and forward byte for byte,
//! mutated and random input never panics, and list splitting inverts joining.

use bytes::Bytes;
use proptest::prelude::*;

use super::framing::frame_len;
use super::{parse, split_values, HeaderName, Message, NameAddr, Rewriter, Uri, Via};

/// What a parsed message answers through the spans remembered at parse time
/// must equal what re-reading its headers gives.
fn remembered_matches_headers(m: &Message) {
    let slow = m.without_remembered();
    assert_eq!(m.top_via(), slow.top_via());
    assert_eq!(
        m.top_via().and_then(|v| v.branch()),
        slow.top_via().and_then(|v| v.branch())
    );
    assert_eq!(m.from_tag(), slow.from_tag());
    assert_eq!(m.to_tag(), slow.to_tag());
    assert_eq!(m.call_id(), slow.call_id());
    assert_eq!(m.cseq(), slow.cseq());
    assert_eq!(m.max_forwards(), slow.max_forwards());
    assert_eq!(m.method_str(), slow.method_str());
}

#[test]
fn remembered_fields_agree_on_the_torture_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rfc4475");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let bytes = std::fs::read(entry.expect("corpus entry").path()).expect("corpus file");
        let msg = match parse(Bytes::from(bytes)) {
            Ok(m) => m,
            Err(e) => match e.partial {
                Some(p) => *p,
                None => continue,
            },
        };
        remembered_matches_headers(&msg);
        seen += 1;
    }
    assert!(seen > 30, "only {seen} corpus messages");
}

fn header_name(long: &'static str, compact: Option<&'static str>) -> impl Strategy<Value = String> {
    let spellings: Vec<String> = [
        Some(long.to_string()),
        Some(long.to_ascii_uppercase()),
        Some(long.to_ascii_lowercase()),
        compact.map(str::to_string),
    ]
    .into_iter()
    .flatten()
    .collect();
    proptest::sample::select(spellings)
}

/// ` : ` variations around the colon.
fn colon() -> impl Strategy<Value = String> {
    ("[ \t]{0,2}", "[ \t]{0,3}").prop_map(|(a, b)| format!("{a}:{b}"))
}

#[derive(Debug, Clone)]
struct Generated {
    text: Vec<u8>,
    method: String,
    call_id: String,
    cseq: u32,
    from_tag: String,
    branch: String,
    body: Vec<u8>,
}

fn request() -> impl Strategy<Value = Generated> {
    let method = prop_oneof![
        Just("INVITE".to_string()),
        Just("OPTIONS".to_string()),
        Just("REGISTER".to_string()),
        "[A-Z][A-Z0-9_.!%*+`'~-]{0,12}",
    ];
    (
        (
            method,
            "[a-z0-9_.!~*'()-]{1,12}",
            "[a-z]{1,10}(\\.[a-z]{1,8}){0,2}",
            proptest::option::of(1u16..),
        ),
        (
            "z9hG4bK[a-zA-Z0-9]{1,16}",
            "[a-zA-Z0-9.@-]{1,30}",
            0u32..(1 << 31),
            "[a-zA-Z0-9]{1,12}",
        ),
        (
            header_name("Via", Some("v")),
            header_name("From", Some("f")),
            header_name("To", Some("t")),
            header_name("Call-ID", Some("i")),
            header_name("CSeq", None),
            header_name("Content-Length", Some("l")),
        ),
        proptest::collection::vec(colon(), 7),
        proptest::collection::vec(
            ("X-[A-Za-z]{1,8}", "[!-~]([ -~]{0,20}[!-~])?", any::<bool>()),
            0..6,
        ),
        (
            proptest::collection::vec(any::<u8>(), 0..80),
            any::<bool>(),
            "[ -~&&[^\"\\\\]]{0,10}",
        ),
    )
        .prop_map(
            |(
                (method, user, host, port),
                (branch, call_id, cseq, from_tag),
                names,
                colons,
                extra,
                (body, with_length, display),
            )| {
                let (via, from, to, call, cseq_name, length) = names;
                let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                let mut text = format!("{method} sip:{user}@{host}{port} SIP/2.0\r\n");
                text += &format!(
                    "{via}{}SIP/2.0/UDP {host}{port};branch={branch};rport\r\n",
                    colons[0]
                );
                text += &format!(
                    "{from}{}\"{display}\" <sip:a@{host}>;tag={from_tag}\r\n",
                    colons[1]
                );
                text += &format!("{to}{}<sip:{user}@{host}>\r\n", colons[2]);
                text += &format!("{call}{}{call_id}\r\n", colons[3]);
                text += &format!("{cseq_name}{}{cseq} {method}\r\n", colons[4]);
                text += &format!("Max-Forwards{}70\r\n", colons[5]);
                for (name, value, folded) in &extra {
                    if *folded {
                        text += &format!("{name}: {value}\r\n {value}\r\n");
                    } else {
                        text += &format!("{name}: {value}\r\n");
                    }
                }
                if with_length {
                    text += &format!("{length}{}{}\r\n", colons[6], body.len());
                }
                text += "\r\n";
                let mut bytes = text.into_bytes();
                bytes.extend_from_slice(&body);
                Generated {
                    text: bytes,
                    method,
                    call_id,
                    cseq,
                    from_tag,
                    branch,
                    body,
                }
            },
        )
}

/// An unedited copy is the message byte for byte, except that one without
/// Content-Length gains one (and only that line).
fn unedited_copy_is_the_message(m: &Message) -> Result<(), TestCaseError> {
    let copy = Rewriter::new(m).finish();
    if m.header(HeaderName::ContentLength).is_some() {
        prop_assert_eq!(copy, m.as_bytes().to_vec());
        return Ok(());
    }
    let line = format!("Content-Length: {}\r\n", m.body().len());
    // Before the blank line that ends the headers: CRLF, or a bare LF.
    let head = &m.as_bytes()[..m.as_bytes().len() - m.body().len()];
    let at = head.len() - if head.ends_with(b"\r\n") { 2 } else { 1 };
    let mut expected = m.as_bytes()[..at].to_vec();
    expected.extend_from_slice(line.as_bytes());
    expected.extend_from_slice(&m.as_bytes()[at..]);
    prop_assert_eq!(copy, expected);
    Ok(())
}

proptest! {
    #[test]
    fn generated_requests_parse_and_round_trip(g in request()) {
        let m = parse(Bytes::from(g.text.clone())).map_err(|e| TestCaseError::fail(e.to_string()))?;
        remembered_matches_headers(&m);
        prop_assert_eq!(m.method_str(), g.method.as_str());
        prop_assert_eq!(m.call_id(), Some(g.call_id.as_str()));
        prop_assert_eq!(m.cseq(), Some((g.cseq, g.method.as_str())));
        prop_assert_eq!(m.from_tag(), Some(g.from_tag.as_str()));
        prop_assert_eq!(m.top_via().and_then(|v| v.branch()), Some(g.branch.as_str()));
        prop_assert_eq!(m.max_forwards(), Some(70));
        prop_assert_eq!(m.body(), g.body.as_slice());
        prop_assert_eq!(m.as_bytes(), g.text.as_slice());
        unedited_copy_is_the_message(&m)?;
        prop_assert!(Uri::parse(m.request_uri().unwrap_or("")).is_ok());
    }

    #[test]
    fn generated_requests_survive_edits(g in request()) {
        let m = parse(Bytes::from(g.text.clone())).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mf = m.headers().iter().position(|h| h.name == HeaderName::MaxForwards).unwrap_or(0);
        let out = Rewriter::new(&m)
            .push_top_header("Via", "SIP/2.0/UDP lb.example.com;branch=z9hG4bKlb")
            .replace_header(mf, "69")
            .set_request_uri("sip:x@10.0.0.1")
            .finish();
        let again = parse(Bytes::from(out)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(again.max_forwards(), Some(69));
        prop_assert_eq!(again.request_uri(), Some("sip:x@10.0.0.1"));
        prop_assert_eq!(again.header_values(HeaderName::Via).count(), 2);
        prop_assert_eq!(again.body(), g.body.as_slice());
    }

    #[test]
    fn mutated_requests_never_panic(g in request(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let mut bytes = g.text.clone();
        for (index, byte) in flips {
            let i = index.index(bytes.len());
            bytes[i] = byte;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        let _ = frame_len(&bytes);
        match parse(Bytes::from(bytes)) {
            Ok(m) => {
                remembered_matches_headers(&m);
                unedited_copy_is_the_message(&m)?;
                let _ = (m.top_via(), m.from_tag(), m.to_tag(), m.cseq(), m.header_values(HeaderName::Via).count());
                let _ = super::build::response(&m, 400, "Bad", Some("t"), &[]);
            }
            Err(e) => {
                if let Some(p) = e.partial {
                    let _ = super::build::response(&p, 400, &e.reason, Some("t"), &[]);
                    let _ = Rewriter::new(&p).remove_first_value(0).finish();
                }
            }
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = frame_len(&bytes);
        let _ = parse(Bytes::from(bytes));
    }

    #[test]
    fn random_text_views_never_panic(s in "\\PC{0,60}", t in "[ -~\r\n\t]{0,60}") {
        for input in [s.as_str(), t.as_str()] {
            let _ = Uri::parse(input).map(|u| u.to_string());
            let _ = NameAddr::parse(input).map(|a| a.param("tag"));
            let _ = Via::parse(input).map(|v| (v.branch(), v.rport()));
            let _ = split_values(input).count();
        }
    }

    #[test]
    fn uri_display_round_trips(user in proptest::option::of("[a-z0-9_.!~*'()%-]{1,8}"), host in "[a-z]{1,8}(\\.[a-z]{1,5}){0,2}|\\[[0-9a-f:]{2,12}\\]", port in proptest::option::of(any::<u16>()), params in "(;[a-z]{1,5}(=[a-z0-9]{1,5})?){0,3}") {
        let text = format!(
            "sip:{}{host}{}{params}",
            user.map(|u| format!("{u}@")).unwrap_or_default(),
            port.map(|p| format!(":{p}")).unwrap_or_default()
        );
        let uri = Uri::parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(uri.to_string(), text.clone());
        prop_assert_eq!(uri.port, port);
    }

    #[test]
    fn split_values_inverts_join(items in proptest::collection::vec(prop_oneof![
            "<sip:[a-z]{1,5}@[a-z]{1,5};x=[a-z,]{0,3}>",
            "\"[a-z, ]{0,6}\" <sip:[a-z]{1,5}@[a-z]{1,5}>;q=0\\.[1-9]",
            "SIP/2\\.0/UDP [a-z]{1,6};branch=z9hG4bK[a-z]{1,6}",
        ], 1..6), seps in proptest::collection::vec("[ \t]{0,2},(\r\n)?[ \t]{0,2}", 5)) {
        let mut joined = String::new();
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                joined += &seps[i - 1];
            }
            joined += item;
        }
        let split: Vec<&str> = split_values(&joined).collect();
        prop_assert_eq!(split, items.iter().map(String::as_str).collect::<Vec<_>>());
    }
}
