//! What the system says about this process's memory: how much it may still allocate and how much it
//! has used at most. Linux only (`/proc`, cgroup v2); `None` elsewhere.

/// Memory this process may still allocate, as far as the system says: Linux's `MemAvailable`, bounded
/// by the cgroup (v2) limit less its usage. `None` where unknown.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?.split_whitespace().next()?.parse().ok()?;
    let mut avail = kib.saturating_mul(1024);
    let read = |f: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{f}")).ok().and_then(|s| s.trim().parse::<u64>().ok());
    if let (Some(max), Some(cur)) = (read("memory.max"), read("memory.current")) {
        avail = avail.min(max.saturating_sub(cur));
    }
    Some(avail)
}

/// The peak resident set of this process in bytes (Linux's `VmHWM`); `None` where unknown.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// Whether an allocation of `bytes` (`None`: the size overflowed) fits in [`available_memory`]; if
/// not, why, naming the allocation by `what`. Unknown available memory lets any size through.
///
/// # Errors
/// The message for the caller's error.
pub fn fits(bytes: Option<usize>, what: impl FnOnce() -> String) -> Result<(), String> {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    match (bytes, available_memory()) {
        (None, _) => Err(format!("{} would need more memory than can be addressed", what())),
        (Some(b), Some(avail)) if b as u64 > avail => {
            Err(format!("{} needs {:.2} GiB, more than the {:.2} GiB of memory available", what(), gib(b as u64), gib(avail)))
        }
        _ => Ok(()),
    }
}
