//! An encoded `RouteConfiguration` taken apart without decoding it whole: its virtual hosts
//! stay encoded, one slice each, and the rest is decoded alone. Protobuf decodes a message's
//! fields independently of one another (and of their order), so decoding the parts apart
//! yields what decoding the whole would.

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
use prost::Message;

use super::CompileError;

/// `RouteConfiguration.virtual_hosts`'s field number.
const VIRTUAL_HOSTS: u32 = 2;

/// Why an encoded route configuration cannot be compiled.
#[derive(Debug, thiserror::Error)]
pub enum EncodedRoutesError {
    #[error("undecodable RouteConfiguration: {0}")]
    Undecodable(#[from] prost::DecodeError),
    #[error(transparent)]
    Refused(#[from] CompileError),
}

/// The configuration without its virtual hosts, and each virtual host's encoding in order.
pub(super) fn split_virtual_hosts(
    encoded: &[u8],
) -> Result<(RouteConfiguration, Vec<&[u8]>), prost::DecodeError> {
    let mut rest = Vec::new();
    let mut hosts = Vec::new();
    let mut buf = encoded;
    while !buf.is_empty() {
        let field = buf;
        let (tag, wire_type) = decode_key(&mut buf)?;
        let value = buf;
        // Checks the field's length against what is left, and steps over it.
        skip_field(wire_type, tag, &mut buf, DecodeContext::default())?;
        let consumed = value.len() - buf.len();
        if tag == VIRTUAL_HOSTS && wire_type == WireType::LengthDelimited {
            let mut host = &value[..consumed];
            let length = decode_varint(&mut host)?;
            debug_assert_eq!(u64::try_from(host.len()).ok(), Some(length));
            hosts.push(host);
        } else {
            rest.extend_from_slice(&field[..field.len() - buf.len()]);
        }
    }
    Ok((RouteConfiguration::decode(rest.as_slice())?, hosts))
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::route::v3::VirtualHost;
    use envoy_types::pb::google::protobuf::BoolValue;

    use super::*;

    #[test]
    fn the_parts_decode_to_what_the_whole_does() {
        let config = RouteConfiguration {
            name: "r".to_owned(),
            virtual_hosts: (0..3)
                .map(|i| VirtualHost {
                    name: format!("h{i}"),
                    domains: vec![format!("h{i}.test")],
                    ..VirtualHost::default()
                })
                .collect(),
            validate_clusters: Some(BoolValue { value: false }),
            ..RouteConfiguration::default()
        };
        let encoded = config.encode_to_vec();
        let (rest, hosts) = split_virtual_hosts(&encoded).expect("splits");
        let mut whole = rest;
        for host in hosts {
            whole
                .virtual_hosts
                .push(VirtualHost::decode(host).expect("a virtual host"));
        }
        assert_eq!(whole, config);
    }

    #[test]
    fn a_configuration_cut_inside_a_field_is_undecodable() {
        let named = RouteConfiguration {
            name: "r".to_owned(),
            ..RouteConfiguration::default()
        };
        let config = RouteConfiguration {
            virtual_hosts: vec![VirtualHost {
                name: "h".to_owned(),
                ..VirtualHost::default()
            }],
            ..named.clone()
        };
        let encoded = config.encode_to_vec();
        // The name comes first; a cut right after it leaves a whole configuration.
        let boundary = named.encoded_len();
        for cut in 1..encoded.len() {
            let split = split_virtual_hosts(&encoded[..cut]);
            if cut == boundary {
                let (rest, hosts) = split.expect("a whole configuration");
                assert_eq!((rest, hosts.len()), (named.clone(), 0));
            } else {
                assert!(split.is_err(), "cut at {cut} of {}", encoded.len());
            }
        }
    }

    /// Splitting then decoding the parts accepts what decoding the whole accepts, refuses
    /// what it refuses, and yields the same configuration.
    fn as_whole(encoded: &[u8]) -> Result<RouteConfiguration, ()> {
        let (mut rest, hosts) = split_virtual_hosts(encoded).map_err(drop)?;
        for host in hosts {
            rest.virtual_hosts
                .push(VirtualHost::decode(host).map_err(drop)?);
        }
        Ok(rest)
    }

    fn configuration(
        name: String,
        hosts: Vec<(String, Vec<String>)>,
        validate: Option<bool>,
    ) -> Vec<u8> {
        RouteConfiguration {
            name,
            virtual_hosts: hosts
                .into_iter()
                .map(|(name, domains)| VirtualHost {
                    name,
                    domains,
                    ..VirtualHost::default()
                })
                .collect(),
            validate_clusters: validate.map(|value| BoolValue { value }),
            ..RouteConfiguration::default()
        }
        .encode_to_vec()
    }

    proptest::proptest! {
        #[test]
        fn the_split_agrees_with_decoding_the_whole(
            name in "[a-z.]{0,12}",
            hosts in proptest::collection::vec(
                ("[a-z]{0,6}", proptest::collection::vec("[a-z*.]{0,10}", 0..3)),
                0..5,
            ),
            validate in proptest::option::of(proptest::prelude::any::<bool>()),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
            flips in proptest::collection::vec(
                (proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()),
                0..3,
            ),
        ) {
            let mut encoded = configuration(name, hosts, validate);
            for (at, byte) in flips {
                if !encoded.is_empty() {
                    let at = at.index(encoded.len());
                    encoded[at] ^= byte;
                }
            }
            let kept = cut.index(encoded.len() + 1);
            let encoded = &encoded[..kept];
            let whole = RouteConfiguration::decode(encoded).map_err(drop);
            proptest::prop_assert_eq!(as_whole(encoded), whole);
        }

        #[test]
        fn any_bytes_are_split_or_refused_without_a_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            let whole = RouteConfiguration::decode(bytes.as_slice()).map_err(drop);
            proptest::prop_assert_eq!(as_whole(&bytes), whole);
        }
    }
}
