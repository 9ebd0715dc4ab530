//! What benchmark reports say about the machine and the process: cores, CPU model, peak memory,
//! and a way to measure a cold load.

use std::path::Path;

/// Physical cores this process may use: distinct (package, core) pairs in `/proc/cpuinfo`,
/// capped by the CPUs the process is allowed on. Elsewhere, the allowed CPU count.
pub(crate) fn physical_cores() -> usize {
    let allowed = std::thread::available_parallelism().map_or(1, usize::from);
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return allowed;
    };
    let mut cores = std::collections::BTreeSet::new();
    let (mut package, mut core) = (None, None);
    for line in info.lines().chain(std::iter::once("")) {
        let value = || line.split(':').nth(1).map(str::trim).map(String::from);
        if line.starts_with("physical id") {
            package = value();
        } else if line.starts_with("core id") {
            core = value();
        } else if line.trim().is_empty()
            && let (Some(p), Some(c)) = (package.take(), core.take())
        {
            cores.insert((p, c));
        }
    }
    if cores.is_empty() {
        allowed
    } else {
        cores.len().min(allowed)
    }
}

/// The CPU's model name, from `/proc/cpuinfo` (Linux) or `sysctl` (macOS).
pub(crate) fn cpu_model() -> String {
    if let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") {
        for key in ["model name", "Model", "cpu model", "Hardware"] {
            if let Some(line) = info.lines().find(|l| l.starts_with(key))
                && let Some(v) = line.split(':').nth(1)
            {
                return v.trim().to_string();
            }
        }
    }
    std::process::Command::new("sysctl")
        .args(["-n", "machdep.cpu.brand_string"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// A `/proc/self/status` field in bytes (Linux only).
pub(crate) fn proc_status(field: &str) -> Option<u64> {
    kib_field("/proc/self/status", field)
}

/// The machine's memory in bytes (`MemTotal` in `/proc/meminfo`; Linux only).
pub(crate) fn memory_total() -> Option<u64> {
    kib_field("/proc/meminfo", "MemTotal:")
}

/// A `FIELD:  N kB` line of a `/proc` file, in bytes.
fn kib_field(path: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The process's peak resident set so far (`VmHWM`), in bytes.
pub(crate) fn peak_rss() -> Option<u64> {
    proc_status("VmHWM:")
}

/// Asks the kernel to drop `path`'s cached pages, so that the next read comes from the disk.
/// True when the request was made (Linux); the kernel keeps pages that are mapped elsewhere.
pub(crate) fn evict_page_cache(path: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let Ok(file) = std::fs::File::open(path) else {
            return false;
        };
        // SAFETY: a valid open descriptor; offset 0 and length 0 mean the whole file.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        rc == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        false
    }
}

/// The git revision the binary was built from.
pub(crate) const GIT_REVISION: &str = env!("APR_GIT_REVISION");

/// Keeps big allocations out of the heap: glibc raises its mmap threshold (up to 32 MiB) after
/// a large block is freed, and then serves big zeroed buffers (the KV cache, the batch scratch)
/// from the heap, which must write zeros over every page, making all of it resident at once.
/// With a fixed threshold they are fresh mappings whose pages stay unresident until used, and
/// they go back to the system when freed.
pub(crate) fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}
