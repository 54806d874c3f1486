//! Telling the service manager where the process is in its life: systemd's
//! `sd_notify` protocol (`READY=1` once serving, `STOPPING=1` on shutdown),
//! written by hand: one datagram to the socket named by `$NOTIFY_SOCKET`.
//! Without that variable (not under systemd, or `Type=` other than
//! `notify`) every call does nothing. Owns no server state.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The variable systemd sets for `Type=notify` services.
const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Tell the service manager the server is ready: the listener is bound and
/// the store is open.
pub fn notify_ready() {
    notify("READY=1\nSTATUS=serving");
}

/// Tell the service manager the server is shutting down, so `systemctl`
/// shows "deactivating" rather than a hung service.
pub fn notify_stopping() {
    notify("STOPPING=1\nSTATUS=shutting down");
}

/// Send `state` to `$NOTIFY_SOCKET` if it is set. A failure costs only the
/// manager's view of our state, never service, so it is logged, not returned.
fn notify(state: &str) {
    let Some(socket) = std::env::var_os(NOTIFY_SOCKET) else {
        return;
    };
    let socket = socket.to_string_lossy();
    match send(&socket, state) {
        Ok(()) => tracing::debug!(state, "notified the service manager"),
        Err(e) => tracing::warn!(error = %e, socket = %socket, "cannot notify the service manager"),
    }
}

/// Send one datagram to a path, or to an abstract socket written `@name`.
pub fn send(socket: &str, state: &str) -> io::Result<()> {
    let addr = address(socket)?;
    let sender = UnixDatagram::unbound()?;
    sender.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

fn address(socket: &str) -> io::Result<SocketAddr> {
    if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        return SocketAddr::from_abstract_name(name.as_bytes());
    }
    if !socket.starts_with('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is neither an absolute path nor @abstract",
        ));
    }
    SocketAddr::from_pathname(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_reaches_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        send(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn a_state_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("pigeond-test-{}", std::process::id());
        let receiver =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        send(&format!("@{name}"), "STOPPING=1").unwrap();
        let mut buf = [0; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn a_relative_socket_path_is_refused() {
        assert!(send("notify.sock", "READY=1").is_err());
    }
}
