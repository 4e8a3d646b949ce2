use std::collections::BTreeSet;

use super::*;

const SIZE: u64 = 251;

fn table(hosts: &[&str], excluded: &[&str]) -> L4Table {
    let assignment = super::super::tests::assignment(&[(0, hosts)]);
    let excluded: BTreeSet<String> = excluded.iter().map(|h| format!("{h}:8080")).collect();
    L4Table::build(&assignment, &excluded, 0.0, SIZE).expect("table")
}

fn key(port: u16) -> ServiceKey {
    ServiceKey {
        vip: Ipv4Addr::new(192, 0, 2, 10),
        port,
        protocol: TCP,
    }
}

fn service<'a>(port: u16, table: &'a L4Table) -> PacketService<'a> {
    PacketService {
        key: key(port),
        cluster: "shop",
        idle_timeout: Some(Duration::from_secs(60)),
        table,
    }
}

fn limits() -> Limits {
    Limits {
        services: 4,
        backends: 8,
        table_size: 257,
    }
}

/// What the maps hold after applying `writes` to `maps`, the way the loader does.
#[derive(Default, Debug)]
struct Maps {
    backends: BTreeMap<u32, (SocketAddrV4, bool)>,
    maglev: BTreeMap<u32, u32>,
    services: BTreeMap<ServiceKey, (u32, u32)>,
}

impl Maps {
    fn apply(&mut self, writes: &[Write]) {
        for write in writes {
            match write {
                Write::Backend {
                    slot,
                    address,
                    available,
                } => {
                    self.backends.insert(*slot, (*address, *available));
                }
                Write::Entries(changes) => {
                    for (index, slot) in changes {
                        // Every entry names a slot already written and available.
                        assert!(
                            self.backends.get(slot).is_some_and(|(_, a)| *a),
                            "entry {index} names slot {slot} before it is written"
                        );
                        self.maglev.insert(*index, *slot);
                    }
                }
                Write::Service {
                    key, offset, size, ..
                } => {
                    self.services.insert(*key, (*offset, *size));
                }
                Write::RemoveService(key) => {
                    self.services.remove(key);
                }
            }
        }
    }

    /// The gateway a packet of a flow hashing to `hash` is sent to.
    fn lookup(&self, key: ServiceKey, hash: u64) -> Option<SocketAddrV4> {
        let (offset, size) = self.services.get(&key)?;
        let index = offset + u32::try_from(hash % u64::from(*size)).ok()?;
        let slot = self.maglev.get(&index)?;
        self.backends
            .get(slot)
            .filter(|(_, available)| *available)
            .map(|(a, _)| *a)
    }
}

#[test]
fn the_packet_path_picks_what_the_user_space_table_picks() {
    let t = table(&["10.0.0.1", "10.0.0.2", "10.0.0.3"], &[]);
    let mut tables = PacketTables::new(limits());
    let update = tables.update(&[service(80, &t)]);
    assert!(update.skipped.is_empty());
    let mut maps = Maps::default();
    maps.apply(&update.writes);
    for hash in (0..5_000u64).map(|h| h.wrapping_mul(0x9E37_79B9_7F4A_7C15)) {
        let expected = t.pick(hash, &[]).map(|g| g.address);
        assert_eq!(maps.lookup(key(80), hash).map(Into::into), expected);
    }
}

#[test]
fn an_unchanged_table_writes_nothing_and_a_failed_gateway_writes_few_entries() {
    let hosts = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"];
    let all = table(&hosts, &[]);
    let mut tables = PacketTables::new(limits());
    let mut maps = Maps::default();
    maps.apply(&tables.update(&[service(80, &all)]).writes);
    assert_eq!(tables.update(&[service(80, &all)]), Update::default());

    let without = table(&hosts, &["10.0.0.2"]);
    let update = tables.update(&[service(80, &without)]);
    let entries: usize = update
        .writes
        .iter()
        .map(|w| match w {
            Write::Entries(changes) => changes.len(),
            _ => 0,
        })
        .sum();
    // Only 10.0.0.2's share moves (about a quarter), and its slot is marked unavailable last.
    assert!(entries < 251 / 3, "{entries} entries rewritten");
    assert!(matches!(
        update.writes.last(),
        Some(Write::Backend { available: false, address, .. }) if address.ip().octets() == [10, 0, 0, 2]
    ));
    maps.apply(&update.writes);
    for hash in 0..2_000u64 {
        let expected = without.pick(hash, &[]).map(|g| g.address);
        assert_eq!(maps.lookup(key(80), hash).map(Into::into), expected);
    }
}

