//! `capture`: a copy of every SIP message sent and received, as HEPv3 to
//! Homer or sngrep (`capture.hep`).

use super::*;

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    pub hep: Option<HepConfig>,
}

/// `capture.hep`: where HEP packets go and which messages.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HepConfig {
    /// The collector, `ip:port` (Homer's heplify-server, sngrep -L).
    pub address: SocketAddr,
    #[serde(default)]
    pub transport: HepTransport,
    /// The capture agent id Homer shows for this node.
    #[serde(default = "default_capture_id")]
    pub id: u32,
    /// The auth key chunk, when the collector asks for one.
    #[serde(default)]
    pub password: Option<String>,
    /// The share of calls captured, 0 to 1, decided once per Call-ID.
    #[serde(default = "default_sample")]
    pub sample: f64,
    /// Only these methods (a response counts as its CSeq's method).
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Packets waiting to be sent at most; more are dropped and counted.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HepTransport {
    #[default]
    Udp,
    Tcp,
}

fn default_capture_id() -> u32 {
    2001
}

fn default_sample() -> f64 {
    1.0
}

fn default_queue() -> usize {
    10_000
}

pub(super) fn check_capture(capture: &mut CaptureConfig, origin: &Path) -> Result<(), ConfigError> {
    let Some(hep) = &mut capture.hep else {
        return Ok(());
    };
    if !(0.0..=1.0).contains(&hep.sample) {
        return Err(invalid(
            origin,
            "capture.hep.sample",
            format!(
                "{} is out of range; use 0 to 1 (the share of calls)",
                hep.sample
            ),
        ));
    }
    check_range(
        origin,
        "capture.hep.queue",
        hep.queue,
        1,
        1_000_000,
        "packets",
    )?;
    if hep.address.ip().is_unspecified() || hep.address.port() == 0 {
        return Err(invalid(
            origin,
            "capture.hep.address",
            format!(
                "{} names no collector; write its ip:port, e.g. \"192.0.2.9:9060\"",
                hep.address
            ),
        ));
    }
    if let Some(password) = &hep.password {
        if password.is_empty() || password.len() > 99 {
            return Err(invalid(
                origin,
                "capture.hep.password",
                "must be 1 to 99 bytes (collectors such as sngrep keep at most 99)",
            ));
        }
    }
    if hep.methods.as_ref().is_some_and(Vec::is_empty) {
        return Err(invalid(
            origin,
            "capture.hep.methods",
            "is empty, which would capture nothing; leave it out to capture every method",
        ));
    }
    if let Some(methods) = &mut hep.methods {
        for (index, method) in methods.iter_mut().enumerate() {
            let valid = !method.is_empty() && method.bytes().all(|b| b.is_ascii_alphabetic());
            if !valid {
                return Err(invalid(
                    origin,
                    format!("capture.hep.methods[{index}]"),
                    format!("`{method}` is not a SIP method, e.g. INVITE"),
                ));
            }
            method.make_ascii_uppercase();
        }
    }
    Ok(())
}
