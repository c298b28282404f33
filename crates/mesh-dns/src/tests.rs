//! The query→answer core against an independent DNS implementation: queries are built and
//! answers read with hickory-proto.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use rand::{Rng, SeedableRng};

use crate::cache::{self, Cache};
use crate::wire;
use crate::{ConfigError, Outcome, Resolver, ResolverConfig, Table, TableError, Transport};

const NET_A: &str = "net-a";
const NET_B: &str = "net-b";

fn ip(s: &str) -> IpAddr {
    match s.parse() {
        Ok(ip) => ip,
        Err(e) => panic!("{s}: {e}"),
    }
}

fn ips(prefix: &str, n: usize) -> Vec<IpAddr> {
    (1..=n).map(|i| ip(&format!("{prefix}.{i}"))).collect()
}

/// Net A: service `web` (VIP 10.0.0.2, three tasks), dnsrr service `db` (two tasks), task
/// name `web.1.abc`, alias `www` of `web`, a standalone container `box1` with an IPv6 address
/// too, `big` with 60 tasks, `empty` with no tasks; net B: service `secret`, and `shared`
/// on both networks.
fn table() -> Table {
    let mut b = Table::builder();
    let web_tasks = ips("10.0.0", 3).into_iter().map(|i| match i {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) + 10)),
        v6 => v6,
    });
    let web_tasks: Vec<IpAddr> = web_tasks.collect();
    let ok = |r: Result<&mut crate::TableBuilder, TableError>| {
        if let Err(e) = r {
            panic!("{e}");
        }
    };
    ok(b.add_service(NET_A, "web", Some(ip("10.0.0.2")), &web_tasks));
    ok(b.add_service(NET_A, "www", Some(ip("10.0.0.2")), &web_tasks));
    ok(b.add_service(NET_A, "db", None, &[ip("10.0.0.21"), ip("10.0.0.22")]));
    ok(b.add_ip(NET_A, "web.1.abc", ip("10.0.0.11")));
    ok(b.add_ip(NET_A, "box1", ip("10.0.0.30")));
    ok(b.add_ip(NET_A, "box1", ip("fd00::30")));
    ok(b.add_service(NET_A, "big", Some(ip("10.0.0.3")), &ips("10.0.1", 60)));
    ok(b.add_service(NET_A, "empty", Some(ip("10.0.0.4")), &[]));
    ok(b.add_service(NET_B, "secret", Some(ip("10.9.0.2")), &ips("10.9.0", 2)));
    ok(b.add_ip(NET_A, "shared", ip("10.0.0.40")));
    ok(b.add_ip(NET_B, "shared", ip("10.9.0.40")));
    ok(b.add_ip(NET_A, "dotted.svc", ip("10.0.0.50")));
    b.build()
}

fn resolver(upstreams: Vec<SocketAddr>) -> Resolver {
    let r = match Resolver::new(ResolverConfig {
        upstreams,
        ttl: 0,
        ..ResolverConfig::default()
    }) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    r.set_table(Arc::new(table()));
    r
}

fn query_msg(name: &str, rtype: RecordType, edns: Option<u16>) -> Message {
    let name = match Name::from_ascii(name) {
        Ok(n) => n,
        Err(e) => panic!("{name}: {e}"),
    };
    let mut m = Message::query();
    m.metadata.id = 0x1234;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name, rtype));
    if let Some(payload) = edns {
        let mut e = Edns::new();
        e.set_max_payload(payload);
        m.set_edns(e);
    }
    m
}

fn encode(m: &Message) -> Vec<u8> {
    match m.to_vec() {
        Ok(v) => v,
        Err(e) => panic!("encode: {e}"),
    }
}

fn decode(b: &[u8]) -> Message {
    match Message::from_vec(b) {
        Ok(m) => m,
        Err(e) => panic!("decode {b:?}: {e}"),
    }
}

