//! Prompt TCP acknowledgements on the broker connection.
//!
//! Why: mosquitto leaves Nagle's algorithm on by default (`set_tcp_nodelay false`), so it holds
//! a small segment back while an earlier one is unacknowledged. The
//! bridge publishes at QoS 1 (command results, states), the broker answers each with a 4-byte
//! PUBACK, and Linux, seeing a request/response pattern, delays its acknowledgement of that
//! PUBACK by up to tens of milliseconds because nothing is sent back to carry it. Every command
//! published to the broker in that window waits: measured, a steady 1 000 commands/s arrived in
//! bursts every ~17 ms (p99 18 ms) instead of one by one (p99 under 2 ms). Setting
//! `TCP_QUICKACK` after a packet that the bridge does not answer sends the pending acknowledgement
//! at once, and the broker's queued segments follow.
//!
//! rumqttc owns the socket and does not expose it, so [`BrokerSocket::find`] identifies it
//! among this process's descriptors: the one TCP socket whose peer port is the broker's (the
//! bridge opens no other TCP connection). More than one candidate (a stale connection not yet
//! closed) means no optimisation for that connection rather than a guess. `TCP_QUICKACK` is not sticky (the kernel re-enters delayed
//! acknowledgements by itself), which is why it is set again after each such packet.
#![allow(unsafe_code)]

use std::os::fd::RawFd;

use nix::sys::socket::{AddressFamily, SockaddrLike, SockaddrStorage, getpeername};

/// The broker connection's socket, valid while the `rumqttc::EventLoop` it was found for lives.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BrokerSocket(RawFd);

impl BrokerSocket {
    /// Finds the connected TCP socket whose peer port is `port`, if exactly one exists.
    pub(crate) fn find(port: u16) -> Option<BrokerSocket> {
        let mut found = None;
        for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<RawFd>().ok())
            else {
                continue;
            };
            let Ok(peer) = getpeername::<SockaddrStorage>(fd) else {
                continue;
            };
            let peer_port = match peer.family() {
                Some(AddressFamily::Inet) => peer.as_sockaddr_in().map(|a| a.port()),
                Some(AddressFamily::Inet6) => peer.as_sockaddr_in6().map(|a| a.port()),
                _ => None,
            };
            if peer_port == Some(port) {
                if found.is_some() {
                    tracing::debug!(port, "several sockets to the broker port; quick acks off");
                    return None;
                }
                found = Some(BrokerSocket(fd));
            }
        }
        found
    }

    /// Sends any delayed acknowledgement now. The caller ignores errors: at worst the
    /// acknowledgement keeps its normal delay.
    pub(crate) fn ack_now(self) -> std::io::Result<()> {
        let on: libc::c_int = 1;
        // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a valid `c_int` on our stack.
        // The descriptor is the broker connection's, which stays open for as long as the event
        // loop that owns it (the caller holds that loop); were it ever a different descriptor,
        // the call could only fail or set TCP_QUICKACK on another TCP socket, both harmless.
        let rc = unsafe {
            libc::setsockopt(
                self.0,
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&raw const on).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn the_one_connection_to_the_port_is_found_and_takes_quick_acks() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        assert!(
            BrokerSocket::find(port).is_none(),
            "a listener is not a connection"
        );
        let first = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let found = BrokerSocket::find(port).expect("our connection is found");
        assert_eq!(found.0, std::os::fd::AsRawFd::as_raw_fd(&first));
        found.ack_now().expect("TCP_QUICKACK is accepted");

        // Two candidates: no guess.
        let _second = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        assert!(BrokerSocket::find(port).is_none());
    }
}
