//! Free host ports for test environments. Parallel `testenv up` runs never pick the same ones:
//! ports are chosen under an exclusive lock, and recorded as reserved (`reservations.json`, with
//! the reserving process's pid) until the container has bound them, so the lock itself is held
//! only for the moment of choosing. Reservations of processes that died are ignored.

use std::fs::File;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::TestenvError;

/// A range of ports, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    /// First port.
    pub start: u16,
    /// Last port.
    pub end: u16,
}

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a port range LOW-HIGH (1024-65535)");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let (start, end): (u16, u16) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
        if start < 1024 || end < start {
            return Err(bad());
        }
        Ok(PortRange { start, end })
    }
}

/// Where ports are looked for: `ASTRTC_TESTENV_PORTS=LOW-HIGH`, else 20000-32767 — below
/// Linux's ephemeral range (32768-60999), where outgoing connections never land, and above a
/// default deployment's RTP range.
pub fn search_range() -> PortRange {
    std::env::var("ASTRTC_TESTENV_PORTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(PortRange { start: 20000, end: 32767 })
}

/// An exclusive `flock` on a file, released when dropped (closing the file releases it).
pub struct Lock {
    _file: File,
}

impl Lock {
    /// Waits for the lock on `path` (created if missing).
    pub fn acquire(path: &Path) -> std::io::Result<Lock> {
        let f = File::options().create(true).truncate(false).write(true).open(path)?;
        // SAFETY: a valid open descriptor; flock touches no memory.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Lock { _file: f })
    }
}

/// The ports of one instance.
#[derive(Debug, Clone, Copy)]
pub struct Chosen {
    /// SIP over UDP.
    pub sip: u16,
    /// WSS.
    pub wss: u16,
    /// Plain HTTP (inside the container, on its loopback; never published).
    pub http: u16,
    /// The RTP range.
    pub rtp: PortRange,
}

fn free(port: u16) -> bool {
    TcpListener::bind(("0.0.0.0", port)).is_ok() && UdpSocket::bind(("0.0.0.0", port)).is_ok()
}

/// A random offset, so instances spread over the range instead of probing from its start.
fn offset(span: u32) -> u32 {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).unwrap_or_default();
    u32::from_le_bytes(b) % span.max(1)
}

/// One reserved block of ports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Reserved {
    start: u16,
    count: u16,
    pid: u32,
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists; no memory is touched.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// Ports chosen for one instance, reserved until this is dropped (once its container has bound
/// them).
pub struct Reservation {
    file: std::path::PathBuf,
    lock: std::path::PathBuf,
    entry: Reserved,
    /// The ports.
    pub chosen: Chosen,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Ok(_lock) = Lock::acquire(&self.lock) {
            let mut all = read_reservations(&self.file);
            all.retain(|r| *r != self.entry);
            let _ = write_reservations(&self.file, &all);
        }
    }
}

fn read_reservations(file: &Path) -> Vec<Reserved> {
    std::fs::read(file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

fn write_reservations(file: &Path, all: &[Reserved]) -> std::io::Result<()> {
    crate::fsx::write_atomic(file, &serde_json::to_vec(all).unwrap_or_default(), 0o600)
}

/// Under the lock in `dir`: runs `before` (e.g. making the shared CA once), chooses `rtp + 3`
/// consecutive free ports that no live process has reserved, and reserves them.
pub fn reserve(
    dir: &Path,
    range: PortRange,
    rtp: u16,
    before: impl FnOnce() -> Result<(), TestenvError>,
) -> Result<Reservation, TestenvError> {
    let lock_path = dir.join("ports.lock");
    let file = dir.join("reservations.json");
    let state = |source| TestenvError::State { path: dir.to_path_buf(), source };
    let _lock = Lock::acquire(&lock_path).map_err(state)?;
    before()?;
    let mut all: Vec<Reserved> = read_reservations(&file).into_iter().filter(|r| alive(r.pid)).collect();
    let taken = |p: u16| all.iter().any(|r| (r.start..r.start + r.count).contains(&p));
    let chosen = choose(range, rtp, &taken)?;
    let entry = Reserved { start: chosen.sip, count: rtp + 3, pid: std::process::id() };
    all.push(entry.clone());
    write_reservations(&file, &all).map_err(|source| TestenvError::State { path: file.clone(), source })?;
    Ok(Reservation { file, lock: lock_path, entry, chosen })
}

/// Chooses `rtp + 3` consecutive free ports (not `taken`): SIP, WSS, HTTP, then the RTP range.
fn choose(range: PortRange, rtp: u16, taken: &dyn Fn(u16) -> bool) -> Result<Chosen, TestenvError> {
    let count = rtp + 3;
    let width = u32::from(range.end) - u32::from(range.start) + 1;
    if width < u32::from(count) {
        return Err(TestenvError::NoPorts { range, count });
    }
    let span = width - u32::from(count) + 1;
    let first = offset(span);
    for i in 0..span {
        let base = range.start + ((first + i) % span) as u16;
        if (base..base + count).all(|p| !taken(p) && free(p)) {
            return Ok(Chosen {
                sip: base,
                wss: base + 1,
                http: base + 2,
                rtp: PortRange { start: base + 3, end: base + count - 1 },
            });
        }
    }
    Err(TestenvError::NoPorts { range, count })
}
