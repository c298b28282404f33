//! Socket setup: listeners, transparent sockets, backend sockets, and the ancillary data of
//! UDP (the address a datagram was sent to).

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg, sendmsg,
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// `IP_BIND_ADDRESS_NO_PORT` (linux/in.h): bind an address now, choose the port at connect
/// time (so many connections can share a source address).
const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` lives for the call and its exact size is passed; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn v4(a: SocketAddrV4) -> SockAddr {
    SockAddr::from(SocketAddr::V4(a))
}

/// A non-blocking TCP listener on `addr` (SO_REUSEADDR; IP_TRANSPARENT when `transparent`, to
/// take connections to any address that a TPROXY rule steers to it).
pub(crate) fn tcp_listener(
    addr: SocketAddrV4,
    backlog: u32,
    transparent: bool,
) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(
        Domain::IPV4,
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    if transparent {
        s.set_ip_transparent_v4(true)?;
    }
    s.bind(&v4(addr))?;
    s.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(s.into())
}

/// A non-blocking UDP socket bound to `addr` that reports each datagram's destination
/// address (IP_PKTINFO) — the published port's listener.
pub(crate) fn udp_listener(addr: SocketAddrV4) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(
        Domain::IPV4,
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    setsockopt_int(s.as_raw_fd(), libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
    s.bind(&v4(addr))?;
    Ok(s.into())
}

/// A non-blocking transparent UDP socket bound to `addr` that reports each datagram's
/// original destination (IP_RECVORIGDSTADDR) — the VIP listener a TPROXY rule steers to.
pub(crate) fn udp_transparent_listener(addr: SocketAddrV4) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(
        Domain::IPV4,
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    s.set_ip_transparent_v4(true)?;
    setsockopt_int(s.as_raw_fd(), libc::IPPROTO_IP, libc::IP_RECVORIGDSTADDR, 1)?;
    s.bind(&v4(addr))?;
    Ok(s.into())
}

/// A non-blocking transparent UDP socket bound to `local` (a VIP and port, shared by every
/// flow to it) and connected to `peer`: replies of one flow go out from the VIP, and the
/// flow's next datagrams come to it.
pub(crate) fn udp_transparent_flow(
    local: SocketAddrV4,
    peer: SocketAddrV4,
) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(
        Domain::IPV4,
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    s.set_ip_transparent_v4(true)?;
    s.set_reuse_address(true)?;
    s.bind(&v4(local))?;
    s.connect(&v4(peer))?;
    Ok(s.into())
}

/// A non-blocking UDP socket bound to `source` (port chosen by the kernel) and connected to
/// `backend`.
pub(crate) fn udp_backend(
    source: Option<Ipv4Addr>,
    backend: SocketAddrV4,
) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(
        Domain::IPV4,
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    if let Some(src) = source {
        s.bind(&v4(SocketAddrV4::new(src, 0)))?;
    }
    s.connect(&v4(backend))?;
    Ok(s.into())
}

/// A non-blocking TCP socket for a backend connection, bound to `source` when given (its port
/// chosen at connect time), with TCP_NODELAY.
pub(crate) fn tcp_backend(source: Option<Ipv4Addr>) -> io::Result<std::net::TcpStream> {
    let s = Socket::new(
        Domain::IPV4,
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_tcp_nodelay(true)?;
    if let Some(src) = source {
        setsockopt_int(s.as_raw_fd(), libc::IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)?;
        s.bind(&v4(SocketAddrV4::new(src, 0)))?;
    }
    Ok(s.into())
}

/// A datagram received with its addresses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received {
    /// Its length in the buffer.
    pub(crate) len: usize,
    /// Who sent it.
    pub(crate) from: SocketAddrV4,
    /// The address it was sent to (IP_PKTINFO / IP_RECVORIGDSTADDR), when reported.
    pub(crate) to: Option<SocketAddrV4>,
}

fn sockaddr_in_to_v4(sa: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
        u16::from_be(sa.sin_port),
    )
}

/// One recvmsg(2) on a non-blocking UDP socket, reading the destination address from the
/// ancillary data (the port is `local_port` for IP_PKTINFO, the original one for
/// IP_RECVORIGDSTADDR).
pub(crate) fn recv_with_dst(fd: RawFd, buf: &mut [u8], local_port: u16) -> io::Result<Received> {
    let mut cmsg = nix::cmsg_space!(libc::in_pktinfo, libc::sockaddr_in);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrIn>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)
        .map_err(io::Error::from)?;
    let from = msg
        .address
        .map(|a| SocketAddrV4::new(a.ip(), a.port()))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "datagram without a source address",
            )
        })?;
    let mut to = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::Ipv4OrigDstAddr(sa) => to = Some(sockaddr_in_to_v4(&sa)),
                ControlMessageOwned::Ipv4PacketInfo(pi) if to.is_none() => {
                    to = Some(SocketAddrV4::new(
                        Ipv4Addr::from(u32::from_be(pi.ipi_addr.s_addr)),
                        local_port,
                    ));
                }
                _ => {}
            }
        }
    }
    Ok(Received {
        len: msg.bytes,
        from,
        to,
    })
}

/// One sendmsg(2) of `data` to `to` from the local address `from` (IP_PKTINFO), so that a
/// reply leaves from the address the client sent to.
pub(crate) fn send_from(
    fd: RawFd,
    data: &[u8],
    to: SocketAddrV4,
    from: Option<Ipv4Addr>,
) -> io::Result<usize> {
    let dest = SockaddrIn::from(to);
    let iov = [IoSlice::new(data)];
    let pi = from.map(|src| libc::in_pktinfo {
        ipi_ifindex: 0,
        ipi_spec_dst: libc::in_addr {
            s_addr: u32::from(src).to_be(),
        },
        ipi_addr: libc::in_addr { s_addr: 0 },
    });
    let cmsgs: Vec<ControlMessage<'_>> = pi.iter().map(ControlMessage::Ipv4PacketInfo).collect();
    sendmsg(fd, &iov, &cmsgs, MsgFlags::MSG_DONTWAIT, Some(&dest)).map_err(io::Error::from)
}

/// Closes a TCP socket with a reset rather than a FIN (SO_LINGER 0).
pub(crate) fn reset_on_close(fd: &impl std::os::fd::AsFd) {
    let s = socket2::SockRef::from(fd);
    if let Err(e) = s.set_linger(Some(std::time::Duration::ZERO)) {
        tracing::debug!(error = %e, "cannot set SO_LINGER 0");
    }
}
