//! Handing an open descriptor to another process over a unix socket (SCM_RIGHTS): the exec helper gives the
//! agent the master of the pty it made inside the container.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// Sends `fd` (and one byte, so the message is never empty) over `sock`.
pub fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(b"F")];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)?;
    Ok(())
}

/// Receives one descriptor sent by [`send_fd`]; blocks (within the socket's read timeout). End of stream
/// before a descriptor arrives is `UnexpectedEof`.
pub fn recv_fd(sock: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut received = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            received.extend(fds);
        }
    }
    let mut owned: Vec<OwnedFd> = received
        .into_iter()
        // SAFETY: each descriptor was just installed in this process by the kernel for this SCM_RIGHTS message
        // (with close-on-exec); nothing else knows its number, so taking ownership of it is sound and it is
        // closed exactly once, when the OwnedFd drops.
        .map(|raw| unsafe { OwnedFd::from_raw_fd(raw) })
        .collect();
    if owned.is_empty() {
        let kind = if msg.bytes == 0 {
            std::io::ErrorKind::UnexpectedEof
        } else {
            std::io::ErrorKind::InvalidData
        };
        return Err(std::io::Error::new(kind, "no descriptor in the message"));
    }
    // Anything beyond the first is closed as it drops.
    Ok(owned.swap_remove(0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn a_descriptor_crosses_a_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"through the socket").unwrap();
        send_fd(a.as_fd(), file.as_fd()).unwrap();
        let got = recv_fd(b.as_fd()).unwrap();
        let mut same = std::fs::File::from(got);
        same.rewind().unwrap();
        let mut text = String::new();
        same.read_to_string(&mut text).unwrap();
        assert_eq!(text, "through the socket");
    }

    #[test]
    fn a_closed_socket_is_end_of_stream() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        assert_eq!(
            recv_fd(b.as_fd()).unwrap_err().kind(),
            std::io::ErrorKind::UnexpectedEof
        );
    }
}
