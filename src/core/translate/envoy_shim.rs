//! Envoy messages xds-api does not ship (listener TLS contexts, the TLS inspector), generated
//! from `proto/envoy/shim` with Envoy's package names and field numbers.

#![allow(clippy::all)]

pub mod tls {
    include!(concat!(
        env!("OUT_DIR"),
        "/envoy.extensions.transport_sockets.tls.v3.rs"
    ));
}

pub mod tls_inspector {
    include!(concat!(
        env!("OUT_DIR"),
        "/envoy.extensions.filters.listener.tls_inspector.v3.rs"
    ));
}

/// The descriptors of these messages, so config dumps render them like any other resource.
pub static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_shim.bin"));

macro_rules! envoy_name {
    ($ty:ty, $package:literal, $name:literal) => {
        impl prost::Name for $ty {
            const NAME: &'static str = $name;
            const PACKAGE: &'static str = $package;

            fn full_name() -> String {
                format!("{}.{}", $package, $name)
            }

            fn type_url() -> String {
                format!("type.googleapis.com/{}.{}", $package, $name)
            }
        }
    };
}

envoy_name!(
    tls::DownstreamTlsContext,
    "envoy.extensions.transport_sockets.tls.v3",
    "DownstreamTlsContext"
);
envoy_name!(
    tls::UpstreamTlsContext,
    "envoy.extensions.transport_sockets.tls.v3",
    "UpstreamTlsContext"
);
envoy_name!(
    tls_inspector::TlsInspector,
    "envoy.extensions.filters.listener.tls_inspector.v3",
    "TlsInspector"
);