#[test]
fn gateways_keep_their_slots_while_they_stay_in_a_table() {
    let first = table(&["10.0.0.1", "10.0.0.2"], &[]);
    let second = table(&["10.0.0.2", "10.0.0.3"], &[]);
    let mut tables = PacketTables::new(limits());
    let mut maps = Maps::default();
    maps.apply(&tables.update(&[service(80, &first)]).writes);
    let slot_of = |maps: &Maps, last: u8| {
        maps.backends
            .iter()
            .find(|(_, (a, available))| *available && a.ip().octets()[3] == last)
            .map(|(slot, _)| *slot)
    };
    let before = slot_of(&maps, 2);
    maps.apply(&tables.update(&[service(80, &second)]).writes);
    assert_eq!(slot_of(&maps, 2), before);
    assert!(
        slot_of(&maps, 1).is_none(),
        "10.0.0.1 left: its slot is unavailable"
    );
    assert!(slot_of(&maps, 3).is_some());
}

#[test]
fn what_does_not_fit_stays_on_the_user_space_path_and_the_rest_is_served() {
    let t = table(&["10.0.0.1"], &[]);
    let mut tables = PacketTables::new(Limits {
        services: 2,
        ..limits()
    });
    let update = tables.update(&[service(80, &t), service(81, &t), service(82, &t)]);
    assert_eq!(
        update.skipped,
        vec![(key(82), Skipped::NoServiceSlot { limit: 2 })]
    );
    assert_eq!(tables.services(), 2);

    let mut small = PacketTables::new(Limits {
        table_size: 100,
        ..limits()
    });
    let update = small.update(&[service(80, &t)]);
    assert_eq!(
        update.skipped,
        vec![(
            key(80),
            Skipped::TableTooLarge {
                size: 251,
                limit: 100
            }
        )]
    );
    assert!(update.writes.is_empty());
}

#[test]
fn an_ipv6_gateway_keeps_its_service_off_the_packet_path() {
    let t = table(&["10.0.0.1", "2001:db8::1"], &[]);
    let mut tables = PacketTables::new(limits());
    let update = tables.update(&[service(80, &t)]);
    assert!(matches!(
        update.skipped.as_slice(),
        [(_, Skipped::NotIpv4(_))]
    ));
    assert!(update.writes.is_empty());
}

#[test]
fn a_removed_service_is_removed_and_its_gateways_marked_unavailable() {
    let t = table(&["10.0.0.1"], &[]);
    let mut tables = PacketTables::new(limits());
    let mut maps = Maps::default();
    maps.apply(&tables.update(&[service(80, &t)]).writes);
    let update = tables.update(&[]);
    assert_eq!(
        update.writes,
        vec![
            Write::RemoveService(key(80)),
            Write::Backend {
                slot: 0,
                address: "10.0.0.1:8080".parse().expect("address"),
                available: false
            }
        ]
    );
    maps.apply(&update.writes);
    assert!(maps.lookup(key(80), 7).is_none());
}

#[test]
fn the_same_inputs_in_any_order_give_the_same_maps() {
    let a = table(&["10.0.0.1", "10.0.0.2"], &[]);
    let b = table(&["10.0.0.3"], &[]);
    let mut one = PacketTables::new(limits());
    let mut two = PacketTables::new(limits());
    let mut first = Maps::default();
    let mut second = Maps::default();
    first.apply(&one.update(&[service(80, &a), service(81, &b)]).writes);
    second.apply(&two.update(&[service(81, &b), service(80, &a)]).writes);
    assert_eq!(first.services, second.services);
    assert_eq!(first.maglev, second.maglev);
    assert_eq!(first.backends, second.backends);
}

#[test]
fn a_plan_whose_writes_failed_is_planned_again() {
    let t = table(&["10.0.0.1", "10.0.0.2"], &[]);
    let mut tables = PacketTables::new(limits());
    let (first, _never_committed) = tables.plan(&[service(80, &t)]);
    let (again, planned) = tables.plan(&[service(80, &t)]);
    assert_eq!(first, again);
    tables.commit(planned);
    assert_eq!(tables.plan(&[service(80, &t)]).0, Update::default());
}
