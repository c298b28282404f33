//! The DNS wire format (RFC 1035, RFC 6891), as far as the resolver needs it: read one query,
//! write one answer, walk a forwarded response. No allocation on the query path: a query is
//! read in place and an answer is written into a buffer the caller reuses.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Length of the fixed header.
pub const HEADER_LEN: usize = 12;
/// Longest name on the wire (RFC 1035 §2.3.4).
pub const MAX_NAME_LEN: usize = 255;
/// Largest UDP answer without EDNS.
pub const PLAIN_UDP_LIMIT: usize = 512;

/// The UDP payload size we advertise in our OPT records: the largest query we read.
pub const ADVERTISED_PAYLOAD: u16 = 1232;

/// Record type A.
pub const TYPE_A: u16 = 1;
/// Record type SOA.
pub const TYPE_SOA: u16 = 6;
/// Record type AAAA.
pub const TYPE_AAAA: u16 = 28;
/// Pseudo-record type OPT (EDNS).
pub const TYPE_OPT: u16 = 41;
/// Query type IXFR.
pub const TYPE_IXFR: u16 = 251;
/// Query type AXFR.
pub const TYPE_AXFR: u16 = 252;
/// Query type ANY.
pub const TYPE_ANY: u16 = 255;
/// Class IN.
pub const CLASS_IN: u16 = 1;
/// Query class ANY.
pub const CLASS_ANY: u16 = 255;

/// Response code NOERROR.
pub const RCODE_NOERROR: u8 = 0;
/// Response code FORMERR.
pub const RCODE_FORMERR: u8 = 1;
/// Response code SERVFAIL.
pub const RCODE_SERVFAIL: u8 = 2;
/// Response code NXDOMAIN.
pub const RCODE_NXDOMAIN: u8 = 3;
/// Response code NOTIMP.
pub const RCODE_NOTIMP: u8 = 4;
/// Response code REFUSED.
pub const RCODE_REFUSED: u8 = 5;

const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;
const FLAG_CD: u16 = 0x0010;
const OPCODE_MASK: u16 = 0x7800;
const EDNS_DO: u16 = 0x8000;

/// Size of an A record whose owner is a pointer to the question name.
pub const A_RECORD_LEN: usize = 2 + 10 + 4;
/// Size of an AAAA record whose owner is a pointer to the question name.
pub const AAAA_RECORD_LEN: usize = 2 + 10 + 16;
/// Size of an OPT record with no options.
pub const OPT_RECORD_LEN: usize = 11;

/// The EDNS part of a query (its OPT record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edns {
    /// The requester's UDP payload size.
    pub payload: u16,
    /// EDNS version; only 0 exists.
    pub version: u8,
    /// The DNSSEC OK bit, copied to the answer (RFC 3225).
    pub dnssec_ok: bool,
}

/// One query, read in place.
#[derive(Clone)]
pub struct Query {
    /// Message ID.
    pub id: u16,
    /// Header flags as sent.
    pub flags: u16,
    /// Query type.
    pub qtype: u16,
    /// Query class.
    pub qclass: u16,
    /// The OPT record, if any.
    pub edns: Option<Edns>,
    /// End of the question section (offset of the first byte after QCLASS).
    pub question_end: usize,
    /// Number of labels in the name (0 for the root).
    pub labels: usize,
    lower: [u8; MAX_NAME_LEN],
    lower_len: usize,
}

impl Query {
    /// The question name in wire format, lowercased (ASCII).
    pub fn name_lower(&self) -> &[u8] {
        &self.lower[..self.lower_len]
    }

    /// Whether the first label is `tasks`.
    pub fn first_label_is_tasks(&self) -> bool {
        self.name_lower().starts_with(b"\x05tasks")
    }

    /// The question section of `msg` (the message this query was read from).
    pub fn question<'a>(&self, msg: &'a [u8]) -> &'a [u8] {
        &msg[HEADER_LEN..self.question_end]
    }

    /// Largest answer this query's sender accepts over UDP, given our own ceiling.
    pub fn udp_limit(&self, ceiling: u16) -> usize {
        match self.edns {
            Some(e) => usize::from(e.payload.min(ceiling)).max(PLAIN_UDP_LIMIT),
            None => PLAIN_UDP_LIMIT,
        }
    }
}

/// Why a message could not be read as a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not worth an answer: shorter than a header, or a response.
    Ignore,
    /// Malformed: answer FORMERR with this ID and these flags.
    FormErr {
        /// Message ID.
        id: u16,
        /// Header flags as sent.
        flags: u16,
    },
    /// An opcode other than QUERY: answer NOTIMP.
    NotImp {
        /// Message ID.
        id: u16,
        /// Header flags as sent.
        flags: u16,
    },
}

