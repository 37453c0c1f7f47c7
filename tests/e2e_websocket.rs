//! End to end over WebSocket (RFC 7118): a WebSocket client (tungstenite,
//! as a browser's SIP stack would speak it) calls through the LB's `ws` and
//! `wss` listeners to a sipp UDP backend and hangs up; handshakes without
//! the `sip` subprotocol or from another Origin are refused.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use common::gateway::{seed_lb_script, Backend};
use common::tls::TestCa;
use common::{free_port, metric, Siphon};

const ORIGIN: &str = "https://app.example.com";

const WS_LB: &str = r#"listen:
  udp: ["127.0.0.1:@PORT@"]
  ws: [{address: "127.0.0.1:@WS@", allowed_origins: ["https://app.example.com"]}]
  wss: [{address: "127.0.0.1:@WSS@", cert: "@CERT@", key: "@KEY@"}]
script:
  path: "script.py"
gateway:
  groups:
    - name: "backends"
      algorithm: hash
      destinations:
        - uri: "sip:backend1.example.com:5060"
          address: "127.0.0.1:@B1@"
admin: {listen: "127.0.0.1:@ADMIN@"}
log: {level: info, format: pretty}
"#;

struct Lb {
    siphon: Siphon,
    ws: SocketAddr,
    wss: SocketAddr,
    admin: SocketAddr,
    ca_file: std::path::PathBuf,
    _backend: Backend,
    _dir: tempfile::TempDir,
}

fn start_lb() -> Lb {
    start_lb_with("gw_uas.xml")
}

/// The LB in front of a sipp backend running SCENARIO.
fn start_lb_with(scenario: &str) -> Lb {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ca_file = ca.write(dir.path());
    let cert = ca.issue(dir.path(), "lb", &["lb.test"]);
    let backend_port = free_port();
    let backend = Backend::start_scenario(dir.path(), scenario, &[("backend", "b1")], backend_port);
    let (ws, wss, admin) = (free_port(), free_port(), free_port());
    let config = WS_LB
        .replace("@WS@", &ws.to_string())
        .replace("@WSS@", &wss.to_string())
        .replace("@CERT@", &cert.cert.display().to_string())
        .replace("@KEY@", &cert.key.display().to_string())
        .replace("@B1@", &backend_port.to_string())
        .replace("@ADMIN@", &admin.to_string());
    let siphon = Siphon::start(&config, &seed_lb_script());
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    Lb {
        siphon,
        ws: at(ws),
        wss: at(wss),
        admin: at(admin),
        ca_file,
        _backend: backend,
        _dir: dir,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The opening handshake a browser sends, with SUBPROTOCOL and ORIGIN.
fn request(
    url: &str,
    subprotocol: Option<&str>,
    origin: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = url.into_client_request().unwrap();
    if let Some(subprotocol) = subprotocol {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(subprotocol).unwrap(),
        );
    }
    request
        .headers_mut()
        .insert("Origin", HeaderValue::from_str(origin).unwrap());
    request
}

/// A request as JsSIP writes one: a `.invalid` Via host and Contact.
fn sip_request(
    method: &str,
    ruri: &str,
    transport: &str,
    call_id: &str,
    cseq: u32,
    to_tag: Option<&str>,
    routes: &[String],
) -> String {
    let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    let mut text = format!(
        "{method} {ruri} SIP/2.0\r\n\
         Via: SIP/2.0/{transport} df7jal23ls0d.invalid;branch=z9hG4bK{call_id}{cseq}{method}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:caller@example.com>;tag=ws1\r\n\
         To: <sip:callee@example.com>{to_tag}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} {method}\r\n\
         Contact: <sip:caller@df7jal23ls0d.invalid;transport=ws>\r\n"
    );
    for route in routes {
        text.push_str(&format!("Route: {route}\r\n"));
    }
    text.push_str("Content-Length: 0\r\n\r\n");
    text
}

fn header<'a>(message: &'a str, name: &str) -> Vec<&'a str> {
    message
        .split("\r\n")
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
        .collect()
}

/// The next final response for METHOD, every frame read on the way kept.
async fn final_response<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    method: &str,
    seen: &mut Vec<String>,
) -> String {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap_or_else(|_| panic!("no final response to {method}; got {seen:?}"))
            .expect("socket open")
            .expect("frame");
        let Message::Text(text) = frame else { continue };
        let text = text.to_string();
        seen.push(text.clone());
        let code: u16 = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let cseq_method = header(&text, "CSeq")
            .first()
            .and_then(|c| c.split(' ').nth(1))
            .unwrap_or("")
            .to_string();
        if code >= 200 && cseq_method == method {
            return text;
        }
    }
}

/// A call set up over WS: the 200's Record-Route set, and what the ACK
/// and in-dialog requests need.
struct Dialog {
    record_route: Vec<String>,
    routes: Vec<String>,
    contact: String,
    to_tag: String,
}

