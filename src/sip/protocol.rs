//! The transport protocols siphon speaks.

/// Which kind of transport a message travelled, or a hop is reached over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Udp,
    Tcp,
    Tls,
    /// SIP over WebSocket (RFC 7118), and over secure WebSocket.
    Ws,
    Wss,
}

impl Protocol {
    /// Every protocol, in the order of [`Protocol::index`].
    pub const ALL: [Protocol; 5] = [
        Protocol::Udp,
        Protocol::Tcp,
        Protocol::Tls,
        Protocol::Ws,
        Protocol::Wss,
    ];

    /// The Via transport token (`UDP`, `TCP`, `TLS`), as scripts see it too.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Udp => "UDP",
            Protocol::Tcp => "TCP",
            Protocol::Tls => "TLS",
            Protocol::Ws => "WS",
            Protocol::Wss => "WSS",
        }
    }

    /// The lower-case name scripts see (`request.transport`), as Kamailio's
    /// `$pr` gives it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
            Protocol::Tls => "tls",
            Protocol::Ws => "ws",
            Protocol::Wss => "wss",
        }
    }

    /// The `;transport=` value of a URI that reaches us over it (none for
    /// UDP, the default).
    pub fn uri_param(self) -> Option<&'static str> {
        (self != Protocol::Udp).then(|| self.name())
    }

    /// The protocol a `;transport=` value or a Via token names.
    pub fn from_token(token: &str) -> Option<Protocol> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(token))
    }

    /// A position for tables with one entry per protocol.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Reliable transports need no retransmissions (RFC 3261 §17.1.1.2).
    pub fn is_reliable(self) -> bool {
        self != Protocol::Udp
    }

    /// A WebSocket: one message per frame.
    pub fn is_websocket(self) -> bool {
        matches!(self, Protocol::Ws | Protocol::Wss)
    }

    /// The port a URI without one means (RFC 3263 §4.2).
    pub fn default_port(self) -> u16 {
        match self {
            Protocol::Tls => 5061,
            Protocol::Ws => 80,
            Protocol::Wss => 443,
            _ => 5060,
        }
    }
}