fn be16(msg: &[u8], at: usize) -> Option<u16> {
    let b = msg.get(at..at + 2)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

fn be32(msg: &[u8], at: usize) -> Option<u32> {
    let b = msg.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Skips a possibly compressed name at `at`; returns the offset after it.
pub fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    // A name has at most 127 labels; anything longer is malformed.
    for _ in 0..128 {
        let len = *msg.get(at)?;
        match len & 0xC0 {
            0x00 if len == 0 => return Some(at + 1),
            0x00 => {
                at += 1 + usize::from(len);
                if at > msg.len() {
                    return None;
                }
            }
            0xC0 => {
                return if at + 1 < msg.len() {
                    Some(at + 2)
                } else {
                    None
                };
            }
            _ => return None,
        }
    }
    None
}

/// Skips one resource record at `at`; returns (offset after it, its type, offset of its TTL,
/// offset of its RDATA, RDLENGTH).
fn skip_record(msg: &[u8], at: usize) -> Option<(usize, u16, usize, usize, usize)> {
    let fixed = skip_name(msg, at)?;
    let rtype = be16(msg, fixed)?;
    let rdlen = usize::from(be16(msg, fixed + 8)?);
    let rdata = fixed + 10;
    let end = rdata + rdlen;
    if end > msg.len() {
        return None;
    }
    Some((end, rtype, fixed + 4, rdata, rdlen))
}

/// Reads `msg` as a query.
pub fn parse_query(msg: &[u8]) -> Result<Query, ParseError> {
    let (Some(id), Some(flags)) = (be16(msg, 0), be16(msg, 2)) else {
        return Err(ParseError::Ignore);
    };
    if msg.len() < HEADER_LEN || flags & FLAG_QR != 0 {
        return Err(ParseError::Ignore);
    }
    let formerr = ParseError::FormErr { id, flags };
    if flags & OPCODE_MASK != 0 {
        return Err(ParseError::NotImp { id, flags });
    }
    let count = |at| be16(msg, at).map(usize::from).ok_or(formerr);
    if count(4)? != 1 {
        return Err(formerr);
    }
    let (ancount, nscount, arcount) = (count(6)?, count(8)?, count(10)?);

    // The question name: plain labels only (there is nothing before it to point to).
    let mut lower = [0u8; MAX_NAME_LEN];
    let mut at = HEADER_LEN;
    let mut labels = 0;
    loop {
        let len = usize::from(*msg.get(at).ok_or(formerr)?);
        if len & 0xC0 != 0 {
            return Err(formerr);
        }
        let end = at + 1 + len;
        let wire_len = end - HEADER_LEN;
        if wire_len > MAX_NAME_LEN || end > msg.len() {
            return Err(formerr);
        }
        lower[at - HEADER_LEN] = len as u8;
        for (dst, src) in lower[at - HEADER_LEN + 1..wire_len]
            .iter_mut()
            .zip(&msg[at + 1..end])
        {
            *dst = src.to_ascii_lowercase();
        }
        at = end;
        if len == 0 {
            break;
        }
        labels += 1;
    }
    let lower_len = at - HEADER_LEN;
    let qtype = be16(msg, at).ok_or(formerr)?;
    let qclass = be16(msg, at + 2).ok_or(formerr)?;
    let question_end = at + 4;
    if qtype == TYPE_OPT {
        return Err(formerr);
    }

    // Skip answer and authority records; find the OPT among the additional ones.
    let mut at = question_end;
    for _ in 0..ancount + nscount {
        at = skip_record(msg, at).ok_or(formerr)?.0;
    }
    let mut edns = None;
    for _ in 0..arcount {
        let (end, rtype, ttl_at, _, _) = skip_record(msg, at).ok_or(formerr)?;
        if rtype == TYPE_OPT {
            // Exactly one OPT, owned by the root (RFC 6891 §6.1.1).
            if edns.is_some() || msg[at] != 0 {
                return Err(formerr);
            }
            let ttl = be32(msg, ttl_at).ok_or(formerr)?;
            edns = Some(Edns {
                payload: be16(msg, at + 3).ok_or(formerr)?,
                version: (ttl >> 16) as u8,
                dnssec_ok: ttl as u16 & EDNS_DO != 0,
            });
        }
        at = end;
    }

    Ok(Query {
        id,
        flags,
        qtype,
        qclass,
        edns,
        question_end,
        labels,
        lower,
        lower_len,
    })
}

/// Writes an answer to one query into a reused buffer.
pub struct Answer<'a> {
    buf: &'a mut Vec<u8>,
    limit: usize,
    ancount: u16,
    truncated: bool,
    edns: Option<Edns>,
}

