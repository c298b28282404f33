//! Forwarding to the host's resolvers: the query goes out as the task sent it (under a new
//! random ID, from a new socket on a random port), the answer comes back as the upstream sent
//! it, and is kept in the cache for its TTL.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, timeout_at};

use crate::answer::{Answerer, Transport};
use crate::cache;
use crate::wire;

/// The host's resolvers and how long to wait for them.
pub(crate) struct Forwarder {
    pub(crate) upstreams: Vec<SocketAddr>,
    pub(crate) timeout: Duration,
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "no answer in time")
}

/// The answer to `msg` (a query the table does not answer) from the upstreams: the first
/// usable one, or SERVFAIL when none answers in time. `None` if `msg` is not a query.
pub(crate) async fn forward(
    ans: &Answerer,
    fwd: &Forwarder,
    msg: &[u8],
    transport: Transport,
) -> Option<Vec<u8>> {
    let q = wire::parse_query(msg).ok()?;
    let id: u16 = rand::random();
    let mut req = msg.to_vec();
    wire::set_id(&mut req, id);
    let question = q.question(msg);
    let deadline = Instant::now() + fwd.timeout;
    let n = fwd.upstreams.len();
    let mut answer: Option<Vec<u8>> = None;
    for (i, &upstream) in fwd.upstreams.iter().enumerate() {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        // Each upstream left gets an equal share of the time left.
        let attempt_deadline = now + (deadline - now) / u32::try_from(n - i).unwrap_or(1);
        let result = match transport {
            Transport::Udp => exchange_udp(upstream, &req, id, question, attempt_deadline).await,
            Transport::Tcp => exchange_tcp(upstream, &req, id, question, attempt_deadline).await,
        };
        match result {
            Ok(resp) => {
                let rcode = resp[3] & 0x0F;
                answer = Some(resp);
                if !matches!(
                    rcode,
                    wire::RCODE_SERVFAIL | wire::RCODE_REFUSED | wire::RCODE_NOTIMP
                ) {
                    break;
                }
            }
            Err(e) => tracing::debug!(%upstream, error = %e, "upstream resolver did not answer"),
        }
    }
    let mut out = Vec::new();
    match answer {
        Some(mut resp) => {
            if let Some(info) = wire::scan_response(&resp) {
                let mut key = [0; cache::MAX_KEY_LEN];
                let key = cache::key(&q, &mut key);
                ans.cache
                    .insert(key, &resp, info, std::time::Instant::now());
            }
            wire::set_id(&mut resp, q.id);
            if resp.len() > ans.limit(&q, transport) {
                let rcode = resp[3] & 0x0F;
                wire::write_empty(&mut out, &q, msg, rcode, false, true);
            } else {
                out = resp;
            }
        }
        None => wire::write_empty(&mut out, &q, msg, wire::RCODE_SERVFAIL, false, false),
    }
    Some(out)
}

async fn exchange_udp(
    upstream: SocketAddr,
    req: &[u8],
    id: u16,
    question: &[u8],
    deadline: Instant,
) -> io::Result<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).await?;
    sock.connect(upstream).await?;
    sock.send(req).await?;
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    loop {
        let n = timeout_at(deadline, sock.recv(&mut buf))
            .await
            .map_err(|_| timed_out())??;
        // Anything else on this port is ignored, as a spoofing attempt would be.
        if wire::answers(&buf[..n], id, question) {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn exchange_tcp(
    upstream: SocketAddr,
    req: &[u8],
    id: u16,
    question: &[u8],
    deadline: Instant,
) -> io::Result<Vec<u8>> {
    let mut stream = timeout_at(deadline, TcpStream::connect(upstream))
        .await
        .map_err(|_| timed_out())??;
    let len = u16::try_from(req.len()).map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidInput, "query longer than 65535 bytes")
    })?;
    let mut frame = Vec::with_capacity(req.len() + 2);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(req);
    timeout_at(deadline, stream.write_all(&frame))
        .await
        .map_err(|_| timed_out())??;
    let len = timeout_at(deadline, stream.read_u16())
        .await
        .map_err(|_| timed_out())??;
    let mut buf = vec![0u8; usize::from(len)];
    timeout_at(deadline, stream.read_exact(&mut buf))
        .await
        .map_err(|_| timed_out())??;
    if wire::answers(&buf, id, question) {
        Ok(buf)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "upstream answered another question",
        ))
    }
}
