//! A small authoritative DNS server on a real UDP socket, for the tests of
//! siphon's resolver: A records answered after a delay of the test's
//! choosing, SRV and NAPTR records (RFC 3263), names that do not exist
//! (NXDOMAIN with an SOA, so that the answer may be cached), names it never
//! answers, and a count of the queries it got for each name.

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
    /// An SRV record (RFC 2782).
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: &'static str,
    },
    /// A NAPTR record (RFC 3403) with the "s" flag, as RFC 3263 uses them.
    Naptr {
        order: u16,
        preference: u16,
        service: &'static str,
        replacement: &'static str,
    },
}

pub struct DnsServer {
    addr: SocketAddr,
    queries: Arc<Mutex<HashMap<String, u32>>>,
}

const TYPE_A: u16 = 1;
const TYPE_SOA: u16 = 6;
const TYPE_SRV: u16 = 33;
const TYPE_NAPTR: u16 = 35;
const RCODE_NXDOMAIN: u8 = 3;

impl DnsServer {
    /// Serves RECORDS (names without the final dot, lower case; a name may
    /// have several); any other name gets NXDOMAIN at once, and a name with
    /// records gets NOERROR with no answer for the types it lacks (AAAA).
    pub fn start(records: &[(&str, Record)]) -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the test DNS server");
        let addr = socket.local_addr().expect("dns addr");
        let mut by_name: HashMap<String, Vec<Record>> = HashMap::new();
        for (name, record) in records {
            by_name.entry(name.to_string()).or_default().push(*record);
        }
        let records = Arc::new(by_name);
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
                let found = records.get(&query.name).cloned();
                let reply = socket.try_clone().expect("clone dns socket");
                // Each answer on its own thread: a slow name holds up no other.
                thread::spawn(move || {
                    let Some(found) = found else {
                        let bytes = query.answer(RCODE_NXDOMAIN, &[]);
                        let _ = reply.send_to(&bytes, from);
                        return;
                    };
                    if found.iter().any(|r| matches!(r, Record::Silent)) {
                        return;
                    }
                    let mut delay = Duration::ZERO;
                    let answers: Vec<(u16, u32, Vec<u8>)> = found
                        .iter()
                        .filter_map(|record| match *record {
                            Record::A { ip, ttl, delay: d } => {
                                delay = delay.max(d);
                                (query.qtype == TYPE_A).then(|| (TYPE_A, ttl, ip.octets().to_vec()))
                            }
                            Record::Srv {
                                priority,
                                weight,
                                port,
                                target,
                            } => (query.qtype == TYPE_SRV).then(|| {
                                let mut rdata = Vec::new();
                                for value in [priority, weight, port] {
                                    rdata.extend_from_slice(&value.to_be_bytes());
                                }
                                rdata.extend_from_slice(&wire_name(target));
                                (TYPE_SRV, 60, rdata)
                            }),
                            Record::Naptr {
                                order,
                                preference,
                                service,
                                replacement,
                            } => (query.qtype == TYPE_NAPTR).then(|| {
                                let mut rdata = Vec::new();
                                rdata.extend_from_slice(&order.to_be_bytes());
                                rdata.extend_from_slice(&preference.to_be_bytes());
                                for text in ["s", service, ""] {
                                    rdata.push(text.len() as u8);
                                    rdata.extend_from_slice(text.as_bytes());
                                }
                                rdata.extend_from_slice(&wire_name(replacement));
                                (TYPE_NAPTR, 60, rdata)
                            }),
                            Record::Silent => None,
                        })
                        .collect();
                    thread::sleep(delay);
                    let _ = reply.send_to(&query.answer(0, &answers), from);
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

/// NAME in DNS wire form (labels, then the root).
fn wire_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
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

    /// The response: RCODE, with ANSWERS (type, TTL, rdata) or (for
    /// NXDOMAIN and empty answers) an SOA whose minimum is 30 s in the
    /// authority section.
    fn answer(&self, rcode: u8, answers: &[(u16, u32, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&self.id);
        out.push(0x84); // response, authoritative
        out.push(rcode);
        out.extend_from_slice(&1u16.to_be_bytes()); // questions
        out.extend_from_slice(&(answers.len() as u16).to_be_bytes()); // answers
        out.extend_from_slice(&u16::from(answers.is_empty()).to_be_bytes()); // authority
        out.extend_from_slice(&0u16.to_be_bytes()); // additional
        out.extend_from_slice(&self.question);
        for (rtype, ttl, rdata) in answers {
            out.extend_from_slice(&[0xc0, 12]); // the question's name
            out.extend_from_slice(&rtype.to_be_bytes());
            out.extend_from_slice(&1u16.to_be_bytes());
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            out.extend_from_slice(rdata);
        }
        match answers.is_empty() {
            false => {}
            true => {
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
