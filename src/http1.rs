//! A minimal HTTP/1.1 client over one TCP connection per request
//! (`Connection: close`): what `siphon ctl` and the gateway webhook need to
//! talk to a local admin API or an alert receiver, and no more. Plain HTTP
//! only; the body is read to the end (chunked or not).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Where requests go: an address, and the Host header and path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub host: String,
    /// The path of an `http://host:port/path` URL ("" for none).
    pub path: String,
}

impl Endpoint {
    /// Parses `http://host:port[/path]`, resolving the host.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = url
            .trim()
            .strip_prefix("http://")
            .ok_or_else(|| format!("`{url}`: write it http://host:port[/path] (plain HTTP)"))?;
        let (host, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, ""),
        };
        let with_port = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host.to_string()
        } else {
            format!("{host}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("`{url}`: {e}"))?
            .next()
            .ok_or_else(|| format!("`{url}`: no address"))?;
        Ok(Endpoint {
            addr,
            host: host.to_string(),
            path: path.trim_end_matches('/').to_string(),
        })
    }
}

/// One answer: its status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// Sends `method path` with `headers` and `body`, reads the whole answer.
pub fn request(
    endpoint: &Endpoint,
    (method, path): (&str, &str),
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Answer, String> {
    let mut stream = TcpStream::connect_timeout(&endpoint.addr, timeout)
        .map_err(|e| format!("cannot reach {}: {e}", endpoint.addr))?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        endpoint.host,
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .and_then(|_| stream.write_all(body))
        .map_err(|e| format!("sending to {}: {e}", endpoint.addr))?;
    let deadline = std::time::Instant::now() + timeout;
    let mut raw = Vec::new();
    let mut buffer = [0u8; 8192];
    while !is_complete(&raw) {
        if raw.len() > MAX_ANSWER_BYTES {
            return Err(format!(
                "{}'s answer is larger than {MAX_ANSWER_BYTES} bytes",
                endpoint.addr
            ));
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no whole answer from {} within {timeout:?}",
                endpoint.addr
            ));
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => raw.extend_from_slice(&buffer[..read]),
            Err(e) => return Err(format!("reading from {}: {e}", endpoint.addr)),
        }
    }
    parse_answer(&raw)
}

/// The largest answer read.
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// Where the head ends (the index after its blank line).
fn head_end(raw: &[u8]) -> Option<usize> {
    raw.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// What the head says of the body's length.
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

fn framing(head: &str) -> Framing {
    for line in head.lines() {
        let line = line.to_ascii_lowercase();
        if line.starts_with("transfer-encoding:") && line.contains("chunked") {
            return Framing::Chunked;
        }
        if let Some(length) = line.strip_prefix("content-length:") {
            if let Ok(length) = length.trim().parse() {
                return Framing::Length(length);
            }
        }
    }
    Framing::UntilClose
}

/// Whether `raw` holds a whole answer (a server may keep the connection).
fn is_complete(raw: &[u8]) -> bool {
    let Some(end) = head_end(raw) else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    match framing(&head) {
        Framing::Length(length) => raw.len() >= end + length,
        Framing::Chunked => dechunk(&raw[end..]).is_some(),
        Framing::UntilClose => false,
    }
}

/// Reads an HTTP/1.1 answer: its status and body (chunked or not).
pub fn parse_answer(raw: &[u8]) -> Result<Answer, String> {
    let end = head_end(raw)
        .ok_or_else(|| "the server closed the connection without an answer".to_string())?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {}", head.lines().next().unwrap_or("")))?;
    let body = &raw[end..];
    let body = match framing(&head) {
        Framing::Chunked => dechunk(body).unwrap_or_default(),
        Framing::Length(length) => body[..length.min(body.len())].to_vec(),
        Framing::UntilClose => body.to_vec(),
    };
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The body of a chunked encoding, once its last chunk has come.
fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        let data = rest.get(line_end + 2..)?;
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        rest = data.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_plain_or_chunked() {
        let plain = parse_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((plain.status, plain.body.as_str()), (200, "{}"));
        let chunked = parse_answer(
            b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((chunked.status, chunked.body.as_str()), (404, "{\"a\":1}"));
        assert!(parse_answer(b"").is_err());
    }

    #[test]
    fn a_whole_answer_is_known_without_waiting_for_the_close() {
        assert!(is_complete(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
        ));
        assert!(!is_complete(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n{}"
        ));
        assert!(is_complete(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        ));
        assert!(!is_complete(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n"
        ));
        assert!(!is_complete(b"HTTP/1.1 200 OK\r\n\r\nuntil close"));
        // A chunk boundary inside a UTF-8 character is no panic.
        let split = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\n\u{e9}"
            .replace('\u{e9}', "\u{e9}\r\n0\r\n\r\n");
        assert!(parse_answer(split.as_bytes()).is_ok());
    }

    #[test]
    fn urls_name_host_port_and_path() {
        let endpoint = Endpoint::parse("http://127.0.0.1:9000/hooks/siphon/").unwrap();
        assert_eq!(endpoint.addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(
            (endpoint.host.as_str(), endpoint.path.as_str()),
            ("127.0.0.1:9000", "/hooks/siphon")
        );
        assert_eq!(Endpoint::parse("http://127.0.0.1").unwrap().addr.port(), 80);
        assert!(Endpoint::parse("https://example.com")
            .unwrap_err()
            .contains("plain HTTP"));
    }
}
