//! Which VIPs an L4 node announces, and the BIRD configuration that announces them. A node
//! announces a VIP while it can serve it — at least one of its listeners on the VIP has a
//! gateway available — so the routers' ECMP only sends a flow to nodes that can take it; it
//! withdraws every VIP when it drains.
//!
//! The routing daemon is the operator's BIRD 2: its `bird.conf` includes the file rendered
//! here and exports these static protocols' routes over its BGP sessions. The routes are
//! `blackhole` in BIRD's tables only; nothing is exported to the node's kernel.

use ::core::net::IpAddr;
use std::collections::BTreeSet;
use std::fmt::Write;

/// The static protocols' names: `meridian_vips4` and `meridian_vips6`.
pub const PROTOCOL_PREFIX: &str = "meridian_vips";

/// The VIPs to announce: those of `listeners` (their address and whether they can take
/// connections) with at least one that can.
pub fn servable(listeners: impl IntoIterator<Item = (IpAddr, bool)>) -> BTreeSet<IpAddr> {
    listeners
        .into_iter()
        .filter(|(_, serving)| *serving)
        .map(|(vip, _)| vip)
        .collect()
}

/// The file `bird.conf` includes: one static protocol per address family, a host route per
/// VIP (an empty protocol announces nothing).
pub fn bird_config(vips: &BTreeSet<IpAddr>) -> String {
    let mut out = String::from(
        "# Written by meridian l4: the VIPs this node can serve. Do not edit; include it from\n\
         # bird.conf and export these protocols over BGP, e.g.\n\
         #   export where proto ~ \"meridian_vips*\";\n",
    );
    for (family, v4) in [("ipv4", true), ("ipv6", false)] {
        let suffix = if v4 { '4' } else { '6' };
        let _ = writeln!(out, "protocol static {PROTOCOL_PREFIX}{suffix} {{");
        let _ = writeln!(out, "  {family};");
        for vip in vips.iter().filter(|vip| vip.is_ipv4() == v4) {
            let length = if v4 { 32 } else { 128 };
            let _ = writeln!(out, "  route {vip}/{length} blackhole;");
        }
        out.push_str("}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vip_is_announced_while_any_of_its_listeners_can_serve() {
        let a: IpAddr = "10.100.0.1".parse().unwrap();
        let b: IpAddr = "10.100.0.2".parse().unwrap();
        let vips = servable([(a, false), (a, true), (b, false)]);
        assert_eq!(vips, BTreeSet::from([a]));
    }

    #[test]
    fn the_bird_file_has_a_host_route_per_vip_in_its_family() {
        let vips = BTreeSet::from([
            "10.100.0.2".parse().unwrap(),
            "2001:db8::7".parse().unwrap(),
            "10.100.0.1".parse().unwrap(),
        ]);
        let text = bird_config(&vips);
        let body: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            body,
            [
                "protocol static meridian_vips4 {",
                "  ipv4;",
                "  route 10.100.0.1/32 blackhole;",
                "  route 10.100.0.2/32 blackhole;",
                "}",
                "protocol static meridian_vips6 {",
                "  ipv6;",
                "  route 2001:db8::7/128 blackhole;",
                "}",
            ]
        );
        // Nothing to announce: the protocols stay, empty.
        assert!(!bird_config(&BTreeSet::new()).contains("route"));
    }
}
