//! sd_notify sockets: one Unix datagram socket per program, exported to it as `NOTIFY_SOCKET`.
//!
//! [`NotifySocket::bind`] creates the socket at a path (normally `<dir>/<program>.sock`),
//! [`NotifySocket::recv`] waits for the next datagram and returns the sender's pid (from
//! `SO_PASSCRED` credentials) with the parsed assignments ([`sv_core::notify::parse`]).
//!
//! Who may notify: every program has its own socket, so a datagram on it speaks for that program
//! whoever sent it — systemd's `NotifyAccess=all`. This is deliberate: `systemd-notify --ready`
//! run from a shell script sends from its own short-lived pid, not the program's (unless given
//! `--pid=$$`, in which case the kernel reports that pid as the sender, since systemd-notify runs
//! with the privilege to claim it). The sender pid is returned for logging only.
//!
//! `systemd-notify` (systemd 252) works outside systemd as long as `NOTIFY_SOCKET` is set: it
//! sends `READY=1\nSTATUS=...` and then a separate `BARRIER=1` datagram carrying a pipe fd
//! (`SCM_RIGHTS`), and waits until the receiver closes that fd. [`NotifySocket::recv`] closes
//! every received fd at once, so the barrier completes and fds never leak.
//!
//! Invariants: a stale socket file at the path is replaced, but any other kind of file is left
//! alone and reported as an error; the socket file is mode 0600, owned by the supervisor or, for
//! a program running as another user, by that user (its directory must let that user through);
//! an over-long datagram (more than 4 KiB, systemd's own limit) is dropped, not truncated.

#![forbid(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, RecvMsg, UnixAddr, UnixCredentials, recvmsg, setsockopt, sockopt,
};
use sv_core::notify::{Notify, parse};
use tokio::io::Interest;

/// The largest datagram accepted, as systemd's `NOTIFY_BUFFER_MAX` (PIPE_BUF).
const MAX_DATAGRAM: usize = 4096;
/// File descriptors accepted per datagram (all closed at once); more are closed by the kernel.
const MAX_FDS: usize = 16;

/// A bound sd_notify socket.
#[derive(Debug)]
pub struct NotifySocket {
    sock: tokio::net::UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    /// Binds a datagram socket at `path` (replacing a stale socket file), mode 0600, owned by
    /// `owner` when given. Must be called inside a tokio runtime.
    pub fn bind(path: &Path, owner: Option<u32>) -> io::Result<NotifySocket> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let std_sock = std::os::unix::net::UnixDatagram::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        if let Some(uid) = owner {
            std::os::unix::fs::lchown(path, Some(uid), None)?;
        }
        setsockopt(&std_sock, sockopt::PassCred, &true).map_err(io::Error::from)?;
        std_sock.set_nonblocking(true)?;
        let sock = tokio::net::UnixDatagram::from_std(std_sock)?;
        Ok(NotifySocket {
            sock,
            path: path.to_owned(),
        })
    }

    /// The path the socket is bound at (the value of `NOTIFY_SOCKET`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next datagram: the sender's pid when the kernel reported credentials, and
    /// the assignments understood (possibly none). Over-long datagrams are skipped.
    pub async fn recv(&self) -> io::Result<(Option<i32>, Vec<Notify>)> {
        loop {
            let got = self
                .sock
                .async_io(Interest::READABLE, || self.recv_now())
                .await?;
            if let Some(got) = got {
                return Ok(got);
            }
        }
    }

    /// One non-blocking `recvmsg`; `Ok(None)` for a datagram that was dropped.
    #[allow(clippy::type_complexity)]
    fn recv_now(&self) -> io::Result<Option<(Option<i32>, Vec<Notify>)>> {
        let mut buf = [0u8; MAX_DATAGRAM];
        let mut cmsg = nix::cmsg_space!(UnixCredentials, [std::os::fd::RawFd; MAX_FDS]);
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let msg: RecvMsg<'_, '_, UnixAddr> = recvmsg(
            self.sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            // Received fds must never leak into a child spawned meanwhile.
            MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
        )
        .map_err(io::Error::from)?;
        let mut pid = None;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                match c {
                    ControlMessageOwned::ScmCredentials(cred) => pid = Some(cred.pid()),
                    ControlMessageOwned::ScmRights(fds) => {
                        // Closing releases systemd-notify's BARRIER=1 wait; nothing else is
                        // expected to pass fds (no FDSTORE support).
                        for fd in fds {
                            let _ = nix::unistd::close(fd);
                        }
                    }
                    _ => {}
                }
            }
        }
        let (bytes, truncated) = (msg.bytes, msg.flags.contains(MsgFlags::MSG_TRUNC));
        if truncated {
            tracing::debug!(path = %self.path.display(), "dropping an over-long sd_notify datagram");
            return Ok(None);
        }
        Ok(Some((pid, parse(&buf[..bytes]))))
    }
}