fn ask_on(r: &Resolver, nets: &[&str], m: &Message, t: Transport) -> (Message, usize) {
    match r.answer(nets, &encode(m), t) {
        Outcome::Reply(b) => (decode(&b), b.len()),
        other => panic!("expected an answer, got {other:?}"),
    }
}

fn ask(r: &Resolver, name: &str, rtype: RecordType) -> Message {
    ask_on(r, &[NET_A], &query_msg(name, rtype, None), Transport::Udp).0
}

fn addrs(m: &Message) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

#[test]
fn service_name_answers_its_vip() {
    let r = resolver(vec![]);
    let m = ask(&r, "web.", RecordType::A);
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert!(m.metadata.recursion_desired && m.metadata.recursion_available);
    assert!(!m.metadata.truncation);
    assert_eq!(addrs(&m), vec![ip("10.0.0.2")]);
    assert_eq!(m.answers[0].ttl, 0);
    assert_eq!(
        m.answers[0].name,
        Name::from_ascii("web.").unwrap_or_default()
    );
    assert_eq!(m.queries.len(), 1);
}

#[test]
fn aaaa_for_a_name_with_only_ipv4_is_noerror_and_empty() {
    let r = resolver(vec![]);
    for rtype in [
        RecordType::AAAA,
        RecordType::MX,
        RecordType::TXT,
        RecordType::SRV,
    ] {
        let m = ask(&r, "web", rtype);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{rtype}");
        assert!(m.answers.is_empty(), "{rtype}");
    }
}

#[test]
fn a_name_with_both_families_answers_each_type_and_any() {
    let r = resolver(vec![]);
    assert_eq!(
        addrs(&ask(&r, "box1", RecordType::A)),
        vec![ip("10.0.0.30")]
    );
    assert_eq!(
        addrs(&ask(&r, "box1", RecordType::AAAA)),
        vec![ip("fd00::30")]
    );
    assert_eq!(
        addrs(&ask(&r, "box1", RecordType::ANY)),
        vec![ip("10.0.0.30"), ip("fd00::30")]
    );
}

#[test]
fn unknown_cluster_names_are_nxdomain() {
    let r = resolver(vec![ip_port("127.0.0.1:9")]);
    for name in [
        "nosuch",
        "tasks.nosuch",
        "tasks.web.extra",
        "TASKS.nosuch.example.com",
    ] {
        for rtype in [RecordType::A, RecordType::AAAA] {
            let m = ask(&r, name, rtype);
            assert_eq!(
                m.metadata.response_code,
                ResponseCode::NXDomain,
                "{name} {rtype}"
            );
            assert!(m.answers.is_empty());
            assert!(m.metadata.authoritative);
        }
    }
}

fn ip_port(s: &str) -> SocketAddr {
    match s.parse() {
        Ok(a) => a,
        Err(e) => panic!("{s}: {e}"),
    }
}

#[test]
fn unknown_dotted_names_are_forwarded() {
    let r = resolver(vec![ip_port("127.0.0.1:9")]);
    let q = encode(&query_msg("example.com.", RecordType::A, None));
    assert_eq!(r.answer(&[NET_A], &q, Transport::Udp), Outcome::Forward);
    // A dotted name of the cluster that is not on the asker's networks is not the cluster's
    // for this asker either.
    let q = encode(&query_msg("dotted.svc", RecordType::A, None));
    assert_eq!(r.answer(&[NET_B], &q, Transport::Udp), Outcome::Forward);
    let q = encode(&query_msg(".", RecordType::NS, None));
    assert_eq!(r.answer(&[NET_A], &q, Transport::Udp), Outcome::Forward);
}