/// INVITE, 200 and ACK over WS.
async fn set_up<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    via: &str,
    call_id: &str,
    seen: &mut Vec<String>,
) -> Dialog {
    let invite = sip_request(
        "INVITE",
        "sip:callee@example.com",
        via,
        call_id,
        1,
        None,
        &[],
    );
    ws.send(Message::text(invite)).await.unwrap();
    let ok = final_response(ws, "INVITE", seen).await;
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    let to_tag = header(&ok, "To")[0]
        .split("tag=")
        .nth(1)
        .and_then(|t| t.split(';').next())
        .unwrap_or_default()
        .to_string();
    let record_route: Vec<String> = header(&ok, "Record-Route")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .collect();
    let contact = header(&ok, "Contact")[0]
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap_or_default()
        .to_string();
    let routes: Vec<String> = record_route.iter().rev().cloned().collect();
    let ack = sip_request("ACK", &contact, via, call_id, 1, Some(&to_tag), &routes);
    ws.send(Message::text(ack)).await.unwrap();
    Dialog {
        record_route,
        routes,
        contact,
        to_tag,
    }
}

/// INVITE, ACK and BYE over WS; returns the 200's Record-Route set and
/// the BYE's status.
async fn call<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    via: &str,
    call_id: &str,
) -> (Vec<String>, String) {
    let mut seen = Vec::new();
    let dialog = set_up(ws, via, call_id, &mut seen).await;
    let bye = sip_request(
        "BYE",
        &dialog.contact,
        via,
        call_id,
        2,
        Some(&dialog.to_tag),
        &dialog.routes,
    );
    ws.send(Message::text(bye)).await.unwrap();
    let bye_answer = final_response(ws, "BYE", &mut seen).await;
    (dialog.record_route, bye_answer)
}

#[test]
fn a_websocket_caller_reaches_a_udp_backend_and_hangs_up() {
    let lb = start_lb();
    let url = format!("ws://{}/", lb.ws);
    runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(lb.ws).await.unwrap();
        let (mut ws, response) =
            tokio_tungstenite::client_async(request(&url, Some("sip"), ORIGIN), tcp)
                .await
                .unwrap_or_else(|e| panic!("handshake: {e}\n{}", lb.siphon.log_tail(20)));
        assert_eq!(
            response
                .headers()
                .get("Sec-WebSocket-Protocol")
                .map(|v| v.to_str().unwrap()),
            Some("sip"),
            "RFC 7118: the server answers with the sip subprotocol"
        );
        let (record_route, bye) = call(&mut ws, "WS", "ws-call-1").await;
        assert!(bye.starts_with("SIP/2.0 200"), "{bye}");
        // The UDP side toward the backend, then the WS side back to us.
        assert_eq!(record_route.len(), 2, "{record_route:?}");
        assert_eq!(
            siphon::proxy::seal::unsealed(&record_route[0]),
            format!("<sip:127.0.0.1:{};lr>", lb.siphon.port)
        );
        // With a flow token naming this socket as its user part.
        assert!(record_route[1].starts_with("<sip:f"), "{record_route:?}");
        assert!(
            siphon::proxy::seal::unsealed(&record_route[1])
                .ends_with(&format!("@{};transport=ws;lr>", lb.ws)),
            "{record_route:?}"
        );
        assert_eq!(metric(lb.admin, "siphon_connections", "\"ws\""), 1.0);
        ws.close(None).await.unwrap();
    });
    let closed = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        metric(lb.admin, "siphon_connections", "\"ws\"") == 0.0
    });
    assert!(closed, "the closed WebSocket is still counted");
}

#[test]
fn a_secure_websocket_caller_gets_through_too() {
    let lb = start_lb();
    let url = format!("wss://lb.test:{}/", lb.wss.port());
    let ca = std::fs::read(&lb.ca_file).unwrap();
    runtime().block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(lb.wss).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("lb.test").unwrap();
        let tls = connector
            .connect(name, tcp)
            .await
            .expect("TLS to the wss listener");
        // No allowed_origins on this listener: any Origin is welcome.
        let (mut ws, _) = tokio_tungstenite::client_async(
            request(&url, Some("sip"), "https://elsewhere.example"),
            tls,
        )
        .await
        .unwrap_or_else(|e| panic!("handshake: {e}\n{}", lb.siphon.log_tail(20)));
        let (record_route, bye) = call(&mut ws, "WSS", "wss-call-1").await;
        assert!(bye.starts_with("SIP/2.0 200"), "{bye}");
        assert!(
            siphon::proxy::seal::unsealed(&record_route[1])
                .ends_with(&format!("@{};transport=wss;lr>", lb.wss)),
            "{record_route:?}"
        );
    });
}

