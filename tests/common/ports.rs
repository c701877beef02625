//! Free ports on this host, for deployments on the host network and servers the tests start.
//! A port is free when both TCP and UDP can bind it on every address; one handed out is not
//! handed out again in this test run, so tests running at once cannot collide.
//!
//! Single ports and ranges come from two separate regions, each handed out in order from a
//! random start (so two test runs at once on one host start far apart): single ports scattered
//! among the ranges would soon leave no long run of free ports.

use std::collections::BTreeSet;
use std::net::{TcpListener, UdpSocket};
use std::sync::Mutex;

/// Ports are chosen below Linux's ephemeral range (32768-60999), where outgoing connections never
/// land, and above the default RTP range of a `make up` stack.
const SINGLES: (u16, u16) = (20001, 23999);
const RANGES: (u16, u16) = (24000, 32700);

struct Region {
    low: u16,
    high: u16,
    next: Option<u16>,
}

struct State {
    taken: BTreeSet<u16>,
    singles: Region,
    ranges: Region,
}

static STATE: Mutex<State> = Mutex::new(State {
    taken: BTreeSet::new(),
    singles: Region { low: SINGLES.0, high: SINGLES.1, next: None },
    ranges: Region { low: RANGES.0, high: RANGES.1, next: None },
});

fn bindable(port: u16) -> bool {
    TcpListener::bind(("0.0.0.0", port)).is_ok() && UdpSocket::bind(("0.0.0.0", port)).is_ok()
}

/// A pseudo-random offset below `span`.
fn spread(span: u16) -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    (h.finish() % u64::from(span)) as u16
}

/// `n` consecutive free ports from `region`, the first at or after its cursor (wrapping).
fn take(taken: &mut BTreeSet<u16>, region: &mut Region, n: u16) -> Option<u16> {
    let span = region.high - region.low + 1 - n;
    let start = region.next.unwrap_or_else(|| region.low + spread(span)) - region.low;
    for i in 0..span {
        let base = region.low + (start + i) % span;
        let range = base..base + n;
        if range.clone().all(|p| !taken.contains(&p) && bindable(p)) {
            taken.extend(range);
            region.next = Some(if base + n - region.low >= span { region.low } else { base + n });
            return Some(base);
        }
    }
    None
}

/// `n` consecutive free ports; returns the first.
pub fn free_range(n: u16) -> u16 {
    let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let State { taken, ranges, .. } = &mut *state;
    take(taken, ranges, n)
        .unwrap_or_else(|| panic!("no {n} consecutive free ports between {} and {}", RANGES.0, RANGES.1))
}

/// One free port.
pub fn free_port() -> u16 {
    let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let State { taken, singles, .. } = &mut *state;
    take(taken, singles, 1).unwrap_or_else(|| panic!("no free port between {} and {}", SINGLES.0, SINGLES.1))
}