#[test]
fn without_upstreams_forwarded_names_get_servfail() {
    let r = resolver(vec![]);
    let m = ask(&r, "example.com", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
}

#[test]
fn names_are_case_insensitive_and_the_question_keeps_its_case() {
    let r = resolver(vec![]);
    let m = ask(&r, "WeB.1.AbC.", RecordType::A);
    assert_eq!(addrs(&m), vec![ip("10.0.0.11")]);
    assert_eq!(m.queries[0].name().to_ascii(), "WeB.1.AbC.");
    let m = ask(&r, "TASKS.Web", RecordType::A);
    assert_eq!(m.answers.len(), 3);
}

#[test]
fn trailing_dot_is_optional_in_the_table() {
    let mut b = Table::builder();
    assert!(b.add_ip(NET_A, "dot.", ip("10.0.0.1")).is_ok());
    assert!(b.add_ip(NET_A, "dot", ip("10.0.0.2")).is_ok());
    let t = b.build();
    assert_eq!(t.name_count(), 1);
    assert_eq!(
        t.lookup_ips(&[NET_A], "dot"),
        Some(vec![ip("10.0.0.1"), ip("10.0.0.2")])
    );
}

#[test]
fn names_are_scoped_to_the_askers_networks() {
    let r = resolver(vec![]);
    let q = query_msg("secret", RecordType::A, None);
    let (m, _) = ask_on(&r, &[NET_A], &q, Transport::Udp);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let (m, _) = ask_on(&r, &[NET_B], &q, Transport::Udp);
    assert_eq!(addrs(&m), vec![ip("10.9.0.2")]);
    let (m, _) = ask_on(&r, &[NET_A, NET_B], &q, Transport::Udp);
    assert_eq!(addrs(&m), vec![ip("10.9.0.2")]);
    // A task on no network (or unknown ones) sees no cluster name.
    let (m, _) = ask_on(
        &r,
        &["net-unknown"],
        &query_msg("web", RecordType::A, None),
        Transport::Udp,
    );
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // A name on two of the asker's networks answers both addresses once.
    let q = query_msg("shared", RecordType::A, None);
    let (m, _) = ask_on(&r, &[NET_A, NET_B, NET_A], &q, Transport::Udp);
    assert_eq!(addrs(&m), vec![ip("10.0.0.40"), ip("10.9.0.40")]);
    let (m, _) = ask_on(&r, &[NET_B], &q, Transport::Udp);
    assert_eq!(addrs(&m), vec![ip("10.9.0.40")]);
}

#[test]
fn tasks_name_answers_every_task_and_rotates() {
    let r = resolver(vec![]);
    let mut firsts = std::collections::HashSet::new();
    for _ in 0..6 {
        let m = ask(&r, "tasks.web", RecordType::A);
        assert_eq!(
            addrs(&m),
            vec![ip("10.0.0.11"), ip("10.0.0.12"), ip("10.0.0.13")]
        );
        if let RData::A(a) = &m.answers[0].data {
            firsts.insert(a.0);
        }
    }
    assert_eq!(firsts.len(), 3, "each task comes first in turn");
    // The service with no running task exists, with nothing to answer.
    let m = ask(&r, "tasks.empty", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
}

#[test]
fn dnsrr_service_and_alias() {
    let r = resolver(vec![]);
    assert_eq!(
        addrs(&ask(&r, "db", RecordType::A)),
        vec![ip("10.0.0.21"), ip("10.0.0.22")]
    );
    assert_eq!(
        addrs(&ask(&r, "tasks.db", RecordType::A)),
        vec![ip("10.0.0.21"), ip("10.0.0.22")]
    );
    assert_eq!(addrs(&ask(&r, "www", RecordType::A)), vec![ip("10.0.0.2")]);
    assert_eq!(addrs(&ask(&r, "tasks.www", RecordType::A)).len(), 3);
}

#[test]
fn large_answers_are_truncated_over_udp_and_complete_over_tcp() {
    let r = resolver(vec![]);
    let q = query_msg("tasks.big", RecordType::A, None);
    let (m, len) = ask_on(&r, &[NET_A], &q, Transport::Udp);
    assert!(m.metadata.truncation);
    assert!(len <= 512, "{len}");
    assert!(!m.answers.is_empty() && m.answers.len() < 60);
    let (m, _) = ask_on(&r, &[NET_A], &q, Transport::Tcp);
    assert!(!m.metadata.truncation);
    assert_eq!(addrs(&m), ips("10.0.1", 60).into_iter().collect::<Vec<_>>());
}

#[test]
fn edns_payload_size_is_respected_and_opt_echoed() {
    let r = resolver(vec![]);
    // 60 A records need 60 * 16 + about 40 bytes.
    let (m, len) = ask_on(
        &r,
        &[NET_A],
        &query_msg("tasks.big", RecordType::A, Some(4096)),
        Transport::Udp,
    );
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);
    assert!(len > 512);
    let edns = m.edns.as_ref().map(|e| (e.version(), e.max_payload()));
    assert_eq!(edns, Some((0, wire::ADVERTISED_PAYLOAD)));

    let (m, len) = ask_on(
        &r,
        &[NET_A],
        &query_msg("tasks.big", RecordType::A, Some(700)),
        Transport::Udp,
    );
    assert!(m.metadata.truncation);
    assert!(len <= 700 && len > 512, "{len}");
    assert!(m.edns.is_some());

    // Below 512 counts as 512.
    let (m, len) = ask_on(
        &r,
        &[NET_A],
        &query_msg("tasks.big", RecordType::A, Some(100)),
        Transport::Udp,
    );
    assert!(m.metadata.truncation);
    assert!(len <= 512 && len > 400, "{len}");

    // No OPT in the query, none in the answer; DO is copied.
    let m = ask(&r, "web", RecordType::A);
    assert!(m.edns.is_none());
    let mut q = query_msg("web", RecordType::A, Some(1232));
    if let Some(e) = q.edns.as_mut() {
        e.set_dnssec_ok(true);
    }
    let (m, _) = ask_on(&r, &[NET_A], &q, Transport::Udp);
    assert_eq!(m.edns.as_ref().map(|e| e.flags().dnssec_ok), Some(true));
}

#[test]
fn unknown_edns_version_is_badvers() {
    let r = resolver(vec![]);
    let mut q = query_msg("web", RecordType::A, Some(1232));
    if let Some(e) = q.edns.as_mut() {
        e.set_version(1);
    }
    let (m, _) = ask_on(&r, &[NET_A], &q, Transport::Udp);
    // 16 is both BADVERS and BADSIG; hickory-proto reads it as the latter.
    assert_eq!(u16::from(m.metadata.response_code), 16);
    assert_eq!(m.edns.as_ref().map(|e| e.version()), Some(0));
    assert!(m.answers.is_empty());
}

#[test]
fn other_classes_and_zone_transfers_are_refused() {
    let r = resolver(vec![]);
    let mut q = query_msg("web", RecordType::TXT, None);
    q.queries[0].query_class = DNSClass::CH;
    let (m, _) = ask_on(&r, &[NET_A], &q, Transport::Udp);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    let (m, _) = ask_on(
        &r,
        &[NET_A],
        &query_msg("web", RecordType::AXFR, None),
        Transport::Tcp,
    );
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
}

fn raw_answer(r: &Resolver, msg: &[u8]) -> Outcome {
    r.answer(&[NET_A], msg, Transport::Udp)
}

fn rcode_of(o: &Outcome) -> Option<u8> {
    match o {
        Outcome::Reply(b) => Some(b[3] & 0x0F),
        _ => None,
    }
}

#[test]
fn malformed_queries_get_formerr_or_nothing() {
    let r = resolver(vec![]);
    let good = encode(&query_msg("web", RecordType::A, None));
    // Shorter than a header: nothing.
    assert_eq!(raw_answer(&r, &good[..5]), Outcome::Drop);
    assert_eq!(raw_answer(&r, &[]), Outcome::Drop);
    // A response: nothing (never answer an answer).
    let mut resp = good.clone();
    resp[2] |= 0x80;
    assert_eq!(raw_answer(&r, &resp), Outcome::Drop);
    // Cut in the question, no question, two questions, a pointer in the question name.
    assert_eq!(
        rcode_of(&raw_answer(&r, &good[..good.len() - 2])),
        Some(wire::RCODE_FORMERR)
    );
    let mut none = good[..12].to_vec();
    none[5] = 0;
    assert_eq!(rcode_of(&raw_answer(&r, &none)), Some(wire::RCODE_FORMERR));
    let mut two = good.clone();
    two[5] = 2;
    two.extend_from_slice(&good[12..]);
    assert_eq!(rcode_of(&raw_answer(&r, &two)), Some(wire::RCODE_FORMERR));
    let mut ptr = good[..12].to_vec();
    ptr.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1]);
    assert_eq!(rcode_of(&raw_answer(&r, &ptr)), Some(wire::RCODE_FORMERR));
    // An additional record count with nothing behind it.
    let mut ar = good.clone();
    ar[11] = 1;
    assert_eq!(rcode_of(&raw_answer(&r, &ar)), Some(wire::RCODE_FORMERR));
    // Two OPT records.
    let with_opt = encode(&query_msg("web", RecordType::A, Some(1232)));
    let mut two_opt = with_opt.clone();
    two_opt[11] = 2;
    two_opt.extend_from_slice(&with_opt[with_opt.len() - 11..]);
    assert_eq!(
        rcode_of(&raw_answer(&r, &two_opt)),
        Some(wire::RCODE_FORMERR)
    );
    // The FORMERR answer keeps the ID.
    if let Outcome::Reply(b) = raw_answer(&r, &none) {
        assert_eq!(decode(&b).metadata.id, 0x1234);
    }
}

