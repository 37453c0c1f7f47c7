//! A small authoritative DNS server on a real UDP socket, for the tests of
//! siphon's resolver: A records answered after a delay of the test's
//! choosing, names that do not exist (NXDOMAIN with an SOA, so that the
//! answer may be cached), names it never answers, and a count of the
//! queries it got for each name.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// How the server answers one name.
#[derive(Clone, Copy, Debug)]
pub enum Record {
    /// An A record with this TTL, sent after `delay`.
    A {
        ip: Ipv4Addr,
        ttl: u32,
        delay: Duration,
    },
    /// No answer at all: the query times out.
    Silent,
}

pub struct DnsServer {
    addr: SocketAddr,
    queries: Arc<Mutex<HashMap<String, u32>>>,
}

const TYPE_A: u16 = 1;
const TYPE_SOA: u16 = 6;
const RCODE_NXDOMAIN: u8 = 3;

impl DnsServer {
    /// Serves RECORDS (names without the final dot, lower case); any other
    /// name gets NXDOMAIN at once, and a name with a record gets NOERROR
    /// with no answer for other types (AAAA).
    pub fn start(records: &[(&str, Record)]) -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the test DNS server");
        let addr = socket.local_addr().expect("dns addr");
        let records: Arc<HashMap<String, Record>> = Arc::new(
            records
                .iter()
                .map(|(name, record)| (name.to_string(), *record))
                .collect(),
        );
        let queries = Arc::new(Mutex::new(HashMap::new()));
        let counted = queries.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let Some(query) = Query::parse(&buf[..n]) else {
                    continue;
                };
                *counted
                    .lock()
                    .unwrap()
                    .entry(format!("{}/{}", query.name, query.qtype))
                    .or_insert(0) += 1;
                let record = records.get(&query.name).copied();
                let reply = socket.try_clone().expect("clone dns socket");
                // Each answer on its own thread: a slow name holds up no other.
                thread::spawn(move || {
                    let (delay, bytes) = match record {
                        Some(Record::Silent) => return,
                        Some(Record::A { ip, ttl, delay }) if query.qtype == TYPE_A => {
                            (delay, query.answer(0, Some((ip, ttl))))
                        }
                        Some(Record::A { delay, .. }) => (delay, query.answer(0, None)),
                        None => (Duration::ZERO, query.answer(RCODE_NXDOMAIN, None)),
                    };
                    thread::sleep(delay);
                    let _ = reply.send_to(&bytes, from);
                });
            }
        });
        DnsServer { addr, queries }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many A queries NAME got so far.
    pub fn a_queries(&self, name: &str) -> u32 {
        let key = format!("{name}/{TYPE_A}");
        self.queries.lock().unwrap().get(&key).copied().unwrap_or(0)
    }
}

struct Query {
    id: [u8; 2],
    /// The question as it came, echoed in the answer.
    question: Vec<u8>,
    name: String,
    qtype: u16,
}

impl Query {
    fn parse(packet: &[u8]) -> Option<Query> {
        if packet.len() < 12 || u16::from_be_bytes([packet[4], packet[5]]) != 1 {
            return None;
        }
        let mut at = 12;
        let mut labels = Vec::new();
        loop {
            let len = *packet.get(at)? as usize;
            at += 1;
            if len == 0 {
                break;
            }
            labels.push(String::from_utf8_lossy(packet.get(at..at + len)?).to_ascii_lowercase());
            at += len;
        }
        let qtype = u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]);
        packet.get(at + 3)?;
        Some(Query {
            id: [packet[0], packet[1]],
            question: packet[12..at + 4].to_vec(),
            name: labels.join("."),
            qtype,
        })
    }

    /// The response: RCODE, with one A record or (for NXDOMAIN and empty
    /// answers) an SOA whose minimum is 30 s in the authority section.
    fn answer(&self, rcode: u8, a: Option<(Ipv4Addr, u32)>) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&self.id);
        out.push(0x84); // response, authoritative
        out.push(rcode);
        out.extend_from_slice(&1u16.to_be_bytes()); // questions
        out.extend_from_slice(&u16::from(a.is_some()).to_be_bytes()); // answers
        out.extend_from_slice(&u16::from(a.is_none()).to_be_bytes()); // authority
        out.extend_from_slice(&0u16.to_be_bytes()); // additional
        out.extend_from_slice(&self.question);
        match a {
            Some((ip, ttl)) => {
                out.extend_from_slice(&[0xc0, 12]); // the question's name
                out.extend_from_slice(&TYPE_A.to_be_bytes());
                out.extend_from_slice(&1u16.to_be_bytes());
                out.extend_from_slice(&ttl.to_be_bytes());
                out.extend_from_slice(&4u16.to_be_bytes());
                out.extend_from_slice(&ip.octets());
            }
            None => {
                // The zone is the name's last label ("test").
                let zone = self.name.rsplit('.').next().unwrap_or("test");
                let mut zone_name = vec![zone.len() as u8];
                zone_name.extend_from_slice(zone.as_bytes());
                zone_name.push(0);
                let mut rdata = Vec::new();
                rdata.extend_from_slice(&zone_name); // mname
                rdata.extend_from_slice(&zone_name); // rname
                for value in [1u32, 3600, 600, 86_400, 30] {
                    rdata.extend_from_slice(&value.to_be_bytes());
                }
                out.extend_from_slice(&zone_name);
                out.extend_from_slice(&TYPE_SOA.to_be_bytes());
                out.extend_from_slice(&1u16.to_be_bytes());
                out.extend_from_slice(&30u32.to_be_bytes());
                out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
                out.extend_from_slice(&rdata);
            }
        }
        out
    }
}
