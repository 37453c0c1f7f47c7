//! A certificate authority made by the test (rcgen), the certificates it
//! issues, and a TLS SIP client in Python's `ssl` module (OpenSSL): a peer
//! that shares no code with siphon's rustls.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "siphon test CA");
        let key = KeyPair::generate().expect("CA key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    /// Writes the CA certificate to DIR/ca.pem.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        fs::write(&path, self.issuer.pem()).expect("write ca.pem");
        path
    }

    /// A leaf certificate for NAMES (host names or IP addresses), with NAME
    /// as its common name, written to DIR/NAME.pem and DIR/NAME.key.
    pub fn issue(&self, dir: &Path, name: &str, names: &[&str]) -> Issued {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("leaf key");
        let certificate = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let issued = Issued {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        };
        fs::write(&issued.cert, certificate.pem()).expect("write cert");
        fs::write(&issued.key, key.serialize_pem()).expect("write key");
        issued
    }
}

/// One call over TLS from Python: INVITE, ACK along the Record-Route set,
/// BYE. Prints one line per response, `STATUS <code> <cseq method>`, the
/// 200's Record-Route values as `RR <value>`, and `DONE` at the end.
const PY_UAC: &str = r#"
import socket, ssl, sys, uuid

host, port, ca, server_name, user = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
context = ssl.create_default_context(cafile=ca)
raw = socket.create_connection((host, port), timeout=10)
tls = context.wrap_socket(raw, server_hostname=server_name)
local = "%s:%d" % tls.getsockname()[:2]
call_id = uuid.uuid4().hex
buffer = b""

def send(method, ruri, cseq, to_tag="", routes=()):
    lines = ["%s %s SIP/2.0" % (method, ruri),
             "Via: SIP/2.0/TLS %s;branch=z9hG4bK%s;rport" % (local, uuid.uuid4().hex),
             "Max-Forwards: 70",
             "From: <sip:caller@example.com>;tag=py1",
             "To: <sip:%s@example.com>%s" % (user, (";tag=" + to_tag) if to_tag else ""),
             "Call-ID: " + call_id,
             "CSeq: %d %s" % (cseq, method),
             "Contact: <sip:caller@%s;transport=tls>" % local]
    lines += ["Route: " + r for r in routes]
    lines += ["Content-Length: 0", "", ""]
    tls.sendall("\r\n".join(lines).encode())

def receive():
    global buffer
    while b"\r\n\r\n" not in buffer:
        chunk = tls.recv(65536)
        if not chunk:
            sys.exit("connection closed")
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    headers = head.decode().split("\r\n")
    length = 0
    for h in headers:
        if h.lower().startswith("content-length:"):
            length = int(h.split(":", 1)[1])
    while len(rest) < length:
        rest += tls.recv(65536)
    buffer = rest[length:]
    return headers

def final(method):
    while True:
        headers = receive()
        if not headers[0].startswith("SIP/2.0 "):
            continue
        code = int(headers[0].split()[1])
        cseq = [h for h in headers if h.lower().startswith("cseq:")][0].split()[-1]
        print("STATUS %d %s" % (code, cseq), flush=True)
        if code >= 200 and cseq == method:
            return headers

ruri = "sip:%s@%s:%d;transport=tls" % (user, host, port)
send("INVITE", ruri, 1)
ok = final("INVITE")
to = [h for h in ok if h.lower().startswith("to:")][0]
to_tag = to.split("tag=")[1].split(";")[0]
rr = []
for h in ok:
    if h.lower().startswith("record-route:"):
        rr += [v.strip() for v in h.split(":", 1)[1].split(",")]
for value in rr:
    print("RR " + value, flush=True)
contact = [h for h in ok if h.lower().startswith("contact:")][0].split("<")[1].split(">")[0]
routes = list(reversed(rr))
send("ACK", contact, 1, to_tag, routes)
send("BYE", contact, 2, to_tag, routes)
final("BYE")
print("DONE", flush=True)
"#;

/// The lines the Python caller printed, and its stderr on failure.
pub fn python_tls_call(
    lb: std::net::SocketAddr,
    ca: &Path,
    server_name: &str,
    user: &str,
) -> Result<Vec<String>, String> {
    let output = Command::new("python3")
        .args(["-c", PY_UAC])
        .arg(lb.ip().to_string())
        .arg(lb.port().to_string())
        .arg(ca)
        .arg(server_name)
        .arg(user)
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    let lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    if output.status.success() {
        Ok(lines)
    } else {
        Err(format!(
            "python TLS caller failed ({}): {}\nstdout: {lines:?}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// A SIP peer over TLS in Python's `ssl` that requires a client certificate
/// from our CA (a trunk that wants mutual TLS). It answers every request
/// 200 and prints `PEER <commonName>` for each client it accepted, or
/// `REFUSED <reason>` for each handshake it refused, to DIR/tls_peer.out.
const PY_MTLS_PEER: &str = r#"
import socket, ssl, sys, threading

port, cert, key, ca, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
context.verify_mode = ssl.CERT_REQUIRED
context.load_verify_locations(ca)
log = open(out, "a", buffering=1)
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port))
server.listen(16)

def serve(conn):
    try:
        tls = context.wrap_socket(conn, server_side=True)
    except Exception as error:
        log.write("REFUSED %s\n" % type(error).__name__)
        return
    subject = dict(x[0] for x in tls.getpeercert().get("subject", ()))
    names = [v for k, v in tls.getpeercert().get("subjectAltName", ())]
    log.write("PEER %s\n" % (subject.get("commonName") or ",".join(names)))
    buffer = b""
    while True:
        chunk = tls.recv(65536)
        if not chunk:
            return
        buffer += chunk
        while b"\r\n\r\n" in buffer:
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            keep = [l for l in lines[1:] if l.split(":")[0].lower() in ("via", "from", "to", "call-id", "cseq")]
            reply = "\r\n".join(["SIP/2.0 200 OK"] + keep + ["Content-Length: 0", "", ""])
            tls.sendall(reply.encode())

while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;

pub struct PythonTlsPeer {
    child: std::process::Child,
    out: PathBuf,
}

impl PythonTlsPeer {
    pub fn start(dir: &Path, port: u16, server: &Issued, ca: &Path) -> PythonTlsPeer {
        let out = dir.join("tls_peer.out");
        let child = Command::new("python3")
            .args(["-c", PY_MTLS_PEER])
            .arg(port.to_string())
            .arg(&server.cert)
            .arg(&server.key)
            .arg(ca)
            .arg(&out)
            .spawn()
            .expect("start the Python TLS peer");
        assert!(
            super::wait_until_bound(
                port,
                super::Transport::Tcp,
                std::time::Duration::from_secs(5)
            ),
            "the Python TLS peer did not listen on {port}"
        );
        PythonTlsPeer { child, out }
    }

    /// What it printed so far.
    pub fn lines(&self) -> Vec<String> {
        fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for PythonTlsPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
