//! Free ports on this host, for deployments on the host network and servers the tests start.
//! A port is free when both TCP and UDP can bind it on every address; one handed out is never
//! handed out again in this test run, so tests running at once cannot collide.

use std::collections::BTreeSet;
use std::net::{TcpListener, UdpSocket};
use std::sync::Mutex;

static TAKEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Fixed ports come from below Linux's ephemeral range (32768-60999), where outgoing
/// connections never land, and above the default RTP range of a `make up` stack.
const LOW: u16 = 20001;
const HIGH: u16 = 32700;

fn bindable(port: u16) -> bool {
    TcpListener::bind(("0.0.0.0", port)).is_ok() && UdpSocket::bind(("0.0.0.0", port)).is_ok()
}

/// A pseudo-random start point, different per call.
fn spread() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    (h.finish() % u64::from(HIGH - LOW)) as u16
}

/// `n` consecutive free ports; returns the first.
pub fn free_range(n: u16) -> u16 {
    let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
    let span = HIGH - LOW - n;
    let start = spread() % span;
    for i in 0..span {
        let base = LOW + (start + i) % span;
        let range = base..base + n;
        if range.clone().all(|p| !taken.contains(&p) && bindable(p)) {
            taken.extend(range);
            return base;
        }
    }
    panic!("no {n} consecutive free ports between {LOW} and {HIGH}");
}

/// One free port.
pub fn free_port() -> u16 {
    free_range(1)
}