#[test]
fn handshakes_without_the_sip_subprotocol_or_from_another_origin_are_refused() {
    let lb = start_lb();
    let url = format!("ws://{}/", lb.ws);
    runtime().block_on(async {
        for (subprotocol, origin, status) in [
            (None, ORIGIN, 400),
            (Some("chat"), ORIGIN, 400),
            (Some("sip"), "https://evil.example", 403),
        ] {
            let tcp = tokio::net::TcpStream::connect(lb.ws).await.unwrap();
            let refused =
                tokio_tungstenite::client_async(request(&url, subprotocol, origin), tcp).await;
            match refused {
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                    assert_eq!(
                        response.status().as_u16(),
                        status,
                        "{subprotocol:?} {origin}"
                    )
                }
                other => panic!("{subprotocol:?} {origin}: expected HTTP {status}, got {other:?}"),
            }
        }
        // The listener goes on serving the right clients.
        let tcp = tokio::net::TcpStream::connect(lb.ws).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(request(&url, Some("sip"), ORIGIN), tcp)
            .await
            .unwrap();
        let (_, bye) = call(&mut ws, "WS", "ws-after-refusals").await;
        assert!(bye.starts_with("SIP/2.0 200"), "{bye}");
    });
    assert_eq!(
        metric(lb.admin, "siphon_tcp_refused_total", "websocket_handshake"),
        3.0
    );
}

#[test]
fn the_callee_hangs_up_and_its_bye_reaches_the_browser_over_its_socket() {
    // The backend hangs up after the ACK. The BYE's Request-URI is the
    // browser's Contact (`df7jal23ls0d.invalid`, which no DNS knows): only
    // the flow token in the LB's Record-Route can take it to the browser.
    let lb = start_lb_with("uas_bye.xml");
    let url = format!("ws://{}/", lb.ws);
    runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(lb.ws).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(request(&url, Some("sip"), ORIGIN), tcp)
            .await
            .unwrap();
        let mut seen = Vec::new();
        let dialog = set_up(&mut ws, "WS", "ws-bye", &mut seen).await;
        let routes = &dialog.routes;
        assert!(
            siphon::proxy::seal::unsealed(&routes[0]).ends_with(";transport=ws;lr>")
                && routes[0].starts_with("<sip:f"),
            "{routes:?}"
        );
        let bye = next_request(&mut ws, "BYE").await.unwrap_or_else(|| {
            panic!(
                "the callee's BYE never reached the browser\n{}",
                lb.siphon.log_tail(20)
            )
        });
        assert!(
            bye.starts_with("BYE sip:caller@df7jal23ls0d.invalid"),
            "{bye}"
        );
        ws.send(Message::text(answer_200(&bye))).await.unwrap();
        // Answered: the callee stops retransmitting its BYE.
        assert!(
            next_request(&mut ws, "BYE").await.is_none(),
            "the 200 did not reach the callee"
        );
    });
}

/// The next request METHOD within 2 s.
async fn next_request<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    method: &str,
) -> Option<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .ok()??
            .ok()?;
        if let Message::Text(text) = frame {
            if text.starts_with(&format!("{method} ")) {
                return Some(text.to_string());
            }
        }
    }
}

/// A 200 to REQUEST, its Via, From, To, Call-ID and CSeq copied.
fn answer_200(request: &str) -> String {
    let mut reply = String::from("SIP/2.0 200 OK\r\n");
    for line in request.split("\r\n").skip(1) {
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if ["via", "from", "to", "call-id", "cseq"].contains(&name.as_str()) {
            reply.push_str(line);
            reply.push_str("\r\n");
        }
    }
    reply.push_str("Content-Length: 0\r\n\r\n");
    reply
}

#[test]
fn a_caller_whose_websocket_reconnected_hangs_up_through_its_new_socket() {
    // A browser's WebSocket drops mid-call and it reconnects (a new source
    // port): its BYE, sent on the new socket with the dialog's Route set,
    // must reach the backend, not the old socket its token names.
    let lb = start_lb();
    let url = format!("ws://{}/", lb.ws);
    runtime().block_on(async {
        let connect = || async {
            let tcp = tokio::net::TcpStream::connect(lb.ws).await.unwrap();
            let (ws, _) = tokio_tungstenite::client_async(request(&url, Some("sip"), ORIGIN), tcp)
                .await
                .unwrap_or_else(|e| panic!("handshake: {e}\n{}", lb.siphon.log_tail(20)));
            ws
        };
        let mut first = connect().await;
        let mut seen = Vec::new();
        let dialog = set_up(&mut first, "WS", "ws-moved-1", &mut seen).await;
        first.close(None).await.unwrap();
        drop(first);
        let mut second = connect().await;
        let bye = sip_request(
            "BYE",
            &dialog.contact,
            "WS",
            "ws-moved-1",
            2,
            Some(&dialog.to_tag),
            &dialog.routes,
        );
        second.send(Message::text(bye)).await.unwrap();
        let answer = final_response(&mut second, "BYE", &mut seen).await;
        assert!(
            answer.starts_with("SIP/2.0 200"),
            "the backend's answer to the BYE: {answer}\n{}",
            lb.siphon.log_tail(20)
        );
    });
}
