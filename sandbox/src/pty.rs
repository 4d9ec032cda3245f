//! Terminal window sizes: TIOCSWINSZ and TIOCGWINSZ on a pty, behind safe functions. Setting the size on the
//! master makes the kernel send SIGWINCH to the terminal's foreground process group.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

/// The raw ioctls (nix generates them as `unsafe fn`s taking a descriptor number and a pointer).
mod ioctl {
    nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, libc::winsize);
    nix::ioctl_read_bad!(get_winsize, libc::TIOCGWINSZ, libc::winsize);
}

/// Sets the window size of the terminal `fd` (a pty master or slave) to `width` columns by `height` rows.
pub fn set_window_size(fd: BorrowedFd<'_>, width: u16, height: u16) -> Result<(), Errno> {
    let size = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `struct winsize` through the pointer, which points to a live local of exactly
    // that type for the duration of the call; `fd` is an open descriptor borrowed for the call (a non-terminal
    // only makes the call fail with ENOTTY).
    unsafe { ioctl::set_winsize(fd.as_raw_fd(), &size) }.map(drop)
}

/// The window size of the terminal `fd` as (width, height).
pub fn window_size(fd: BorrowedFd<'_>) -> Result<(u16, u16), Errno> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` through the pointer, which points to a live, writable local
    // of exactly that type for the duration of the call; `fd` is an open descriptor borrowed for the call.
    unsafe { ioctl::get_winsize(fd.as_raw_fd(), &mut size) }?;
    Ok((size.ws_col, size.ws_row))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn a_size_set_on_the_master_is_seen_on_the_slave() {
        let pty = nix::pty::openpty(None, None).unwrap();
        set_window_size(pty.master.as_fd(), 132, 43).unwrap();
        assert_eq!(window_size(pty.slave.as_fd()).unwrap(), (132, 43));
        assert_eq!(window_size(pty.master.as_fd()).unwrap(), (132, 43));
    }

    #[test]
    fn a_file_that_is_no_terminal_is_refused() {
        let f = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(set_window_size(f.as_fd(), 80, 24), Err(Errno::ENOTTY));
    }
}
