//! Which of a name's zones answer one query: the client's own zone when its network is listed
//! in `spec.sourceZones`, else the most preferred priority, where differing weights pick one
//! zone per query in proportion.
//!
//! Recursive resolvers reorder the records of an answer, so "own zone first" cannot be
//! expressed by order: a zone is chosen by leaving the others out.

use ::core::net::IpAddr;

use super::{NameRecords, ZoneAddresses};

/// The address family a query asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl ZoneAddresses {
    fn has(&self, family: Family) -> bool {
        match family {
            Family::V4 => !self.v4.is_empty(),
            Family::V6 => !self.v6.is_empty(),
        }
    }
}

impl NameRecords {
    /// The zones whose `family` addresses answer a query from `client` (its source address,
    /// or the EDNS Client Subnet its resolver sent). `ticket` is a counter the server advances
    /// per query: over any `sum of weights` consecutive tickets each zone of the preferred
    /// priority is chosen exactly `weight` times.
    pub fn answer(
        &self,
        family: Family,
        client: Option<IpAddr>,
        ticket: u64,
    ) -> Vec<&ZoneAddresses> {
        let candidates: Vec<&ZoneAddresses> = self.zones.iter().filter(|z| z.has(family)).collect();
        if let Some(own) = client.and_then(|client| self.zone_of_client(client)) {
            let local: Vec<&ZoneAddresses> = candidates
                .iter()
                .copied()
                .filter(|z| z.zone == own)
                .collect();
            if !local.is_empty() {
                return local;
            }
        }
        let Some(best) = candidates.iter().map(|z| z.priority).min() else {
            return Vec::new();
        };
        let tier: Vec<&ZoneAddresses> = candidates
            .into_iter()
            .filter(|z| z.priority == best)
            .collect();
        let total: u64 = tier.iter().map(|z| u64::from(z.weight)).sum();
        if total == 0 || tier.iter().all(|z| z.weight == tier[0].weight) {
            return tier;
        }
        let mut point = ticket % total;
        for zone in &tier {
            let weight = u64::from(zone.weight);
            if point < weight {
                return vec![zone];
            }
            point -= weight;
        }
        tier
    }

    /// Whether answers depend on the client's network (so an EDNS Client Subnet reply must
    /// carry a scope).
    pub fn source_aware(&self) -> bool {
        !self.sources.is_empty()
    }

    fn zone_of_client(&self, client: IpAddr) -> Option<&str> {
        self.sources
            .iter()
            .find(|(net, _)| net.contains(&client))
            .map(|(_, zone)| zone.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnet::IpNet;

    fn zone(name: &str, priority: u32, weight: u32, v4: &str) -> ZoneAddresses {
        ZoneAddresses {
            zone: name.to_owned(),
            priority,
            weight,
            v4: vec![v4.parse().unwrap()],
            v6: Vec::new(),
        }
    }

    fn names(zones: Vec<&ZoneAddresses>) -> Vec<&str> {
        zones.into_iter().map(|z| z.zone.as_str()).collect()
    }

    fn name(zones: Vec<ZoneAddresses>, sources: &[(&str, &str)]) -> NameRecords {
        NameRecords {
            zones,
            sources: sources
                .iter()
                .map(|(net, zone)| (net.parse::<IpNet>().unwrap(), zone.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn equal_preferences_answer_every_zone() {
        let n = name(
            vec![zone("a", 0, 1, "192.0.2.1"), zone("b", 0, 1, "192.0.2.2")],
            &[],
        );
        assert_eq!(names(n.answer(Family::V4, None, 7)), ["a", "b"]);
        assert!(n.answer(Family::V6, None, 7).is_empty(), "no AAAA anywhere");
    }

    #[test]
    fn weights_split_queries_exactly_in_proportion() {
        let n = name(
            vec![
                zone("local", 0, 99, "192.0.2.1"),
                zone("remote", 0, 1, "192.0.2.2"),
            ],
            &[],
        );
        let mut counts = std::collections::BTreeMap::new();
        for ticket in 1_000..1_100 {
            for z in n.answer(Family::V4, None, ticket) {
                *counts.entry(z.zone.clone()).or_insert(0) += 1;
            }
        }
        assert_eq!(counts["local"], 99);
        assert_eq!(counts["remote"], 1);
    }

    #[test]
    fn only_the_lowest_priority_with_addresses_is_answered() {
        let mut backup = zone("backup", 1, 1, "192.0.2.9");
        backup.v6 = vec!["2001:db8::9".parse().unwrap()];
        let n = name(vec![zone("primary", 0, 1, "192.0.2.1"), backup], &[]);
        assert_eq!(names(n.answer(Family::V4, None, 0)), ["primary"]);
        assert_eq!(
            names(n.answer(Family::V6, None, 0)),
            ["backup"],
            "the preferred zone has no AAAA: the next priority answers it"
        );
    }

    #[test]
    fn a_client_in_a_listed_network_gets_its_own_zone() {
        let n = name(
            vec![zone("a", 0, 99, "192.0.2.1"), zone("b", 0, 1, "192.0.2.2")],
            &[
                ("10.2.0.0/16", "b"),
                ("10.3.0.0/16", "gone"),
                ("10.0.0.0/8", "a"),
            ],
        );
        let client = |ip: &str| Some(ip.parse::<IpAddr>().unwrap());
        assert!(n.source_aware());
        for ticket in 0..100 {
            assert_eq!(
                names(n.answer(Family::V4, client("10.2.3.4"), ticket)),
                ["b"]
            );
            assert_eq!(
                names(n.answer(Family::V4, client("10.9.3.4"), ticket)),
                ["a"]
            );
        }
        assert_eq!(
            names(n.answer(Family::V4, client("10.3.0.1"), 99)),
            ["b"],
            "its zone has nothing to answer: the preference decides"
        );
        assert_eq!(names(n.answer(Family::V4, client("203.0.113.1"), 0)), ["a"]);
    }
}
