//! The TCP relay: both directions moved with splice(2) through a pipe each (the bytes never
//! come up to userspace), driven by tokio's readiness. Half-close is passed on: an EOF from
//! one side shuts down the other side's write half, and the other direction goes on.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::sock::reset_on_close;

/// Pipe capacity asked for (the kernel may give less; the default is 64 KiB).
const PIPE_SIZE: libc::c_int = 1 << 20;

/// A pipe both of whose ends are non-blocking, with how many bytes sit in it.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    size: usize,
    held: usize,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded: both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: F_SETPIPE_SZ takes an int and only resizes the pipe; failure is harmless.
        let got = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        let size = if got > 0 {
            usize::try_from(got).unwrap_or(1 << 16)
        } else {
            1 << 16
        };
        Ok(Pipe {
            read,
            write,
            size,
            held: 0,
        })
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call; null offsets mean "the
    // current position", as sockets and pipes require.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n.unsigned_abs())
    }
}

/// Moves bytes from `src` to `dst` until `src` ends (then shuts down `dst`'s write half).
/// Returns how many bytes went through.
async fn one_way(src: &TcpStream, dst: &TcpStream, pipe: &mut Pipe) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        // The pipe is empty here, so an EAGAIN from splice means the socket has nothing.
        src.readable().await?;
        let n = match src.try_io(Interest::READABLE, || {
            splice(src.as_raw_fd(), pipe.write.as_raw_fd(), pipe.size)
        }) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            if let Err(e) = socket2::SockRef::from(dst).shutdown(Shutdown::Write)
                && e.kind() != io::ErrorKind::NotConnected
            {
                return Err(e);
            }
            return Ok(total);
        }
        pipe.held += n;
        total += n as u64;
        while pipe.held > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_raw_fd(), dst.as_raw_fd(), pipe.held)
            }) {
                Ok(m) => pipe.held -= m.min(pipe.held),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Relays `a` ⇄ `b` until both directions have ended. When one direction fails (a reset, a
/// broken pipe), both sockets are closed with a reset. Returns the bytes moved a→b and b→a.
pub(crate) async fn relay(a: TcpStream, b: TcpStream) -> io::Result<(u64, u64)> {
    let mut ab = Pipe::new()?;
    let mut ba = Pipe::new()?;
    let out = tokio::try_join!(one_way(&a, &b, &mut ab), one_way(&b, &a, &mut ba));
    if out.is_err() {
        reset_on_close(&a);
        reset_on_close(&b);
    }
    out
}
