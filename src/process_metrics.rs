//! The process's own series, as Prometheus's client libraries name them
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_start_time_seconds`), read from /proc at each scrape.

use std::fmt::Write;

/// The series in the OpenMetrics text format; empty where /proc is not.
pub fn exposition() -> String {
    let Some(stat) = ProcessStat::read() else {
        return String::new();
    };
    let mut out = String::new();
    let mut series = |name: &str, kind: &str, help: &str, value: f64| {
        let sample = if kind == "counter" {
            format!("{name}_total")
        } else {
            name.to_string()
        };
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{sample} {value}\n"
        );
    };
    series(
        "process_cpu_seconds",
        "counter",
        "User and system CPU time spent, in seconds.",
        stat.cpu_seconds,
    );
    series(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        stat.resident_bytes,
    );
    series(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        stat.virtual_bytes,
    );
    series(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch, in seconds.",
        stat.start_time,
    );
    if let Some(open) = open_fds() {
        series(
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
            open as f64,
        );
    }
    if let Some(max) = max_fds() {
        series(
            "process_max_fds",
            "gauge",
            "The most file descriptors the process may open.",
            max as f64,
        );
    }
    out
}

struct ProcessStat {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    start_time: f64,
}

impl ProcessStat {
    /// From /proc/self/stat (proc(5)): utime, stime, starttime in clock
    /// ticks, vsize in bytes, rss in pages.
    fn read() -> Option<ProcessStat> {
        let text = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name may hold spaces and parentheses: fields start
        // after its last ')'.
        let fields: Vec<&str> = text.get(text.rfind(')')? + 2..)?.split(' ').collect();
        // Field N of proc(5) is fields[N - 3] here.
        let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
        // SAFETY: sysconf only reads a system constant.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK) as f64,
                libc::sysconf(libc::_SC_PAGESIZE) as f64,
            )
        };
        let boot = boot_time()?;
        Some(ProcessStat {
            cpu_seconds: (field(14)? + field(15)?) / ticks,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)? * page,
            start_time: boot + field(22)? / ticks,
        })
    }
}

/// The system's boot time (the `btime` line of /proc/stat).
fn boot_time() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|secs| secs.trim().parse().ok())
}

fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

/// The soft limit on open files ("Max open files" in /proc/self/limits).
fn max_fds() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_process_series_name_this_process() {
        let text = super::exposition();
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} in\n{text}"))
        };
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(
            started <= now + 1.0 && started > now - 86_400.0,
            "{started}"
        );
        assert!(value("process_cpu_seconds_total") >= 0.0);
        assert!(text.contains("# TYPE process_cpu_seconds counter"));
    }
}