#[test]
fn other_opcodes_are_notimp() {
    let r = resolver(vec![]);
    let mut q = query_msg("web", RecordType::A, None);
    q.metadata.op_code = OpCode::Update;
    let o = raw_answer(&r, &encode(&q));
    assert_eq!(rcode_of(&o), Some(wire::RCODE_NOTIMP));
    q.metadata.op_code = OpCode::Notify;
    assert_eq!(
        rcode_of(&raw_answer(&r, &encode(&q))),
        Some(wire::RCODE_NOTIMP)
    );
}

#[test]
fn random_and_mutated_messages_never_panic() {
    let r = resolver(vec![ip_port("127.0.0.1:9")]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let seeds = [
        encode(&query_msg("tasks.big", RecordType::A, Some(1232))),
        encode(&query_msg("web.1.abc", RecordType::ANY, None)),
        encode(&query_msg("example.com", RecordType::AAAA, Some(600))),
    ];
    let check = |msg: &[u8]| {
        for t in [Transport::Udp, Transport::Tcp] {
            if let Outcome::Reply(b) = r.answer(&[NET_A, NET_B], msg, t) {
                assert!(b.len() >= 12);
                assert_eq!(&b[..2], &msg[..2], "answers keep the ID");
                assert!(b[2] & 0x80 != 0, "answers are responses");
                if t == Transport::Udp {
                    assert!(b.len() <= 4096);
                }
            }
        }
    };
    for _ in 0..20_000 {
        let len = rng.random_range(0..600);
        let msg: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        check(&msg);
    }
    for _ in 0..20_000 {
        let mut msg = seeds[rng.random_range(0..seeds.len())].clone();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..msg.len());
            msg[at] = rng.random();
        }
        if rng.random_bool(0.2) {
            msg.truncate(rng.random_range(0..msg.len()));
        }
        check(&msg);
    }
}

