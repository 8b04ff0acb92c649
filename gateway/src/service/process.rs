//! The process's own CPU time, memory, threads and file descriptors, read
//! from /proc/self for the standard `process_*` metrics and `/status`
//! (Linux; elsewhere nothing is read and nothing is reported).

/// One reading.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub vsize_bytes: u64,
    pub start_time_seconds: f64,
    pub threads: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
}

/// The kernel reports CPU times in USER_HZ ticks: 100 a second on every
/// architecture Linux runs user space on (it is not the kernel's HZ).
const USER_HZ: f64 = 100.0;

pub fn read() -> Option<Reading> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0);
    parse(&stat, &status, &boot, &limits, open_fds)
}

fn parse(stat: &str, status: &str, boot: &str, limits: &str, open_fds: u64) -> Option<Reading> {
    // the fields after the command name (which may hold spaces and parentheses)
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // fields 14, 15 (utime, stime) and 22 (starttime) of proc(5); `rest` starts at field 3
    let tick = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    let (utime, stime, start) = (tick(14)?, tick(15)?, tick(22)?);
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_ascii_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
    };
    let btime =
        boot.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse::<u64>().ok())?;
    let max_fds = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_ascii_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok());
    Some(Reading {
        cpu_seconds: (utime + stime) as f64 / USER_HZ,
        rss_bytes: kb("VmRSS:").unwrap_or(0) * 1024,
        vsize_bytes: kb("VmSize:").unwrap_or(0) * 1024,
        start_time_seconds: btime as f64 + start as f64 / USER_HZ,
        threads: kb("Threads:").unwrap_or(0),
        open_fds,
        max_fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_files_as_the_kernel_writes_them() {
        let stat = "4242 (edge join) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 50 0 0 20 0 9 0 123456 31457280 2400 18446744073709551615";
        let status = "Name:\tedgejoin\nVmSize:\t   30720 kB\nVmRSS:\t    9600 kB\nThreads:\t9\n";
        let boot = "cpu  1 2 3\nbtime 1764000000\nprocesses 5\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        let r = parse(stat, status, boot, limits, 17).unwrap();
        assert_eq!(r.cpu_seconds, 3.0);
        assert_eq!(r.rss_bytes, 9600 * 1024);
        assert_eq!(r.vsize_bytes, 30720 * 1024);
        assert_eq!(r.threads, 9);
        assert_eq!(r.start_time_seconds, 1764000000.0 + 1234.56);
        assert_eq!((r.open_fds, r.max_fds), (17, Some(1024)));
        assert_eq!(parse("garbage", status, boot, limits, 0), None);
    }

    #[test]
    fn reads_this_process() {
        let r = read().expect("/proc/self");
        assert!(r.rss_bytes > 0 && r.threads >= 1 && r.open_fds >= 3 && r.start_time_seconds > 1e9, "{r:?}");
    }
}
