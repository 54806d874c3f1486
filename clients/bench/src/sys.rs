//! What the kernel says about a process and a directory: CPU seconds and
//! resident memory from `/proc/<pid>/{stat,status}`, and the bytes a data
//! directory holds on disk. Linux only; a missing pid is an error, never a 0.

use std::path::Path;

use anyhow::{anyhow, Context, Result};

/// `/proc/<pid>/stat` counts CPU time in USER_HZ ticks, which the kernel
/// fixes at 100 per second for every user-space ABI (it is not CONFIG_HZ).
const TICKS_PER_SEC: f64 = 100.0;

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// User plus system CPU seconds since the process started.
    pub cpu_secs: f64,
    /// Resident set size now, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size, KiB (`VmHWM`; since start or the last reset).
    pub peak_kib: u64,
}

/// Read `pid`'s CPU seconds, RSS and peak RSS.
pub fn sample(pid: u32) -> Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat (is {pid} running?)"))?;
    // The command name is in parentheses and may hold spaces: split after it.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("/proc/{pid}/stat has no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
    let ticks = |i: usize| -> Result<f64> {
        let field = fields
            .get(i)
            .ok_or_else(|| anyhow!("/proc/{pid}/stat is too short"))?;
        Ok(field.parse::<u64>()? as f64)
    };
    let cpu_secs = (ticks(11)? + ticks(12)?) / TICKS_PER_SEC;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(ProcSample {
        cpu_secs,
        rss_kib: kib("VmRSS:"),
        peak_kib: kib("VmHWM:"),
    })
}

/// Reset `pid`'s peak RSS to its current RSS (`echo 5 > clear_refs`), so a
/// workload's peak is its own. False if the kernel refused (not our process).
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), b"5").is_ok()
}

/// A pid's reading, or None when no pid was given.
pub fn sample_opt(pid: Option<u32>) -> Result<Option<ProcSample>> {
    pid.map(sample).transpose()
}

/// This process's own counters.
pub fn sample_self() -> ProcSample {
    sample(std::process::id()).unwrap_or_default()
}

/// Bytes on disk under `dir`: (allocated blocks × 512, apparent file sizes).
/// Bounded by the tree it walks; symlinks are not followed.
pub fn disk_usage(dir: &Path) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut allocated = 0;
    let mut apparent = 0;
    let mut pending = vec![dir.to_owned()];
    // A compaction may delete files and directories while they are walked:
    // what is gone no longer takes space.
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    while let Some(next) = pending.pop() {
        let entries = match std::fs::read_dir(&next) {
            Err(e) if gone(&e) && next != dir => continue,
            other => other.with_context(|| format!("cannot list {}", next.display()))?,
        };
        for entry in entries {
            let entry = entry?;
            let meta = match entry.metadata() {
                Err(e) if gone(&e) => continue,
                other => other?,
            };
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                allocated += meta.blocks() * 512;
                apparent += meta.len();
            }
        }
    }
    Ok((allocated, apparent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_cpu_and_memory() {
        let me = sample(std::process::id()).unwrap();
        assert!(me.rss_kib > 0 && me.peak_kib >= me.rss_kib);
        assert!(me.cpu_secs >= 0.0);
    }

    #[test]
    fn missing_pid_is_an_error() {
        assert!(sample(u32::MAX).is_err());
    }

    #[test]
    fn disk_usage_counts_files() {
        let dir = std::env::temp_dir().join(format!("pigeon-bench-du-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/a"), vec![1u8; 10_000]).unwrap();
        let (allocated, apparent) = disk_usage(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(apparent, 10_000);
        assert!(allocated >= 8192, "{allocated}");
    }
}