#[test]
fn a_swapped_table_is_seen_by_the_next_query() {
    let r = resolver(vec![]);
    assert_eq!(addrs(&ask(&r, "web", RecordType::A)), vec![ip("10.0.0.2")]);
    let mut b = Table::builder();
    assert!(
        b.add_service(NET_A, "web", Some(ip("10.0.0.99")), &[])
            .is_ok()
    );
    r.set_table(Arc::new(b.build()));
    assert_eq!(addrs(&ask(&r, "web", RecordType::A)), vec![ip("10.0.0.99")]);
    assert_eq!(
        ask(&r, "db", RecordType::A).metadata.response_code,
        ResponseCode::NXDomain
    );
}

#[test]
fn bad_names_are_refused_by_the_builder() {
    let mut b = Table::builder();
    let long = "a".repeat(64);
    let very_long = ["abcdefghij"; 30].join(".");
    for (name, problem) in [
        ("", "it is empty"),
        (".", "it is empty"),
        (
            "a..b",
            "it has an empty label (two dots in a row, or a leading dot)",
        ),
        (long.as_str(), "a label is longer than 63 bytes"),
        (
            "has space",
            "it has a character that is not printable ASCII, a space or a backslash",
        ),
        (
            very_long.as_str(),
            "it is longer than 255 bytes on the wire",
        ),
    ] {
        let err = b.add_ip(NET_A, name, ip("10.0.0.1")).err();
        assert_eq!(
            err,
            Some(TableError::BadName {
                network: NET_A.into(),
                name: name.into(),
                problem
            }),
            "{name}"
        );
    }
    let err = b.add_ip("", "web", ip("10.0.0.1")).err();
    assert_eq!(err, Some(TableError::EmptyNetwork { name: "web".into() }));
    let msg = TableError::EmptyNetwork { name: "web".into() }.to_string();
    assert!(msg.contains("network ID") && msg.contains("pass"), "{msg}");
}

