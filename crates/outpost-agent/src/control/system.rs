//! What the device is made of and how busy it is, read from `/proc` and `statvfs`.
//!
//! Parsing is kept apart from reading so it can be tested on fixed text; on systems without
//! `/proc` the numbers are simply zero (a report is still worth sending).

use outpost_proto::fleet::device::{HardwareProfile, SystemReport};
use std::path::Path;

/// Cumulative CPU time from the first line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Ticks spent idle (idle + iowait).
    pub idle: u64,
    /// Ticks in total.
    pub total: u64,
}

/// Parses the aggregate `cpu` line of `/proc/stat`.
pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    if fields.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    let total = fields.iter().take(8).sum();
    Some(CpuTimes { idle, total })
}

/// Percent of CPU time busy between two samples (0 when no time passed).
pub fn cpu_percent(before: CpuTimes, after: CpuTimes) -> f64 {
    let total = after.total.saturating_sub(before.total);
    let idle = after.idle.saturating_sub(before.idle);
    if total == 0 {
        return 0.0;
    }
    (100.0 * total.saturating_sub(idle) as f64 / total as f64).clamp(0.0, 100.0)
}

/// Physical and available memory from `/proc/meminfo`, bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemInfo {
    /// `MemTotal`.
    pub total: u64,
    /// `MemAvailable` (what can be used without swapping).
    pub available: u64,
}

/// Parses `/proc/meminfo` (values are in kB).
pub fn parse_meminfo(text: &str) -> MemInfo {
    let mut info = MemInfo::default();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(key), Some(value)) = (parts.next(), parts.next()) else { continue };
        let Ok(kb) = value.parse::<u64>() else { continue };
        match key {
            "MemTotal:" => info.total = kb * 1024,
            "MemAvailable:" => info.available = kb * 1024,
            _ => {}
        }
    }
    info
}

/// Reads the current CPU times; `None` without `/proc`.
pub fn read_cpu_times() -> Option<CpuTimes> {
    parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// Reads memory totals; zeros without `/proc`.
pub fn read_meminfo() -> MemInfo {
    std::fs::read_to_string("/proc/meminfo").map(|t| parse_meminfo(&t)).unwrap_or_default()
}

/// The agent's resident memory, bytes, from `/proc/self/statm`.
pub fn read_rss_bytes() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/self/statm") else { return 0 };
    let pages: u64 = text.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// Free and total bytes of the filesystem holding `path` (zeros when it cannot be asked).
pub fn disk_space(path: &Path) -> (u64, u64) {
    outpost_outbox::disk_space(path).unwrap_or((0, 0))
}

/// Samples system resource use; CPU percent is measured between consecutive calls.
#[derive(Debug, Default)]
pub struct SystemSampler {
    last_cpu: Option<CpuTimes>,
}

impl SystemSampler {
    /// A sampler whose first CPU figure covers the time since boot.
    pub fn new() -> SystemSampler {
        SystemSampler { last_cpu: None }
    }

    /// Resource use now; `data_dir` names the filesystem whose space is reported.
    pub fn sample(&mut self, data_dir: &Path) -> SystemReport {
        let cpu_now = read_cpu_times();
        let cpu_percent = match cpu_now {
            Some(now) => cpu_percent(self.last_cpu.unwrap_or_default(), now),
            None => 0.0,
        };
        self.last_cpu = cpu_now.or(self.last_cpu);
        let mem = read_meminfo();
        let (disk_free_bytes, disk_total_bytes) = disk_space(data_dir);
        SystemReport {
            cpu_percent,
            mem_used_bytes: mem.total.saturating_sub(mem.available),
            mem_total_bytes: mem.total,
            agent_rss_bytes: read_rss_bytes(),
            disk_free_bytes,
            disk_total_bytes,
        }
    }
}

/// CPU features that matter for inference kernels, as detected at run time.
pub fn cpu_features() -> Vec<String> {
    #[allow(unused_mut)]
    let mut features: Vec<&str> = Vec::new();
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        let detected = [
            ("sse4.1", std::arch::is_x86_feature_detected!("sse4.1")),
            ("avx", std::arch::is_x86_feature_detected!("avx")),
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
        ];
        features.extend(detected.into_iter().filter(|(_, on)| *on).map(|(name, _)| name));
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            features.push("neon");
        }
    }
    features.into_iter().map(String::from).collect()
}

/// The device's hardware profile; `data_dir` names the filesystem whose size is reported.
pub fn hardware_profile(data_dir: &Path) -> HardwareProfile {
    HardwareProfile {
        arch: std::env::consts::ARCH.to_string(),
        os: std::env::consts::OS.to_string(),
        cpu_features: cpu_features(),
        cores: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
        ram_bytes: read_meminfo().total,
        disk_bytes: disk_space(data_dir).1,
        accelerators: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_percent_comes_from_busy_share_of_tick_deltas() {
        let a = parse_proc_stat("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n").unwrap();
        let b = parse_proc_stat("cpu  200 0 200 900 100 0 0 0 0 0\n").unwrap();
        assert_eq!(a, CpuTimes { idle: 800, total: 1000 });
        assert!((cpu_percent(a, b) - 50.0).abs() < 1e-9);
        assert_eq!(cpu_percent(b, b), 0.0);
        assert_eq!(parse_proc_stat("intr 1 2 3"), None);
    }

    #[test]
    fn meminfo_values_are_converted_from_kilobytes() {
        let m = parse_meminfo("MemTotal:       2048 kB\nMemFree: 10 kB\nMemAvailable:   1024 kB\n");
        assert_eq!(m, MemInfo { total: 2048 * 1024, available: 1024 * 1024 });
    }

    #[test]
    fn hardware_profile_describes_this_machine() {
        let hw = hardware_profile(Path::new("."));
        assert_eq!(hw.arch, std::env::consts::ARCH);
        assert!(hw.cores >= 1);
        if cfg!(target_os = "linux") {
            assert!(hw.ram_bytes > 0 && hw.disk_bytes > 0);
        }
    }
}