impl<'a> Answer<'a> {
    /// Starts an answer to `q` (read from `msg`) with this response code; `authoritative` sets
    /// AA. `limit` is the largest message allowed (the OPT record included).
    pub fn start(
        buf: &'a mut Vec<u8>,
        q: &Query,
        msg: &[u8],
        rcode: u8,
        authoritative: bool,
        limit: usize,
    ) -> Self {
        buf.clear();
        let mut flags = FLAG_QR | FLAG_RA | (q.flags & (FLAG_RD | FLAG_CD)) | u16::from(rcode);
        if authoritative {
            flags |= FLAG_AA;
        }
        buf.extend_from_slice(&q.id.to_be_bytes());
        buf.extend_from_slice(&flags.to_be_bytes());
        buf.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        buf.extend_from_slice(q.question(msg));
        let limit = limit.max(buf.len() + OPT_RECORD_LEN);
        Answer {
            buf,
            limit,
            ancount: 0,
            truncated: false,
            edns: q.edns,
        }
    }

    fn reserve(&self) -> usize {
        if self.edns.is_some() {
            OPT_RECORD_LEN
        } else {
            0
        }
    }

    fn fits(&mut self, len: usize) -> bool {
        if self.truncated || self.buf.len() + len + self.reserve() > self.limit {
            self.truncated = true;
            return false;
        }
        true
    }

    fn record_head(&mut self, rtype: u16, ttl: u32, rdlen: u16) {
        // The owner is the question name: a pointer to offset 12.
        self.buf.extend_from_slice(&[0xC0, 0x0C]);
        self.buf.extend_from_slice(&rtype.to_be_bytes());
        self.buf.extend_from_slice(&CLASS_IN.to_be_bytes());
        self.buf.extend_from_slice(&ttl.to_be_bytes());
        self.buf.extend_from_slice(&rdlen.to_be_bytes());
        self.ancount += 1;
    }

    /// Adds an A record for the question name; false (and TC set) once the answer is full.
    pub fn push_a(&mut self, ip: Ipv4Addr, ttl: u32) -> bool {
        if !self.fits(A_RECORD_LEN) {
            return false;
        }
        self.record_head(TYPE_A, ttl, 4);
        self.buf.extend_from_slice(&ip.octets());
        true
    }

    /// Adds an AAAA record for the question name; false (and TC set) once the answer is full.
    pub fn push_aaaa(&mut self, ip: Ipv6Addr, ttl: u32) -> bool {
        if !self.fits(AAAA_RECORD_LEN) {
            return false;
        }
        self.record_head(TYPE_AAAA, ttl, 16);
        self.buf.extend_from_slice(&ip.octets());
        true
    }

    /// Ends the answer: counts, TC, and the OPT record if the query had one.
    pub fn finish(self) {
        finish(self.buf, self.ancount, self.truncated, self.edns, 0);
    }
}