#[test]
fn resolv_conf_nameservers_in_order() {
    let text = "# generated\nsearch example.com\nnameserver 10.255.255.53\n\
                nameserver  2001:db8::1 # v6\noptions ndots:2\nnameserver bogus\n\
                nameserver fe80::1%eth0\n;nameserver 1.1.1.1\nnameserver 10.255.255.53\nnameserver\n";
    assert_eq!(
        crate::upstreams_from_resolv_conf(text),
        vec![ip_port("10.255.255.53:53"), ip_port("[2001:db8::1]:53")]
    );
    assert!(crate::upstreams_from_resolv_conf("").is_empty());
}

#[test]
fn bad_config_names_the_field() {
    let bad = |f: fn(&mut ResolverConfig)| {
        let mut c = ResolverConfig::default();
        f(&mut c);
        c.validate().err()
    };
    assert_eq!(bad(|c| c.threads = 0), Some(ConfigError::Threads(0)));
    assert_eq!(
        bad(|c| c.upstream_timeout = Duration::ZERO),
        Some(ConfigError::UpstreamTimeout(Duration::ZERO))
    );
    assert_eq!(
        bad(|c| c.max_udp_payload = 100),
        Some(ConfigError::MaxUdpPayload(100))
    );
    assert_eq!(bad(|c| c.max_forwards = 0), Some(ConfigError::MaxForwards));
    assert!(matches!(
        bad(|c| c.upstreams = vec![ip_port("10.0.0.1:53"), ip_port("0.0.0.0:53")]),
        Some(ConfigError::Upstream { index: 1, .. })
    ));
    assert!(ConfigError::Threads(0).to_string().contains("threads"));
    assert!(
        Resolver::new(ResolverConfig {
            threads: 0,
            ..Default::default()
        })
        .is_err()
    );
}

/// An upstream's answer to `q`, with records of these TTLs (and an SOA in authority for a
/// negative answer).
fn upstream_answer(
    q: &Message,
    rcode: ResponseCode,
    ttls: &[u32],
    soa: Option<(u32, u32)>,
) -> Vec<u8> {
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::{A, SOA};
    let mut m = Message::response(q.metadata.id, OpCode::Query);
    m.metadata.response_code = rcode;
    m.metadata.recursion_available = true;
    m.add_query(q.queries[0].clone());
    let name = q.queries[0].name().clone();
    for (i, &ttl) in ttls.iter().enumerate() {
        m.add_answer(Record::from_rdata(
            name.clone(),
            ttl,
            RData::A(A::new(192, 0, 2, i as u8 + 1)),
        ));
    }
    if let Some((ttl, minimum)) = soa {
        let zone = Name::from_ascii("example.com.").unwrap_or_default();
        let soa = SOA::new(zone.clone(), zone.clone(), 1, 3600, 600, 86400, minimum);
        m.add_authority(Record::from_rdata(zone, ttl, RData::SOA(soa)));
    }
    encode(&m)
}

