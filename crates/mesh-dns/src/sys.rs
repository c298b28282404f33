//! Batched datagram I/O: up to [`BATCH`] queries read with one `recvmmsg(2)` and their answers
//! sent with one `sendmmsg(2)`. One [`Batch`] per serving thread holds every buffer, so an
//! endpoint costs no buffer memory of its own.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::ptr;

/// Datagrams read per system call, at most.
pub(crate) const BATCH: usize = 32;
/// Longest query read; a longer one is dropped (we advertise 1232 bytes).
const RECV_BUF: usize = 2048;

/// Buffers and headers for one batch of queries and their answers.
pub(crate) struct Batch {
    bufs: Vec<u8>,
    lens: [usize; BATCH],
    truncated: [bool; BATCH],
    addrs: [libc::sockaddr_storage; BATCH],
    addr_lens: [libc::socklen_t; BATCH],
    iovs: [libc::iovec; BATCH],
    hdrs: [libc::mmsghdr; BATCH],
    out: Vec<Vec<u8>>,
    /// Slots with an answer to send, in order, and how many of them are sent.
    pending: Vec<usize>,
    sent: usize,
}

impl Batch {
    /// Empty buffers.
    pub(crate) fn new() -> Box<Self> {
        Box::new(Batch {
            bufs: vec![0; RECV_BUF * BATCH],
            lens: [0; BATCH],
            truncated: [false; BATCH],
            // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs for which all
            // zeroes is a valid value (null pointers, zero lengths).
            addrs: unsafe { mem::zeroed() },
            addr_lens: [0; BATCH],
            iovs: unsafe { mem::zeroed() },
            hdrs: unsafe { mem::zeroed() },
            out: (0..BATCH).map(|_| Vec::with_capacity(512)).collect(),
            pending: Vec::with_capacity(BATCH),
            sent: 0,
        })
    }

    /// Reads up to [`BATCH`] datagrams from the non-blocking socket `fd`; returns how many.
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.pending.clear();
        self.sent = 0;
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i * RECV_BUF..].as_mut_ptr().cast(),
                iov_len: RECV_BUF,
            };
            let h = &mut self.hdrs[i];
            h.msg_len = 0;
            h.msg_hdr.msg_name = ptr::from_mut(&mut self.addrs[i]).cast();
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = ptr::from_mut(&mut self.iovs[i]);
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
        }
        // SAFETY: every header points at buffers owned by `self` that outlive the call, with
        // their true lengths; the kernel writes at most that much into each.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            let h = &self.hdrs[i];
            self.lens[i] = (h.msg_len as usize).min(RECV_BUF);
            self.truncated[i] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.addr_lens[i] = h.msg_hdr.msg_namelen;
        }
        Ok(n)
    }

    /// Whether datagram `i` was longer than the buffer (and so is cut).
    pub(crate) fn is_truncated(&self, i: usize) -> bool {
        self.truncated[i]
    }

    /// Datagram `i` and the buffer for its answer.
    pub(crate) fn slot(&mut self, i: usize) -> (&[u8], &mut Vec<u8>) {
        (
            &self.bufs[i * RECV_BUF..i * RECV_BUF + self.lens[i]],
            &mut self.out[i],
        )
    }

    /// The sender of datagram `i`.
    pub(crate) fn peer(&self, i: usize) -> Option<SocketAddr> {
        sockaddr_to_std(&self.addrs[i], self.addr_lens[i])
    }

    /// Marks the answer in slot `i` to be sent.
    pub(crate) fn reply(&mut self, i: usize) {
        self.pending.push(i);
    }

    /// Sends the marked answers on the non-blocking socket `fd`. `WouldBlock` if the socket
    /// is full; what is left can then be taken with [`Batch::take_unsent`]. Other errors
    /// concern one datagram (its peer unreachable, say): it is skipped.
    pub(crate) fn send(&mut self, fd: RawFd) -> io::Result<()> {
        while self.sent < self.pending.len() {
            let todo = &self.pending[self.sent..];
            for (k, &i) in todo.iter().enumerate() {
                self.iovs[k] = libc::iovec {
                    iov_base: self.out[i].as_mut_ptr().cast(),
                    iov_len: self.out[i].len(),
                };
                let h = &mut self.hdrs[k];
                h.msg_len = 0;
                h.msg_hdr.msg_name = ptr::from_mut(&mut self.addrs[i]).cast();
                h.msg_hdr.msg_namelen = self.addr_lens[i];
                h.msg_hdr.msg_iov = ptr::from_mut(&mut self.iovs[k]);
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_control = ptr::null_mut();
                h.msg_hdr.msg_controllen = 0;
                h.msg_hdr.msg_flags = 0;
            }
            // SAFETY: the first `todo.len()` headers point at buffers and addresses owned by
            // `self`, with their true lengths; the kernel only reads them.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs.as_mut_ptr(),
                    todo.len() as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => return Err(e),
                    io::ErrorKind::Interrupted => continue,
                    _ => {
                        tracing::debug!(error = %e, peer = ?self.peer(todo[0]), "DNS answer not sent");
                        self.sent += 1;
                    }
                }
            } else {
                self.sent += n as usize;
            }
        }
        Ok(())
    }

    /// The marked answers not sent yet, with their peers.
    pub(crate) fn take_unsent(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        let unsent = self.pending[self.sent..]
            .iter()
            .filter_map(|&i| Some((self.peer(i)?, self.out[i].clone())))
            .collect();
        self.sent = self.pending.len();
        unsent
    }
}

fn sockaddr_to_std(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(ss.ss_family) {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and sockaddr_storage is
            // large and aligned enough for every address type.
            let sin = unsafe { &*ptr::from_ref(ss).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*ptr::from_ref(ss).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}
