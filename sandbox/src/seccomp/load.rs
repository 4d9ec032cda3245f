//! The one seccomp(2) call. Its only `unsafe` block passes a pointer to the program to the kernel.

use nix::errno::Errno;
use seccompiler::sock_filter;

/// `seccomp(SECCOMP_SET_MODE_FILTER, flags, &prog)` for `filter` on the calling thread.
/// Makes no allocation, so it is safe to call between fork and execve.
pub(super) fn set_mode_filter(filter: &[sock_filter], flags: libc::c_ulong) -> Result<(), Errno> {
    // compile() never makes a program longer than 4096 instructions; the check keeps the cast honest.
    let len = u16::try_from(filter.len()).map_err(|_| Errno::EINVAL)?;
    let prog = libc::sock_fprog {
        len,
        // seccompiler's sock_filter is #[repr(C)] with libc's fields in libc's order
        // (u16 code, u8 jt, u8 jf, u32 k), so the two types have one layout.
        filter: filter.as_ptr().cast::<libc::sock_filter>().cast_mut(),
    };
    // SAFETY: `prog` points at `len` initialised instructions that outlive the call; the kernel
    // only reads them (it copies the program) and never writes through the pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &prog as *const libc::sock_fprog,
        )
    };
    Errno::result(rc).map(drop)
}
