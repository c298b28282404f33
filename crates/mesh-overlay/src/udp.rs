//! The host's UDP socket: batched receive (recvmmsg, UDP GRO) and batched send (sendmmsg,
//! UDP GSO) into buffers allocated once.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

/// Socket buffer size asked for, both directions.
pub const SOCKET_BUFFER: usize = 8 << 20;
/// Largest UDP payload over IPv4.
pub const MAX_UDP_PAYLOAD: usize = 65_507;
/// Most segments the overlay puts in one GSO send.
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Most messages per sendmmsg call.
const MAX_MMSG: usize = 64;

/// Binds the overlay socket on `0.0.0.0:port` in the calling thread's network namespace,
/// with large buffers and UDP GRO when the kernel has it. Returns the socket and whether GRO
/// is on.
pub fn bind(port: u16) -> io::Result<(Socket, bool)> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
    set_buffer(&s, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF);
    set_buffer(&s, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF);
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())?;
    let gro = setsockopt_int(s.as_raw_fd(), libc::SOL_UDP, libc::UDP_GRO, 1).is_ok();
    Ok((s, gro))
}

fn set_buffer(s: &Socket, force: libc::c_int, plain: libc::c_int) {
    let size = SOCKET_BUFFER as libc::c_int;
    if setsockopt_int(s.as_raw_fd(), libc::SOL_SOCKET, force, size).is_err()
        && let Err(e) = setsockopt_int(s.as_raw_fd(), libc::SOL_SOCKET, plain, size)
    {
        tracing::warn!(error = %e, "cannot size the overlay socket's buffer");
    }
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A latch that wakes every thread polling it, once set (an eventfd that is never drained).
pub struct Waker(OwnedFd);

impl Waker {
    /// A new, unset latch.
    pub fn new() -> io::Result<Waker> {
        // SAFETY: eventfd returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor owned by nobody else.
        Ok(Waker(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Sets the latch.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Whether the latch is set.
    pub fn is_set(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n > 0
    }

    /// Waits up to `d` for the latch; true if it is set.
    pub fn wait_timeout(&self, d: std::time::Duration) -> bool {
        let mut p = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(d.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one live pollfd.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        n > 0
    }

    /// Waits until `fd` is ready for `events` (true) or the latch is set (false).
    pub fn wait(&self, fd: RawFd, events: libc::c_short) -> io::Result<bool> {
        let mut fds = [
            libc::pollfd {
                fd,
                events,
                revents: 0,
            },
            libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            // SAFETY: two live pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if fds[1].revents != 0 {
                return Ok(false);
            }
            if fds[0].revents != 0 {
                return Ok(true);
            }
        }
    }
}

fn sockaddr_of(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn addr_of(s: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(s.sin_addr.s_addr)),
        u16::from_be(s.sin_port),
    )
}

/// Control-message space for one `u16`/`i32` value, aligned for `cmsghdr`.
type CmsgBuf = [u64; 4];

/// Received datagrams, `n` buffers of `size` bytes, reused for every call.
pub struct RecvBatch {
    bufs: Vec<Box<[u8]>>,
    addrs: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    cmsgs: Vec<CmsgBuf>,
    lens: Vec<usize>,
    segs: Vec<usize>,
    from: Vec<SocketAddrV4>,
}

impl RecvBatch {
    /// `n` buffers of `size` bytes each (64 KiB when UDP GRO is on).
    pub fn new(n: usize, size: usize) -> RecvBatch {
        RecvBatch {
            bufs: (0..n).map(|_| vec![0u8; size].into_boxed_slice()).collect(),
            // SAFETY: all-zero is a valid value of these plain C structs.
            addrs: vec![unsafe { mem::zeroed() }; n],
            // SAFETY: as above.
            iovs: vec![unsafe { mem::zeroed() }; n],
            // SAFETY: as above.
            hdrs: vec![unsafe { mem::zeroed() }; n],
            cmsgs: vec![[0u64; 4]; n],
            lens: vec![0; n],
            segs: vec![0; n],
            from: vec![SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0); n],
        }
    }

    /// Receives what is queued without blocking; `WouldBlock` when nothing is.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.bufs.len();
        for i in 0..n {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: self.bufs[i].len(),
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.cmsgs[i].as_mut_ptr().cast();
            h.msg_controllen = mem::size_of::<CmsgBuf>();
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers owned by self, sized as declared.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let r = r as usize;
        for i in 0..r {
            let len = self.hdrs[i].msg_len as usize;
            self.lens[i] = len;
            self.from[i] = addr_of(&self.addrs[i]);
            self.segs[i] = gro_segment(&self.hdrs[i].msg_hdr).unwrap_or(len).max(1);
        }
        Ok(r)
    }

    /// Datagram `i` of the last receive: its bytes (several datagrams of `segment` bytes each,
    /// the last maybe shorter, when GRO merged them), its sender and its segment size.
    pub fn get(&self, i: usize) -> (&[u8], SocketAddrV4, usize) {
        (&self.bufs[i][..self.lens[i]], self.from[i], self.segs[i])
    }
}

fn gro_segment(h: &libc::msghdr) -> Option<usize> {
    // SAFETY: walks the control buffer the kernel filled, within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let p = libc::CMSG_DATA(c).cast::<libc::c_int>();
                return usize::try_from(p.read_unaligned()).ok();
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// A run of packets sent with one message: `count` packets from `start`, all `segment` bytes
/// long except maybe the last, to one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    /// Index of the first packet.
    pub start: usize,
    /// Number of packets.
    pub count: usize,
    /// Length of every packet but the last.
    pub segment: usize,
    /// Total bytes.
    pub bytes: usize,
}

/// Splits consecutive packets (`(len, destination)`) into GSO groups: same destination, equal
/// lengths (the last of a group may be shorter), at most `max_segments` packets and
/// `max_bytes` bytes each. With `gso` off every packet is its own group.
pub fn gso_groups(
    pkts: &[(usize, SocketAddrV4)],
    gso: bool,
    max_segments: usize,
    max_bytes: usize,
    out: &mut Vec<Group>,
) {
    out.clear();
    let mut i = 0;
    while i < pkts.len() {
        let (seg, dst) = pkts[i];
        let mut g = Group {
            start: i,
            count: 1,
            segment: seg,
            bytes: seg,
        };
        i += 1;
        if gso {
            while i < pkts.len() && g.count < max_segments {
                let (len, d) = pkts[i];
                if d != dst || len > seg || g.bytes + len > max_bytes {
                    break;
                }
                g.count += 1;
                g.bytes += len;
                i += 1;
                if len < seg {
                    // A shorter packet ends the group.
                    break;
                }
            }
        }
        out.push(g);
    }
}

/// Packets to send, packed one after another in one buffer, and the scratch space of the
/// sendmmsg call that sends them.
pub struct SendBatch {
    buf: Box<[u8]>,
    used: usize,
    pkts: Vec<(usize, SocketAddrV4)>,
    groups: Vec<Group>,
    addrs: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    cmsgs: Vec<CmsgBuf>,
    gso: bool,
    /// Packets handed to the kernel.
    pub sent: u64,
    /// Messages handed to the kernel (a GSO message carries several packets).
    pub messages: u64,
    /// Packets the kernel refused.
    pub failed: u64,
}

impl SendBatch {
    /// A batch holding up to `bytes` bytes of packets; `gso` asks for UDP GSO.
    pub fn new(bytes: usize, gso: bool) -> SendBatch {
        SendBatch {
            buf: vec![0u8; bytes].into_boxed_slice(),
            used: 0,
            pkts: Vec::with_capacity(1024),
            groups: Vec::with_capacity(1024),
            // SAFETY: all-zero is a valid value of these plain C structs.
            addrs: vec![unsafe { mem::zeroed() }; MAX_MMSG],
            // SAFETY: as above.
            iovs: vec![unsafe { mem::zeroed() }; MAX_MMSG],
            // SAFETY: as above.
            hdrs: vec![unsafe { mem::zeroed() }; MAX_MMSG],
            cmsgs: vec![[0u64; 4]; MAX_MMSG],
            gso,
            sent: 0,
            messages: 0,
            failed: 0,
        }
    }

    /// Bytes waiting to be sent.
    pub fn pending(&self) -> usize {
        self.used
    }

    /// Free bytes.
    pub fn room(&self) -> usize {
        self.buf.len() - self.used
    }

    /// Whether no packet waits.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.pkts.is_empty()
    }

    /// The free space, to write the next packet into; then [`SendBatch::commit`] it.
    pub fn space(&mut self) -> &mut [u8] {
        &mut self.buf[self.used..]
    }

    /// Queues the `len` bytes just written at the start of [`SendBatch::space`] for `dst`.
    pub fn commit(&mut self, len: usize, dst: SocketAddrV4) {
        let len = len.min(self.room());
        self.pkts.push((len, dst));
        self.used += len;
    }

    /// Copies `data` in and queues it for `dst`; false if there is no room.
    pub fn push(&mut self, data: &[u8], dst: SocketAddrV4) -> bool {
        if data.len() > self.room() {
            return false;
        }
        self.space()[..data.len()].copy_from_slice(data);
        self.commit(data.len(), dst);
        true
    }

    /// Sends every queued packet (blocking while the socket buffer is full) and empties the
    /// batch. Packets the kernel refuses are counted and dropped.
    pub fn flush(&mut self, fd: RawFd) {
        if self.pkts.is_empty() {
            return;
        }
        gso_groups(
            &self.pkts,
            self.gso,
            MAX_GSO_SEGMENTS,
            MAX_UDP_PAYLOAD,
            &mut self.groups,
        );
        // Byte offset of every group.
        let mut g = 0;
        let mut off = 0;
        let mut retries = 0u32;
        while g < self.groups.len() {
            let chunk = (self.groups.len() - g).min(MAX_MMSG);
            let mut o = off;
            for k in 0..chunk {
                let gr = self.groups[g + k];
                self.addrs[k] = sockaddr_of(self.pkts[gr.start].1);
                self.iovs[k] = libc::iovec {
                    iov_base: self.buf[o..].as_mut_ptr().cast(),
                    iov_len: gr.bytes,
                };
                o += gr.bytes;
                let h = &mut self.hdrs[k].msg_hdr;
                h.msg_name = (&mut self.addrs[k] as *mut libc::sockaddr_in).cast();
                h.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                h.msg_iov = &mut self.iovs[k];
                h.msg_iovlen = 1;
                h.msg_flags = 0;
                if gr.count > 1 {
                    h.msg_control = self.cmsgs[k].as_mut_ptr().cast();
                    // SAFETY: CMSG_SPACE is a pure computation.
                    h.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as usize;
                    // SAFETY: the control buffer is 32 aligned bytes, enough for one u16 cmsg.
                    unsafe {
                        let c = libc::CMSG_FIRSTHDR(h);
                        (*c).cmsg_level = libc::SOL_UDP;
                        (*c).cmsg_type = libc::UDP_SEGMENT;
                        (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
                        libc::CMSG_DATA(c)
                            .cast::<u16>()
                            .write_unaligned(gr.segment as u16);
                    }
                } else {
                    h.msg_control = std::ptr::null_mut();
                    h.msg_controllen = 0;
                }
            }
            // SAFETY: headers point at live buffers of self, lengths as declared.
            let r = unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), chunk as libc::c_uint, 0) };
            if r > 0 {
                let r = r as usize;
                for k in 0..r {
                    let gr = self.groups[g + k];
                    off += gr.bytes;
                    self.sent += gr.count as u64;
                    self.messages += 1;
                }
                g += r;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) if retries < 1000 => {
                    retries += 1;
                    std::thread::yield_now();
                    continue;
                }
                Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::EMSGSIZE)
                    if self.gso && self.groups[g].count > 1 =>
                {
                    tracing::info!(error = %e, "UDP GSO refused; sending packets one by one");
                    self.gso = false;
                    // Split the remaining groups into single packets.
                    let first = self.groups[g].start;
                    let mut rest = Vec::new();
                    gso_groups(&self.pkts[first..], false, 1, MAX_UDP_PAYLOAD, &mut rest);
                    self.groups.truncate(g);
                    self.groups.extend(rest.into_iter().map(|mut r| {
                        r.start += first;
                        r
                    }));
                }
                _ => {
                    let gr = self.groups[g];
                    tracing::debug!(error = %e, to = %self.pkts[gr.start].1, "overlay send failed");
                    self.failed += gr.count as u64;
                    off += gr.bytes;
                    g += 1;
                }
            }
        }
        self.pkts.clear();
        self.used = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), port)
    }

    fn groups(pkts: &[(usize, SocketAddrV4)], gso: bool, segs: usize, bytes: usize) -> Vec<Group> {
        let mut out = Vec::new();
        gso_groups(pkts, gso, segs, bytes, &mut out);
        out
    }

    #[test]
    fn equal_packets_to_one_peer_make_one_group() {
        let p = vec![(1400, a(1)); 5];
        assert_eq!(
            groups(&p, true, 64, MAX_UDP_PAYLOAD),
            vec![Group {
                start: 0,
                count: 5,
                segment: 1400,
                bytes: 7000
            }]
        );
        // Without GSO: one each.
        assert_eq!(groups(&p, false, 64, MAX_UDP_PAYLOAD).len(), 5);
    }

    #[test]
    fn a_shorter_packet_ends_a_group_and_a_longer_one_starts_one() {
        let p = vec![
            (1400, a(1)),
            (1400, a(1)),
            (600, a(1)),
            (1400, a(1)),
            (1500, a(1)),
        ];
        let g = groups(&p, true, 64, MAX_UDP_PAYLOAD);
        assert_eq!(
            g,
            vec![
                Group {
                    start: 0,
                    count: 3,
                    segment: 1400,
                    bytes: 3400
                },
                Group {
                    start: 3,
                    count: 1,
                    segment: 1400,
                    bytes: 1400
                },
                Group {
                    start: 4,
                    count: 1,
                    segment: 1500,
                    bytes: 1500
                },
            ]
        );
    }

    #[test]
    fn destinations_and_limits_split_groups() {
        let p = vec![(100, a(1)), (100, a(2)), (100, a(2)), (100, a(1))];
        let g = groups(&p, true, 64, MAX_UDP_PAYLOAD);
        assert_eq!(g.iter().map(|g| g.count).collect::<Vec<_>>(), vec![1, 2, 1]);
        let p = vec![(1000, a(1)); 10];
        let g = groups(&p, true, 4, MAX_UDP_PAYLOAD);
        assert_eq!(g.iter().map(|g| g.count).collect::<Vec<_>>(), vec![4, 4, 2]);
        let g = groups(&p, true, 64, 3500);
        assert_eq!(
            g.iter().map(|g| g.count).collect::<Vec<_>>(),
            vec![3, 3, 3, 1]
        );
        // Every packet is in exactly one group, in order.
        let total: usize = g.iter().map(|g| g.count).sum();
        assert_eq!(total, 10);
        assert!(g.windows(2).all(|w| w[0].start + w[0].count == w[1].start));
    }

    #[test]
    fn loopback_batches_arrive_whole() {
        let (rx, _) = bind_loopback();
        let (tx, _) = bind_loopback();
        let to = match rx.local_addr().unwrap().as_socket() {
            Some(std::net::SocketAddr::V4(v4)) => v4,
            other => panic!("{other:?}"),
        };
        let mut batch = SendBatch::new(1 << 20, true);
        for i in 0..100u32 {
            let mut p = vec![(i % 251) as u8; 1000];
            p[..4].copy_from_slice(&i.to_le_bytes());
            assert!(batch.push(&p, to));
        }
        // A short last packet, and one of another size.
        batch.push(&[7u8; 10], to);
        batch.flush(tx.as_raw_fd());
        assert_eq!(batch.sent, 101);
        assert!(batch.is_empty());

        let mut got = Vec::new();
        let mut rb = RecvBatch::new(16, 65536);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while got.len() < 101 && std::time::Instant::now() < deadline {
            match rb.recv(rx.as_raw_fd()) {
                Ok(n) => {
                    for i in 0..n {
                        let (data, _, seg) = rb.get(i);
                        for d in data.chunks(seg) {
                            got.push(d.to_vec());
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got.len(), 101);
        for (i, p) in got.iter().take(100).enumerate() {
            assert_eq!(p.len(), 1000);
            assert_eq!(u32::from_le_bytes(p[..4].try_into().unwrap()), i as u32);
        }
        assert_eq!(got[100], vec![7u8; 10]);
    }

    fn bind_loopback() -> (Socket, bool) {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.bind(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0).into())
            .unwrap();
        let gro = setsockopt_int(s.as_raw_fd(), libc::SOL_UDP, libc::UDP_GRO, 1).is_ok();
        (s, gro)
    }

    #[test]
    fn waker_wakes_pollers() {
        let w = Waker::new().unwrap();
        let (s, _) = bind_loopback();
        assert!(!w.is_set());
        w.wake();
        assert!(w.is_set());
        assert!(!w.wait(s.as_raw_fd(), libc::POLLIN).unwrap());
    }
}
