//! systemd's readiness protocol (sd_notify(3)): with `Type=notify` the
//! service manager hands us `NOTIFY_SOCKET`, a datagram socket, and waits
//! for `READY=1` before it calls the service started. We say `READY=1`
//! once every listener is bound and the script is loaded, `RELOADING=1`
//! (with `MONOTONIC_USEC`, as `Type=notify-reload` wants) and `READY=1`
//! around a reload, and `STOPPING=1` when we start to drain. Without
//! `NOTIFY_SOCKET` (not under systemd) every call is a no-op.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where our state messages go, if anywhere.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// The socket `NOTIFY_SOCKET` names (a path, or `@name` in the
    /// abstract namespace); none when it is unset or unusable.
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|name| {
            let address = socket_address(name.as_encoded_bytes())?;
            Some((UnixDatagram::unbound().ok()?, address))
        });
        Notifier { target }
    }

    /// Nothing is sent.
    pub fn none() -> Notifier {
        Notifier { target: None }
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}\n"));
    }

    pub fn reloading(&self) {
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading\n",
            monotonic_usec()
        ));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=draining\n");
    }

    fn send(&self, message: &str) {
        let Some((socket, address)) = &self.target else {
            return;
        };
        if let Err(e) = socket.send_to_addr(message.as_bytes(), address) {
            tracing::warn!("cannot notify the service manager: {e}");
        }
    }
}

fn socket_address(name: &[u8]) -> Option<SocketAddr> {
    match name {
        [] => None,
        [b'@', abstract_name @ ..] => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(abstract_name).ok()
        }
        path => {
            use std::os::unix::ffi::OsStrExt;
            SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(path)).ok()
        }
    }
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares with.
fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the pointer given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64) * 1_000_000 + (now.tv_nsec as u64) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_reloading_and_stopping_reach_the_socket_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                socket_address(path.as_os_str().as_encoded_bytes()).unwrap(),
            )),
        };
        let mut buf = [0u8; 256];
        let mut next = || {
            let n = listener.recv(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        notifier.ready("up");
        assert_eq!(next(), "READY=1\nSTATUS=up\n");
        notifier.reloading();
        let reloading = next();
        assert!(
            reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{reloading}"
        );
        notifier.stopping();
        assert!(next().starts_with("STOPPING=1\n"));
    }

    #[test]
    fn abstract_names_and_nothing_at_all_are_understood() {
        let address = socket_address(b"@siphon-test").unwrap();
        use std::os::linux::net::SocketAddrExt;
        assert_eq!(address.as_abstract_name(), Some(&b"siphon-test"[..]));
        assert!(socket_address(b"").is_none());
        Notifier::none().ready("nobody listens");
    }
}