fn cached(c: &Cache, q: &Message, now: Instant) -> Option<Message> {
    let msg = encode(q);
    let pq = wire::parse_query(&msg).ok()?;
    let mut key = [0; cache::MAX_KEY_LEN];
    let key = cache::key(&pq, &mut key);
    let mut out = Vec::new();
    c.get(key, now, &pq, &msg, &mut out).then(|| decode(&out))
}

fn keep(c: &Cache, q: &Message, resp: &[u8], now: Instant) {
    let msg = encode(q);
    let Ok(pq) = wire::parse_query(&msg) else {
        panic!("query")
    };
    let mut key = [0; cache::MAX_KEY_LEN];
    let key = cache::key(&pq, &mut key);
    if let Some(info) = wire::scan_response(resp) {
        c.insert(key, resp, info, now);
    }
}

#[test]
fn cache_serves_with_the_askers_id_and_case_and_counts_ttls_down() {
    let c = Cache::new(100);
    let t0 = Instant::now();
    let q = query_msg("www.example.com", RecordType::A, None);
    keep(
        &c,
        &q,
        &upstream_answer(&q, ResponseCode::NoError, &[300, 60], None),
        t0,
    );
    assert_eq!(c.len(), 1);

    let mut q2 = query_msg("WWW.Example.COM", RecordType::A, None);
    q2.metadata.id = 0x4321;
    let m = cached(&c, &q2, t0 + Duration::from_secs(10)).unwrap();
    assert_eq!(m.metadata.id, 0x4321);
    assert_eq!(m.queries[0].name().to_ascii(), "WWW.Example.COM.");
    assert_eq!(
        m.answers.iter().map(|r| r.ttl).collect::<Vec<_>>(),
        vec![290, 50]
    );
    // Kept for the smallest TTL.
    assert!(cached(&c, &q2, t0 + Duration::from_secs(59)).is_some());
    assert!(cached(&c, &q2, t0 + Duration::from_secs(60)).is_none());
    // Another type, or EDNS, is another entry.
    assert!(
        cached(
            &c,
            &query_msg("www.example.com", RecordType::AAAA, None),
            t0
        )
        .is_none()
    );
    assert!(
        cached(
            &c,
            &query_msg("www.example.com", RecordType::A, Some(1232)),
            t0
        )
        .is_none()
    );
}

#[test]
fn cache_keeps_negative_answers_for_the_soa_minimum_only() {
    let c = Cache::new(100);
    let t0 = Instant::now();
    let q = query_msg("nx.example.com", RecordType::A, None);
    keep(
        &c,
        &q,
        &upstream_answer(&q, ResponseCode::NXDomain, &[], Some((900, 30))),
        t0,
    );
    assert!(cached(&c, &q, t0 + Duration::from_secs(29)).is_some());
    assert!(cached(&c, &q, t0 + Duration::from_secs(30)).is_none());
    // Without an SOA, a negative answer is not kept; nor is SERVFAIL, nor TTL 0.
    let q = query_msg("nx2.example.com", RecordType::A, None);
    keep(
        &c,
        &q,
        &upstream_answer(&q, ResponseCode::NXDomain, &[], None),
        t0,
    );
    let q3 = query_msg("sf.example.com", RecordType::A, None);
    keep(
        &c,
        &q3,
        &upstream_answer(&q3, ResponseCode::ServFail, &[300], None),
        t0,
    );
    let q4 = query_msg("zero.example.com", RecordType::A, None);
    keep(
        &c,
        &q4,
        &upstream_answer(&q4, ResponseCode::NoError, &[0], None),
        t0,
    );
    assert_eq!(c.len(), 0);
}

