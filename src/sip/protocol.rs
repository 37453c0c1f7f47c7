//! The transport protocols siphon speaks.

/// Which kind of transport a message travelled, or a hop is reached over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Udp,
    Tcp,
}

impl Protocol {
    /// The Via transport token (`UDP`, `TCP`), as scripts see it too.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Udp => "UDP",
            Protocol::Tcp => "TCP",
        }
    }

    /// Reliable transports need no retransmissions (RFC 3261 §17.1.1.2).
    pub fn is_reliable(self) -> bool {
        self == Protocol::Tcp
    }
}