fn finish(buf: &mut Vec<u8>, ancount: u16, truncated: bool, edns: Option<Edns>, ext_rcode: u8) {
    buf[6..8].copy_from_slice(&ancount.to_be_bytes());
    if truncated {
        buf[2] |= (FLAG_TC >> 8) as u8;
    }
    if let Some(e) = edns {
        let flags = if e.dnssec_ok { EDNS_DO } else { 0 };
        buf.push(0);
        buf.extend_from_slice(&TYPE_OPT.to_be_bytes());
        buf.extend_from_slice(&ADVERTISED_PAYLOAD.to_be_bytes());
        buf.extend_from_slice(&[ext_rcode, 0]);
        buf.extend_from_slice(&flags.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf[10..12].copy_from_slice(&1u16.to_be_bytes());
    }
}

/// An answer with no records: an error, NXDOMAIN, or NOERROR with nothing (NODATA).
/// `truncated` sets TC (an answer too large for UDP, whose content is left to TCP).
pub fn write_empty(
    buf: &mut Vec<u8>,
    q: &Query,
    msg: &[u8],
    rcode: u8,
    authoritative: bool,
    truncated: bool,
) {
    let a = Answer::start(buf, q, msg, rcode, authoritative, usize::MAX);
    finish(a.buf, 0, truncated, q.edns, 0);
}

/// BADVERS (RFC 6891 §6.1.3): the extended response code 16 is 1 in the OPT record, 0 in the
/// header; the OPT names version 0, the one we speak.
pub fn write_badvers(buf: &mut Vec<u8>, q: &Query, msg: &[u8]) {
    let a = Answer::start(buf, q, msg, RCODE_NOERROR, false, usize::MAX);
    let edns = q.edns.map(|e| Edns { version: 0, ..e });
    finish(a.buf, 0, false, edns, 1);
}

/// A header-only answer for a message that could not be read past its header.
pub fn write_header_only(buf: &mut Vec<u8>, id: u16, flags: u16, rcode: u8) {
    buf.clear();
    let flags =
        FLAG_QR | FLAG_RA | (flags & (OPCODE_MASK | FLAG_RD | FLAG_CD)) | u16::from(rcode & 0x0F);
    buf.extend_from_slice(&id.to_be_bytes());
    buf.extend_from_slice(&flags.to_be_bytes());
    buf.extend_from_slice(&[0; 8]);
}

/// Message ID.
pub fn id(msg: &[u8]) -> Option<u16> {
    be16(msg, 0)
}

/// Sets the message ID.
pub fn set_id(msg: &mut [u8], id: u16) {
    if let Some(b) = msg.get_mut(0..2) {
        b.copy_from_slice(&id.to_be_bytes());
    }
}

/// What the cache needs to know about a forwarded response.
#[derive(Debug, Default)]
pub struct ResponseInfo {
    /// Response code (header part).
    pub rcode: u8,
    /// The TC bit.
    pub truncated: bool,
    /// End of the question section.
    pub question_end: usize,
    /// Offsets of the TTL field of every record but OPT.
    pub ttl_offsets: Vec<u16>,
    /// How long the response may be kept: the smallest TTL of its records, or for a negative
    /// answer the SOA's (RFC 2308 §5); `None` when it must not be kept.
    pub ttl: Option<u32>,
}

/// Whether `resp` is a response to a query with this ID and question section: a response,
/// the same ID, one question, the same question (letter case aside).
pub fn answers(resp: &[u8], id: u16, question: &[u8]) -> bool {
    let Some(flags) = be16(resp, 2) else {
        return false;
    };
    flags & FLAG_QR != 0
        && be16(resp, 0) == Some(id)
        && be16(resp, 4) == Some(1)
        && resp
            .get(HEADER_LEN..HEADER_LEN + question.len())
            .is_some_and(|r| r.eq_ignore_ascii_case(question))
}

/// Walks a response: its code, TC, question end, where its TTLs are and how long to keep it.
pub fn scan_response(msg: &[u8]) -> Option<ResponseInfo> {
    let flags = be16(msg, 2)?;
    if msg.len() < HEADER_LEN || be16(msg, 4)? != 1 {
        return None;
    }
    let counts = [
        usize::from(be16(msg, 6)?),
        usize::from(be16(msg, 8)?),
        usize::from(be16(msg, 10)?),
    ];
    let mut at = skip_name(msg, HEADER_LEN)? + 4;
    if at > msg.len() {
        return None;
    }
    let question_end = at;
    let mut info = ResponseInfo {
        rcode: (flags & 0x0F) as u8,
        truncated: flags & FLAG_TC != 0,
        question_end,
        ..ResponseInfo::default()
    };
    let mut min_ttl: Option<u32> = None;
    let mut soa_ttl: Option<u32> = None;
    for (section, &count) in counts.iter().enumerate() {
        for _ in 0..count {
            let (end, rtype, ttl_at, rdata, rdlen) = skip_record(msg, at)?;
            if rtype != TYPE_OPT {
                let ttl = be32(msg, ttl_at)?;
                info.ttl_offsets.push(u16::try_from(ttl_at).ok()?);
                min_ttl = Some(min_ttl.map_or(ttl, |m| m.min(ttl)));
                if section == 1 && rtype == TYPE_SOA && rdlen >= 20 {
                    let minimum = be32(msg, rdata + rdlen - 4)?;
                    soa_ttl = Some(ttl.min(minimum));
                }
            }
            at = end;
        }
    }
    let negative = info.rcode == RCODE_NXDOMAIN || (info.rcode == RCODE_NOERROR && counts[0] == 0);
    info.ttl = if negative { soa_ttl } else { min_ttl };
    Some(info)
}

/// Lowercase wire form of a dotted name (`tasks.web`, `web.`); `Err` says what is wrong.
pub fn name_to_wire(name: &str) -> Result<Vec<u8>, &'static str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err("it is empty");
    }
    let mut wire = Vec::with_capacity(name.len() + 2);
    for label in name.split('.') {
        if label.is_empty() {
            return Err("it has an empty label (two dots in a row, or a leading dot)");
        }
        if label.len() > 63 {
            return Err("a label is longer than 63 bytes");
        }
        if !label.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') {
            return Err("it has a character that is not printable ASCII, a space or a backslash");
        }
        wire.push(label.len() as u8);
        wire.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    wire.push(0);
    if wire.len() > MAX_NAME_LEN {
        return Err("it is longer than 255 bytes on the wire");
    }
    Ok(wire)
}
