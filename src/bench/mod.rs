//! Benchmarks run from the CLI: `bench-translate` (the pure core on a synthetic fleet),
//! `bench-xds` (a real Meridian process and thousands of ADS streams that ACK like Envoy) and
//! `bench-rest` (the same process and a fleet of proxies polling REST xDS).

mod ads_client;
pub mod maglev;
pub mod rest;
pub mod translate;
pub mod xds;

pub use translate::{fleet, render, rss_bytes, translate_bench, FleetOptions, TranslateReport};
