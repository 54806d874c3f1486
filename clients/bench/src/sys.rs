//! What the kernel says about a process and a directory: CPU seconds and
//! resident memory from `/proc/<pid>/{stat,status}`, and the bytes a data
//! directory holds on disk. Linux only; a missing pid is an error, never a 0.

use std::collections::HashMap;
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

/// The command name and user plus system CPU ticks of one
/// `/proc/<pid>/stat` or `/proc/<pid>/task/<tid>/stat` text.
fn parse_stat(stat: &str) -> Result<(String, u64)> {
    // The name is in parentheses and may itself hold spaces and
    // parentheses: it runs from the first '(' to the last ')'.
    let (head, rest) = stat
        .rsplit_once(')')
        .ok_or_else(|| anyhow!("a stat line without a command name"))?;
    let name = head
        .split_once('(')
        .map(|(_, name)| name)
        .ok_or_else(|| anyhow!("a stat line without a command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
    let ticks = |i: usize| -> Result<u64> {
        let field = fields
            .get(i)
            .ok_or_else(|| anyhow!("a stat line that is too short"))?;
        Ok(field.parse::<u64>()?)
    };
    Ok((name.to_owned(), ticks(11)? + ticks(12)?))
}

/// Read `pid`'s CPU seconds, RSS and peak RSS.
pub fn sample(pid: u32) -> Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat (is {pid} running?)"))?;
    let (_, ticks) = parse_stat(&stat).with_context(|| format!("/proc/{pid}/stat"))?;
    let cpu_secs = ticks as f64 / TICKS_PER_SEC;
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

/// One reading of every thread of a process: tid → (name, CPU ticks).
#[derive(Debug, Clone, Default)]
pub struct ThreadSample(HashMap<u32, (String, u64)>);

/// Read the name and CPU ticks of each of `pid`'s threads. A thread that
/// ends while they are read is skipped.
pub fn sample_threads(pid: u32) -> Result<ThreadSample> {
    let dir = format!("/proc/{pid}/task");
    let mut threads = HashMap::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        threads.insert(tid, parse_stat(&stat)?);
    }
    Ok(ThreadSample(threads))
}

/// CPU seconds each group of threads used from `start` to `end`, largest
/// first. Threads are grouped by name without a trailing number
/// (`sled-io-3` counts as `sled-io`). A thread that ended in between is
/// left out; one that started counts from zero.
pub fn thread_cpu_between(start: &ThreadSample, end: &ThreadSample) -> Vec<(String, f64)> {
    let mut groups: HashMap<&str, u64> = HashMap::new();
    for (tid, (name, ticks)) in &end.0 {
        let before = start.0.get(tid).map_or(0, |(_, t)| *t);
        *groups.entry(thread_group(name)).or_default() += ticks.saturating_sub(before);
    }
    let mut groups: Vec<(String, f64)> = groups
        .into_iter()
        .map(|(name, ticks)| (name.to_owned(), ticks as f64 / TICKS_PER_SEC))
        .collect();
    groups.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    groups
}

/// A thread's name without a trailing number and its separator.
fn thread_group(name: &str) -> &str {
    let trimmed = name.trim_end_matches(|c: char| c.is_ascii_digit());
    if trimmed.len() == name.len() {
        return name;
    }
    let trimmed = trimmed.trim_end_matches(['-', '_', ' ', '#']);
    if trimmed.is_empty() {
        name
    } else {
        trimmed
    }
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
    fn a_stat_line_gives_name_and_ticks_whatever_the_name_holds() {
        let line = "4242 (tokio (rt) 1) S 1 2 3 4 5 6 7 8 9 10 250 31 0 0 20 0 9 0";
        assert_eq!(parse_stat(line).unwrap(), ("tokio (rt) 1".to_owned(), 281));
        assert!(parse_stat("4242 tokio S 1").is_err());
        assert!(parse_stat("4242 (tokio) S 1 2").is_err());
    }

    #[test]
    fn threads_are_grouped_by_name_without_their_number() {
        assert_eq!(thread_group("sled-io-3"), "sled-io");
        assert_eq!(thread_group("pigeon-hash-12"), "pigeon-hash");
        assert_eq!(thread_group("pigeon-committe"), "pigeon-committe");
        assert_eq!(thread_group("1234"), "1234");
        let start = ThreadSample(HashMap::from([
            (1, ("sled-io-0".to_owned(), 100)),
            (2, ("sled-io-1".to_owned(), 50)),
            (3, ("writer".to_owned(), 10)),
            (4, ("gone".to_owned(), 70)),
        ]));
        let end = ThreadSample(HashMap::from([
            (1, ("sled-io-0".to_owned(), 150)),
            (2, ("sled-io-1".to_owned(), 75)),
            (3, ("writer".to_owned(), 310)),
            (5, ("new-1".to_owned(), 20)),
        ]));
        assert_eq!(
            thread_cpu_between(&start, &end),
            vec![
                ("writer".to_owned(), 3.0),
                ("sled-io".to_owned(), 0.75),
                ("new".to_owned(), 0.2)
            ]
        );
    }

    #[test]
    fn a_busy_thread_of_this_process_is_counted_under_its_name() {
        let start = sample_threads(std::process::id()).unwrap();
        let busy = std::thread::Builder::new()
            .name("bench-spin-7".into())
            .spawn(|| {
                // Spin until the kernel has counted two ticks of this
                // thread's CPU; bounded by a 10 s deadline.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                let mut x = 0u64;
                loop {
                    for _ in 0..100_000 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                    let now = sample_threads(std::process::id()).unwrap();
                    let counted = now
                        .0
                        .values()
                        .any(|(name, t)| name == "bench-spin-7" && *t >= 2);
                    if counted || std::time::Instant::now() > deadline {
                        return now;
                    }
                }
            })
            .unwrap();
        let end = busy.join().unwrap();
        let groups = thread_cpu_between(&start, &end);
        let spun = groups.iter().find(|(name, _)| name == "bench-spin");
        assert!(spun.is_some_and(|(_, secs)| *secs > 0.0), "{groups:?}");
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
