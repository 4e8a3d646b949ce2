//! Locality-aware load balancing, as Istio's `localityLbSetting` does it: a gateway prefers
//! endpoints near it and fails over outward (Envoy priorities), or spreads traffic by explicit
//! percentages (`distribute`, Envoy locality weights).
//!
//! Priorities, nearest first: same region and zone; same region; the `failover` target region;
//! everything else. Empty levels are dropped, because Envoy needs priorities without gaps.
//! Envoy moves traffic to the next level as the healthy share of one level drops (outlier
//! ejection, or endpoints removed or not ready), and back as it recovers.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::istio::LocalityLbSetting;

/// `(region, zone, sub_zone)`.
pub type Locality = (String, String, String);

/// Where each locality's endpoints go: their Envoy priority, and a weight when distributing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub priority: u32,
    /// Locality weight (only with `distribute`); 0 means no traffic.
    pub weight: Option<u32>,
}

/// Places every locality for a gateway in `gateway` (region, zone).
pub fn place(
    localities: &BTreeSet<Locality>,
    gateway: (&str, &str),
    setting: Option<&LocalityLbSetting>,
) -> BTreeMap<Locality, Placement> {
    if setting.is_some_and(|s| s.enabled == Some(false)) {
        return uniform(localities);
    }
    if let Some(setting) = setting.filter(|s| !s.distribute.is_empty()) {
        return distribute(localities, gateway, setting);
    }
    let failover_to = setting.and_then(|s| {
        s.failover
            .iter()
            .find(|f| f.from == gateway.0)
            .map(|f| f.to.as_str())
    });
    let level = |l: &Locality| -> u32 {
        if l.0 == gateway.0 && l.1 == gateway.1 {
            0
        } else if l.0 == gateway.0 {
            1
        } else if Some(l.0.as_str()) == failover_to {
            2
        } else {
            3
        }
    };
    let used: BTreeSet<u32> = localities.iter().map(level).collect();
    let compact: BTreeMap<u32, u32> = used.into_iter().zip(0..).collect();
    localities
        .iter()
        .map(|l| {
            (
                l.clone(),
                Placement {
                    priority: compact[&level(l)],
                    weight: None,
                },
            )
        })
        .collect()
}

/// Whether a cluster needs Envoy's locality-weighted load balancing for this setting.
pub fn uses_weights(setting: Option<&LocalityLbSetting>) -> bool {
    setting.is_some_and(|s| s.enabled != Some(false) && !s.distribute.is_empty())
}

fn uniform(localities: &BTreeSet<Locality>) -> BTreeMap<Locality, Placement> {
    localities
        .iter()
        .map(|l| {
            (
                l.clone(),
                Placement {
                    priority: 0,
                    weight: None,
                },
            )
        })
        .collect()
}

/// Percentages from the first rule whose `from` matches the gateway, split evenly among the
/// localities each `to` pattern matches. Localities no pattern matches get no traffic. With no
/// matching rule every locality gets an equal weight (a weighted cluster must weigh them all).
fn distribute(
    localities: &BTreeSet<Locality>,
    gateway: (&str, &str),
    setting: &LocalityLbSetting,
) -> BTreeMap<Locality, Placement> {
    let at = |weight| Placement {
        priority: 0,
        weight: Some(weight),
    };
    let gateway_locality = (gateway.0.to_owned(), gateway.1.to_owned(), String::new());
    let Some(rule) = setting
        .distribute
        .iter()
        .find(|r| matches(&r.from, &gateway_locality))
    else {
        return localities.iter().map(|l| (l.clone(), at(1))).collect();
    };
    let pattern_of = |l: &Locality| rule.to.keys().find(|p| matches(p, l));
    let mut members: BTreeMap<&String, u32> = BTreeMap::new();
    for l in localities {
        if let Some(p) = pattern_of(l) {
            *members.entry(p).or_default() += 1;
        }
    }
    localities
        .iter()
        .map(|l| {
            let weight = pattern_of(l)
                .map(|p| rule.to[p] * 1000 / members[p])
                .unwrap_or(0);
            (l.clone(), at(weight))
        })
        .collect()
}

/// `region/zone/sub_zone` patterns; `*` matches anything and missing parts match anything.
pub fn matches(pattern: &str, locality: &Locality) -> bool {
    let parts = [&locality.0, &locality.1, &locality.2];
    pattern
        .split('/')
        .zip(parts)
        .all(|(want, have)| want == "*" || want == have)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::istio::{LocalityDistribute, LocalityFailover};

    fn loc(region: &str, zone: &str) -> Locality {
        (region.to_owned(), zone.to_owned(), String::new())
    }

    fn all() -> BTreeSet<Locality> {
        [
            loc("eu", "eu-1"),
            loc("eu", "eu-2"),
            loc("us", "us-1"),
            loc("ap", "ap-1"),
        ]
        .into()
    }

    fn priorities(placed: &BTreeMap<Locality, Placement>) -> Vec<(String, u32)> {
        placed
            .iter()
            .map(|(l, p)| (l.1.clone(), p.priority))
            .collect()
    }

    #[test]
    fn nearest_first_with_failover_region_and_no_gaps() {
        let placed = place(&all(), ("eu", "eu-1"), None);
        assert_eq!(
            priorities(&placed),
            [
                ("ap-1".into(), 2),
                ("eu-1".into(), 0),
                ("eu-2".into(), 1),
                ("us-1".into(), 2)
            ]
        );
        let setting = LocalityLbSetting {
            failover: vec![LocalityFailover {
                from: "eu".into(),
                to: "us".into(),
            }],
            ..Default::default()
        };
        let placed = place(&all(), ("eu", "eu-1"), Some(&setting));
        assert_eq!(
            priorities(&placed),
            [
                ("ap-1".into(), 3),
                ("eu-1".into(), 0),
                ("eu-2".into(), 1),
                ("us-1".into(), 2)
            ]
        );
        // Without local endpoints the nearest remaining level becomes priority 0.
        let remote: BTreeSet<Locality> = [loc("eu", "eu-2"), loc("us", "us-1")].into();
        assert_eq!(
            priorities(&place(&remote, ("eu", "eu-1"), None)),
            [("eu-2".into(), 0), ("us-1".into(), 1)]
        );
    }

    #[test]
    fn disabled_means_one_level() {
        let setting = LocalityLbSetting {
            enabled: Some(false),
            ..Default::default()
        };
        let placed = place(&all(), ("eu", "eu-1"), Some(&setting));
        assert!(placed
            .values()
            .all(|p| p.priority == 0 && p.weight.is_none()));
    }

    #[test]
    fn distribute_splits_percentages_among_matching_localities() {
        let setting = LocalityLbSetting {
            distribute: vec![LocalityDistribute {
                from: "eu/eu-1/*".into(),
                to: [("eu/eu-1/*".to_owned(), 99), ("us/*".to_owned(), 1)].into(),
            }],
            ..Default::default()
        };
        let placed = place(&all(), ("eu", "eu-1"), Some(&setting));
        let weight = |zone: &str| placed[&loc(zone.split('-').next().unwrap(), zone)].weight;
        assert_eq!(weight("eu-1"), Some(99_000));
        assert_eq!(weight("us-1"), Some(1_000));
        assert_eq!(weight("eu-2"), Some(0));
        assert!(placed.values().all(|p| p.priority == 0));
        // A gateway no rule covers weighs every locality equally.
        let elsewhere = place(&all(), ("us", "us-1"), Some(&setting));
        assert!(elsewhere.values().all(|p| p.weight == Some(1)));
        assert!(uses_weights(Some(&setting)));
    }
}