#[test]
fn cache_stays_within_its_size() {
    let c = Cache::new(32);
    let t0 = Instant::now();
    for i in 0..1000 {
        let q = query_msg(&format!("n{i}.example.com"), RecordType::A, None);
        keep(
            &c,
            &q,
            &upstream_answer(&q, ResponseCode::NoError, &[300], None),
            t0,
        );
    }
    assert!(c.len() <= 32, "{}", c.len());
    let off = Cache::new(0);
    let q = query_msg("a.example.com", RecordType::A, None);
    keep(
        &off,
        &q,
        &upstream_answer(&q, ResponseCode::NoError, &[300], None),
        t0,
    );
    assert!(cached(&off, &q, t0).is_none());
}

#[test]
fn cached_answers_too_large_for_udp_are_truncated() {
    let r = resolver(vec![ip_port("127.0.0.1:9")]);
    let q = query_msg("many.example.com", RecordType::A, None);
    let resp = upstream_answer(&q, ResponseCode::NoError, &[300; 40], None);
    assert!(resp.len() > 512);
    keep(&r.shared.answerer.cache, &q, &resp, Instant::now());
    let (m, len) = ask_on(&r, &[NET_A], &q, Transport::Udp);
    assert!(m.metadata.truncation && m.answers.is_empty() && len <= 512);
    let (m, _) = ask_on(&r, &[NET_A], &q, Transport::Tcp);
    assert_eq!(m.answers.len(), 40);
    assert!(!m.metadata.truncation);
}

#[test]
fn name_wire_form() {
    assert_eq!(
        wire::name_to_wire("Web.Svc."),
        Ok(b"\x03web\x03svc\x00".to_vec())
    );
    assert_eq!(wire::name_to_wire("a"), Ok(b"\x01a\x00".to_vec()));
    let v6: Ipv6Addr = Ipv6Addr::LOCALHOST;
    let mut b = Table::builder();
    assert!(b.add_ip(NET_A, "six", IpAddr::V6(v6)).is_ok());
    assert_eq!(
        b.build().lookup_ips(&[NET_A], "SIX."),
        Some(vec![IpAddr::V6(v6)])
    );
}

#[test]
fn queries_during_table_swaps_see_one_table_whole() {
    // Two tables that differ in every address; an answer mixing them would be a torn read.
    let build = |base: u8| {
        let mut b = Table::builder();
        let tasks: Vec<IpAddr> = (1..=8).map(|i| ip(&format!("10.{base}.0.{i}"))).collect();
        assert!(
            b.add_service(NET_A, "web", Some(ip(&format!("10.{base}.0.100"))), &tasks)
                .is_ok()
        );
        Arc::new(b.build())
    };
    let (one, two) = (build(1), build(2));
    let r = resolver(vec![]);
    r.set_table(one.clone());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (r, stop) = (r.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 1_000_000 {
                r.set_table(if n.is_multiple_of(2) {
                    two.clone()
                } else {
                    one.clone()
                });
                n += 1;
            }
        })
    };
    let q = encode(&query_msg("tasks.web", RecordType::A, None));
    let mut seen = [0usize; 2];
    for _ in 0..50_000 {
        let Outcome::Reply(b) = r.answer(&[NET_A], &q, Transport::Udp) else {
            panic!("no answer");
        };
        let m = decode(&b);
        let nets: std::collections::HashSet<u8> = addrs(&m)
            .iter()
            .map(|a| match a {
                IpAddr::V4(v4) => v4.octets()[1],
                IpAddr::V6(_) => 0,
            })
            .collect();
        assert_eq!(nets.len(), 1, "one table per answer: {:?}", addrs(&m));
        assert_eq!(m.answers.len(), 8);
        seen[usize::from(nets.contains(&2))] += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(swapper.join().is_ok());
    assert!(seen[0] > 0 || seen[1] > 0);
}
