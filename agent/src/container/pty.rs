//! The master side of an exec's pty, read and written without blocking a thread (tokio `AsyncFd` over the
//! non-blocking descriptor the exec helper handed over), from several tasks at once (`&self`).

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use tokio::io::unix::AsyncFd;

/// A pty master.
#[derive(Debug)]
pub struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

impl PtyMaster {
    pub fn new(fd: OwnedFd) -> io::Result<PtyMaster> {
        let flags = fcntl(&fd, FcntlArg::F_GETFL)?;
        fcntl(
            &fd,
            FcntlArg::F_SETFL(OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK),
        )?;
        // `AsyncFd::new` is deprecated because an arbitrary `AsRawFd` may close or swap its descriptor behind
        // tokio's back; an `OwnedFd` cannot (it owns the descriptor until the AsyncFd drops it), which is the
        // whole contract of the `unsafe` replacement, so the safe constructor is sound here.
        #[allow(deprecated)]
        let fd = AsyncFd::new(fd)?;
        Ok(PtyMaster { fd })
    }

    /// Sets the terminal's size (the command gets SIGWINCH).
    pub fn resize(&self, width: u16, height: u16) -> io::Result<()> {
        crius_sandbox::pty::set_window_size(self.fd.get_ref().as_fd(), width, height)?;
        Ok(())
    }
}

impl PtyMaster {
    /// Reads what the terminal has; 0 once every slave descriptor is closed (the command and what it
    /// started are gone: EIO from the master is that end, not an error).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(io::Error::from)) {
                Ok(Err(e)) if e.raw_os_error() == Some(Errno::EIO as i32) => return Ok(0),
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` to the terminal (the command's input).
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_cross_the_pty_and_the_end_is_eof() {
        let pty = nix::pty::openpty(None, None).unwrap();
        let master = PtyMaster::new(pty.master).unwrap();
        master.resize(100, 30).unwrap();
        assert_eq!(
            crius_sandbox::pty::window_size(pty.slave.as_fd()).unwrap(),
            (100, 30)
        );
        // Raw mode on the slave would be the command's business; in cooked mode a line is echoed back.
        master.write_all(b"hi\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = master.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"hi"), "{:?}", &buf[..n]);
        drop(pty.slave);
        while master.read(&mut buf).await.unwrap() > 0 {}
    }
}
