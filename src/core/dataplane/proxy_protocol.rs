//! The PROXY protocol header (HAProxy's spec, versions 1 and 2) an L4 node sends ahead of a
//! connection's bytes, read as Envoy's `proxy_protocol` listener filter reads it: the client's
//! address for a `PROXY` command, none for `LOCAL` (v2) or `UNKNOWN` (v1), TLVs skipped.
//!
//! Sans-IO: [`parse`] looks at the bytes read so far and says how many more it needs, or what
//! the header says and how long it was; the caller keeps whatever follows it. [`encode_v2`]
//! writes the header `meridian l4` sends its gateways.

use ::core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// The longest version 1 header, `\r\n` included.
const V1_MAX: usize = 107;
/// The longest version 2 header accepted (16 bytes of fixed part plus addresses and TLVs);
/// longer ones are refused rather than buffered.
pub const V2_MAX: usize = 16 + 2048;

/// What the bytes read so far say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// At least this many bytes in all are needed to tell.
    Incomplete { needed: usize },
    /// A whole header of `length` bytes; `source` is the client's address, `None` when the
    /// header carries none (a health check's `LOCAL`, `UNKNOWN`, an unspecified family).
    Header {
        length: usize,
        source: Option<SocketAddr>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("not a PROXY protocol header")]
    NotProxyProtocol,
    #[error("PROXY protocol version 1 header: {0}")]
    BadV1(&'static str),
    #[error("PROXY protocol version 2 header: {0}")]
    BadV2(&'static str),
}

/// Reads the header at the start of `bytes`.
pub fn parse(bytes: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let signature_match = |signature: &[u8]| {
        let shared = bytes.len().min(signature.len());
        bytes[..shared] == signature[..shared]
    };
    if signature_match(V2_SIGNATURE) {
        return parse_v2(bytes);
    }
    if signature_match(V1_PREFIX) {
        return parse_v1(bytes);
    }
    Err(ProxyHeaderError::NotProxyProtocol)
}

/// A version 2 `PROXY` header for a TCP connection from `source` to `destination`, without
/// TLVs (what Envoy's `upstream_proxy_protocol` sends). Mixed families are both sent as IPv6
/// (an IPv4 address mapped), as the spec asks.
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(V2_SIGNATURE);
    let (family, addresses): (u8, Vec<u8>) = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (0x11, [s.octets(), d.octets()].concat()),
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            (0x21, [v6(s), v6(d)].concat())
        }
    };
    // Version 2, command PROXY; then the family and TCP (STREAM).
    out.extend_from_slice(&[0x21, family]);
    let length = addresses.len() + 4;
    out.extend_from_slice(&(length as u16).to_be_bytes());
    out.extend_from_slice(&addresses);
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

fn parse_v2(bytes: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let Some(fixed) = bytes.get(..16) else {
        return Ok(Parsed::Incomplete { needed: 16 });
    };
    let (version, command) = (fixed[12] >> 4, fixed[12] & 0x0f);
    if version != 2 {
        return Err(ProxyHeaderError::BadV2("version is not 2"));
    }
    let (family, transport) = (fixed[13] >> 4, fixed[13] & 0x0f);
    let length = 16 + usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if length > V2_MAX {
        return Err(ProxyHeaderError::BadV2("longer than meridian accepts"));
    }
    let Some(body) = bytes.get(16..length) else {
        return Ok(Parsed::Incomplete { needed: length });
    };
    let source = match command {
        // LOCAL: the sender's own connection (a health check); the real peer stands.
        0x0 => None,
        0x1 => match (family, transport) {
            (0x1, 0x1) => {
                let address = body
                    .get(..12)
                    .ok_or(ProxyHeaderError::BadV2("too short for IPv4 addresses"))?;
                let ip = Ipv4Addr::new(address[0], address[1], address[2], address[3]);
                let port = u16::from_be_bytes([address[8], address[9]]);
                Some(SocketAddr::new(IpAddr::V4(ip), port))
            }
            (0x2, 0x1) => {
                let address = body
                    .get(..36)
                    .ok_or(ProxyHeaderError::BadV2("too short for IPv6 addresses"))?;
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&address[..16]);
                let port = u16::from_be_bytes([address[32], address[33]]);
                Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port))
            }
            // AF_UNSPEC: the sender does not know; the real peer stands.
            (0x0, _) => None,
            _ => {
                return Err(ProxyHeaderError::BadV2(
                    "only TCP over IPv4 or IPv6 is supported",
                ))
            }
        },
        _ => return Err(ProxyHeaderError::BadV2("unknown command")),
    };
    Ok(Parsed::Header { length, source })
}

