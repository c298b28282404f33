//! The PROXY protocol version 2 header (binary form) for a TCP connection over IPv4, sent to a
//! backend before any data so that it learns the client's address.

use std::net::SocketAddrV4;

/// The 12-byte signature every version 2 header starts with.
pub const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// Length of a header for TCP over IPv4: 16 fixed bytes and 12 bytes of addresses.
pub const HEADER_V4_LEN: usize = 28;

/// Version 2 (high nibble) and the PROXY command (low nibble).
const VERSION_PROXY: u8 = 0x21;

/// AF_INET (high nibble) over STREAM (low nibble).
const INET_STREAM: u8 = 0x11;

/// The header telling a backend that `client` connected to `dest` (the published address the
/// client reached): signature, `0x21`, `0x11`, length 12 (big endian), source address,
/// destination address, source port, destination port (all in network byte order).
pub fn header_v4(client: SocketAddrV4, dest: SocketAddrV4) -> [u8; HEADER_V4_LEN] {
    let mut h = [0u8; HEADER_V4_LEN];
    h[..12].copy_from_slice(&SIGNATURE);
    h[12] = VERSION_PROXY;
    h[13] = INET_STREAM;
    h[14..16].copy_from_slice(&12u16.to_be_bytes());
    h[16..20].copy_from_slice(&client.ip().octets());
    h[20..24].copy_from_slice(&dest.ip().octets());
    h[24..26].copy_from_slice(&client.port().to_be_bytes());
    h[26..28].copy_from_slice(&dest.port().to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn byte_layout_follows_the_spec() {
        let client = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 10), 51234);
        let dest = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 7), 8080);
        let h = header_v4(client, dest);
        #[rustfmt::skip]
        let expected: [u8; 28] = [
            // signature "\r\n\r\n\0\r\nQUIT\n"
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
            0x21, // version 2, PROXY
            0x11, // TCP over IPv4
            0x00, 0x0C, // 12 bytes of addresses follow
            192, 0, 2, 10, // source address
            198, 51, 100, 7, // destination address
            0xC8, 0x22, // source port 51234
            0x1F, 0x90, // destination port 8080
        ];
        assert_eq!(h, expected);
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
    }

    #[test]
    fn length_field_counts_what_follows() {
        let a = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1);
        let h = header_v4(a, a);
        let len = u16::from_be_bytes([h[14], h[15]]) as usize;
        assert_eq!(16 + len, h.len());
    }
}
