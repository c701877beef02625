//! CPU time, measured rather than inferred from wall time: the Asterisk container's from its
//! cgroup (cgroup v1 `cpuacct.usage`, or v2 `cpu.stat`'s `usage_usec`), found through the
//! cgroup file of its main process; and this process's own from `getrusage` (user + system, all
//! threads). Both are read at the start and the end of a measurement window; the difference is
//! what the window cost.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a container's CPU counter is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupCpu {
    /// cgroup v1: nanoseconds in `cpuacct.usage`.
    V1(PathBuf),
    /// cgroup v2: `usage_usec` in `cpu.stat`.
    V2(PathBuf),
}

impl CgroupCpu {
    /// The counter of the cgroup process `pid` is in (as this host's `/proc` and `/sys/fs/cgroup`
    /// show it): v1's cpuacct controller first (a hybrid host has both, and v2's unified tree
    /// may hold no controllers), then v2.
    pub fn of_pid(pid: u32) -> Result<CgroupCpu, String> {
        let file = format!("/proc/{pid}/cgroup");
        let text = std::fs::read_to_string(&file).map_err(|e| format!("cannot read {file}: {e}"))?;
        Self::from_proc_cgroup(&text, Path::new("/sys/fs/cgroup"))
            .ok_or_else(|| format!("no readable CPU counter for the cgroup of process {pid} ({})", text.trim()))
    }

    /// The counter named by a `/proc/PID/cgroup` text under `root`, if one is readable.
    pub fn from_proc_cgroup(text: &str, root: &Path) -> Option<CgroupCpu> {
        let mut candidates = Vec::new();
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let rel = path.trim_start_matches('/');
            if controllers.split(',').any(|c| c == "cpuacct") {
                for dir in ["cpuacct", "cpu,cpuacct", "cpuacct,cpu"] {
                    candidates.push(CgroupCpu::V1(root.join(dir).join(rel).join("cpuacct.usage")));
                }
            } else if controllers.is_empty() {
                candidates.push(CgroupCpu::V2(root.join(rel).join("cpu.stat")));
                candidates.push(CgroupCpu::V2(root.join("unified").join(rel).join("cpu.stat")));
            }
        }
        candidates.into_iter().find(|c| c.read().is_some())
    }

    /// CPU time used so far by every process of the cgroup.
    pub fn read(&self) -> Option<Duration> {
        match self {
            CgroupCpu::V1(p) => {
                let ns: u64 = std::fs::read_to_string(p).ok()?.trim().parse().ok()?;
                Some(Duration::from_nanos(ns))
            }
            CgroupCpu::V2(p) => {
                let text = std::fs::read_to_string(p).ok()?;
                let us: u64 =
                    text.lines().find_map(|l| l.strip_prefix("usage_usec ")).and_then(|v| v.trim().parse().ok())?;
                Some(Duration::from_micros(us))
            }
        }
    }
}

/// CPU time this process has used so far (user + system, every thread).
pub fn own_cpu() -> Duration {
    // SAFETY: getrusage writes into the struct we pass and reads nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_v1_counter_of_a_hybrid_host_and_the_v2_one_of_a_unified_host() {
        let root = tempfile::tempdir().unwrap();
        let id = "docker/abc";
        let v1 = root.path().join("cpuacct").join(id);
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("cpuacct.usage"), "1500000000\n").unwrap();
        let hybrid = format!("2:cpuacct:/{id}\n1:cpu:/{id}\n0::/{id}\n");
        let c = CgroupCpu::from_proc_cgroup(&hybrid, root.path()).unwrap();
        assert_eq!(c.read(), Some(Duration::from_millis(1500)));

        let unified = tempfile::tempdir().unwrap();
        let v2 = unified.path().join("system.slice/docker-abc.scope");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("cpu.stat"), "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n").unwrap();
        let c = CgroupCpu::from_proc_cgroup("0::/system.slice/docker-abc.scope\n", unified.path()).unwrap();
        assert_eq!(c.read(), Some(Duration::from_micros(2500)));
        assert_eq!(CgroupCpu::from_proc_cgroup("0::/nowhere\n", unified.path()), None);
    }

    #[test]
    fn own_cpu_grows_with_work() {
        let before = own_cpu();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(own_cpu() > before);
    }
}