fn parse_v1(bytes: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let window = &bytes[..bytes.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        if bytes.len() >= V1_MAX {
            return Err(ProxyHeaderError::BadV1("no CRLF within 107 bytes"));
        }
        return Ok(Parsed::Incomplete {
            needed: bytes.len() + 1,
        });
    };
    let line = std::str::from_utf8(&window[V1_PREFIX.len()..end])
        .map_err(|_| ProxyHeaderError::BadV1("not ASCII"))?;
    let length = end + 2;
    let mut fields = line.split(' ');
    let source = match fields.next() {
        Some("UNKNOWN") => None,
        Some(family @ ("TCP4" | "TCP6")) => {
            let mut next = || {
                fields
                    .next()
                    .ok_or(ProxyHeaderError::BadV1("missing fields"))
            };
            let (source, _destination) = (next()?, next()?);
            let (source_port, _destination_port) = (next()?, next()?);
            let ip: IpAddr = source
                .parse()
                .map_err(|_| ProxyHeaderError::BadV1("bad source address"))?;
            if (family == "TCP4") != ip.is_ipv4() {
                return Err(ProxyHeaderError::BadV1("address of the wrong family"));
            }
            let port: u16 = source_port
                .parse()
                .map_err(|_| ProxyHeaderError::BadV1("bad source port"))?;
            if fields.next().is_some() {
                return Err(ProxyHeaderError::BadV1("too many fields"));
            }
            Some(SocketAddr::new(ip, port))
        }
        _ => return Err(ProxyHeaderError::BadV1("unknown protocol")),
    };
    Ok(Parsed::Header { length, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v2 PROXY header from `source` to `destination` (same family), with `tlv` appended.
    fn v2(source: SocketAddr, destination: SocketAddr, tlv: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        let (family, addresses) = match (source, destination) {
            (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                let mut a = s.ip().octets().to_vec();
                a.extend(d.ip().octets());
                (0x11, a)
            }
            (SocketAddr::V6(s), SocketAddr::V6(d)) => {
                let mut a = s.ip().octets().to_vec();
                a.extend(d.ip().octets());
                (0x21, a)
            }
            _ => panic!("mixed families"),
        };
        let length = addresses.len() + 4 + tlv.len();
        out.extend([0x21, family]);
        out.extend((length as u16).to_be_bytes());
        out.extend(addresses);
        out.extend(source.port().to_be_bytes());
        out.extend(destination.port().to_be_bytes());
        out.extend(tlv);
        out
    }

    #[test]
    fn what_encode_v2_writes_parses_back_to_the_client_address() {
        for (source, destination) in [
            ("203.0.113.7:40000", "127.0.0.11:8080"),
            ("[2001:db8::7]:1", "[2001:db8::1]:443"),
        ] {
            let source: SocketAddr = source.parse().unwrap();
            let destination: SocketAddr = destination.parse().unwrap();
            let header = encode_v2(source, destination);
            assert_eq!(header, v2(source, destination, &[]));
            assert_eq!(
                parse(&header),
                Ok(Parsed::Header {
                    length: header.len(),
                    source: Some(source)
                })
            );
        }
        // An IPv4 client of an IPv6 VIP travels as a mapped address.
        let source: SocketAddr = "192.0.2.1:5".parse().unwrap();
        let header = encode_v2(source, "[2001:db8::1]:80".parse().unwrap());
        let mapped = SocketAddr::new(IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped()), 5);
        assert_eq!(
            parse(&header),
            Ok(Parsed::Header {
                length: 52,
                source: Some(mapped)
            })
        );
    }

    #[test]
    fn version_2_gives_the_client_address_and_its_length() {
        let source: SocketAddr = "203.0.113.7:40000".parse().unwrap();
        let header = v2(source, "127.0.0.11:8080".parse().unwrap(), &[0x04, 0, 1, 9]);
        let mut bytes = header.clone();
        bytes.extend(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(&bytes),
            Ok(Parsed::Header {
                length: header.len(),
                source: Some(source)
            })
        );
        let source: SocketAddr = "[2001:db8::7]:1".parse().unwrap();
        let header = v2(source, "[2001:db8::1]:443".parse().unwrap(), &[]);
        assert_eq!(
            parse(&header),
            Ok(Parsed::Header {
                length: 52,
                source: Some(source)
            })
        );
        // Each prefix asks for more, never too much.
        for cut in 0..header.len() {
            match parse(&header[..cut]) {
                Ok(Parsed::Incomplete { needed }) => assert!(needed > cut && needed <= 52),
                other => panic!("{cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn local_and_unknown_carry_no_address() {
        let mut local = v2(
            "10.0.0.1:1".parse().unwrap(),
            "10.0.0.2:2".parse().unwrap(),
            &[],
        );
        local[12] = 0x20;
        assert!(matches!(
            parse(&local),
            Ok(Parsed::Header { source: None, .. })
        ));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\nGET"),
            Ok(Parsed::Header {
                length: 15,
                source: None
            })
        );
    }

    #[test]
    fn version_1_gives_the_client_address() {
        let line = b"PROXY TCP4 198.51.100.22 203.0.113.7 35646 80\r\nGET / HTTP/1.1";
        assert_eq!(
            parse(line),
            Ok(Parsed::Header {
                length: 47,
                source: Some("198.51.100.22:35646".parse().unwrap())
            })
        );
        assert_eq!(
            parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n"),
            Ok(Parsed::Header {
                length: 40,
                source: Some("[2001:db8::1]:1".parse().unwrap())
            })
        );
        assert_eq!(
            parse(b"PROXY TCP4 1.2"),
            Ok(Parsed::Incomplete { needed: 15 })
        );
    }

    #[test]
    fn anything_else_is_refused_by_name() {
        for (bytes, expected) in [
            (
                &b"GET / HTTP/1.1\r\n"[..],
                ProxyHeaderError::NotProxyProtocol,
            ),
            (b"\x16\x03\x01", ProxyHeaderError::NotProxyProtocol),
            (
                b"PROXY TCP4 ::1 ::1 1 2\r\n",
                ProxyHeaderError::BadV1("address of the wrong family"),
            ),
            (
                b"PROXY UDP4 1.1.1.1 1.1.1.1 1 2\r\n",
                ProxyHeaderError::BadV1("unknown protocol"),
            ),
            (
                b"PROXY TCP4 1.1.1.1 1.1.1.1 99999 2\r\n",
                ProxyHeaderError::BadV1("bad source port"),
            ),
        ] {
            assert_eq!(parse(bytes), Err(expected), "{bytes:?}");
        }
        let long = [V1_PREFIX.as_slice(), &[b'1'; 120]].concat();
        assert_eq!(
            parse(&long),
            Err(ProxyHeaderError::BadV1("no CRLF within 107 bytes"))
        );
        let mut huge = v2(
            "10.0.0.1:1".parse().unwrap(),
            "10.0.0.2:2".parse().unwrap(),
            &[],
        );
        huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(
            parse(&huge),
            Err(ProxyHeaderError::BadV2("longer than meridian accepts"))
        );
    }

    proptest::proptest! {
        /// Whatever arrives, the parser answers without a panic, and never claims a header
        /// longer than what it was given or asks for fewer bytes than it has.
        #[test]
        fn any_bytes_are_answered(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            match parse(&bytes) {
                Ok(Parsed::Header { length, .. }) => proptest::prop_assert!(length <= bytes.len()),
                Ok(Parsed::Incomplete { needed }) => proptest::prop_assert!(needed > bytes.len()),
                Err(_) => {}
            }
        }

        #[test]
        fn a_v2_header_reads_back_what_was_written(
            a in proptest::prelude::any::<[u8; 4]>(),
            port in proptest::prelude::any::<u16>(),
            tlv in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let source = SocketAddr::new(IpAddr::V4(a.into()), port);
            let header = v2(source, "127.0.0.1:80".parse().unwrap(), &tlv);
            proptest::prop_assert_eq!(
                parse(&header),
                Ok(Parsed::Header { length: header.len(), source: Some(source) })
            );
        }
    }
}
