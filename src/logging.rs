//! Process-wide `tracing` setup: one subscriber writing to stderr, filtered by
//! `log.level` from the config, or by `RUST_LOG` when that is set (so an
//! operator can turn on debug logs without editing the config).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{check_log_level, LogFormat};

/// Swaps the installed subscriber's filter.
type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// Changes the log level of the running process (a reload's `log.level`).
pub struct LogLevel {
    /// None while `RUST_LOG` decides the level.
    set: Option<SetFilter>,
}

impl LogLevel {
    /// Sets `level` (a `log.level` value). Ok(false) when `RUST_LOG` is
    /// set, which keeps deciding.
    pub fn set(&self, level: &str) -> Result<bool, String> {
        let Some(set) = &self.set else {
            return Ok(false);
        };
        set(build_filter(level)?)?;
        Ok(true)
    }
}

/// Installs the global subscriber. `level` is a `log.level` value (a level
/// name or an EnvFilter directive list). Returns an error, never panics, when
/// the filter is invalid or a global subscriber is already installed.
pub fn init(level: &str, format: LogFormat) -> Result<LogLevel, String> {
    let (filter, pinned) = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => (
            EnvFilter::builder()
                .parse(&directives)
                .map_err(|e| format!("invalid RUST_LOG `{directives}`: {e}"))?,
            true,
        ),
        _ => (build_filter(level)?, false),
    };
    let journal = stderr_is_journal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Stderr { journal })
        // A failed write (stderr a closed pipe) is dropped in silence:
        // reporting it would write to stderr again, from a SIP thread.
        .log_internal_errors(false)
        .with_target(true);
    let cannot = |e: Box<dyn std::error::Error + Send + Sync>| {
        format!("cannot install the log subscriber: {e}")
    };
    let set: SetFilter = match format {
        LogFormat::Pretty => {
            let builder = builder
                .compact()
                .with_ansi(std::io::stderr().is_terminal() && !journal)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            builder.try_init().map_err(cannot)?;
            Box::new(move |filter| handle.reload(filter).map_err(|e| e.to_string()))
        }
        LogFormat::Json => {
            let builder = builder.json().with_ansi(false).with_filter_reloading();
            let handle = builder.reload_handle();
            builder.try_init().map_err(cannot)?;
            Box::new(move |filter| handle.reload(filter).map_err(|e| e.to_string()))
        }
    };
    Ok(LogLevel {
        set: (!pinned).then_some(set),
    })
}

/// Whether stderr is the systemd journal: `JOURNAL_STREAM` names the
/// device and inode of the stream systemd connected (systemd.exec(5)), and
/// stderr is still that stream (not redirected by a shell in between).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((device, inode)) = stream.split_once(':') else {
        return false;
    };
    let stderr = std::fs::metadata("/proc/self/fd/2").or_else(|_| std::fs::metadata("/dev/stderr"));
    stderr.is_ok_and(|meta| device.parse() == Ok(meta.dev()) && inode.parse() == Ok(meta.ino()))
}

/// Where log lines go: stderr, never failing (a closed pipe loses the
/// line, not the daemon), and under the journal with each line's
/// priority in front (`<3>` for an error, sd-daemon(3)), so that
/// `journalctl -p warning` finds warnings.
#[derive(Clone, Copy)]
struct Stderr {
    journal: bool,
}

/// One event's line; the fmt layer writes each in one call.
struct StderrLine {
    priority: Option<u8>,
}

impl std::io::Write for StderrLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut stderr = std::io::stderr().lock();
        let written = match self.priority.take() {
            // journald makes an entry of each line: every line of the
            // event (a traceback's too) carries the priority.
            Some(priority) => {
                let prefix = format!("<{priority}>");
                let mut lines = Vec::with_capacity(buf.len() + 16);
                for line in buf.split_inclusive(|&b| b == b'\n') {
                    lines.extend_from_slice(prefix.as_bytes());
                    lines.extend_from_slice(line);
                }
                stderr.write_all(&lines)
            }
            None => stderr.write_all(buf),
        };
        drop(written);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = StderrLine;

    fn make_writer(&'a self) -> Self::Writer {
        StderrLine { priority: None }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        StderrLine {
            priority: self.journal.then(|| journal_priority(*meta.level())),
        }
    }
}

/// The syslog priority of a level, as journald reads it.
fn journal_priority(level: tracing::Level) -> u8 {
    match level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

/// The filter for a `log.level` value, checked the same way as the config.
fn build_filter(level: &str) -> Result<EnvFilter, String> {
    check_log_level(level)?;
    let level = level.trim();
    // Level names are case-insensitive; directives keep their case (targets).
    let directives = if level.contains('=') || level.contains(',') {
        level.to_string()
    } else {
        level.to_ascii_lowercase()
    };
    EnvFilter::builder()
        .parse(directives)
        .map_err(|e| format!("invalid log level `{level}`: {e}"))
}

/// Lets a warning through at most once per interval and counts the ones
/// held back, for warnings a peer can cause at will (sends toward
/// addresses that do not answer), which must not flood the log.
pub struct Throttle {
    start: std::time::Instant,
    interval_ms: u64,
    /// When the next line may go, in ms since `start`.
    next_ms: std::sync::atomic::AtomicU64,
    held: std::sync::atomic::AtomicU64,
}

impl Throttle {
    pub fn new(interval: std::time::Duration) -> Self {
        Throttle {
            start: std::time::Instant::now(),
            interval_ms: interval.as_millis() as u64,
            next_ms: Default::default(),
            held: Default::default(),
        }
    }

    /// Some(how many were held back since the last) when a line may be
    /// written now.
    pub fn allow(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.start.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Relaxed);
        let won = now >= next
            && self
                .next_ms
                .compare_exchange(next, now + self.interval_ms, Relaxed, Relaxed)
                .is_ok();
        match won {
            true => Some(self.held.swap(0, Relaxed)),
            false => {
                self.held.fetch_add(1, Relaxed);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_throttle_lets_one_line_through_per_interval_and_counts_the_rest() {
        let throttle = super::Throttle::new(std::time::Duration::from_millis(50));
        assert_eq!(throttle.allow(), Some(0));
        assert_eq!(throttle.allow(), None);
        assert_eq!(throttle.allow(), None);
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert_eq!(throttle.allow(), Some(2), "two held back");
        assert_eq!(throttle.allow(), None);
    }

    use super::*;

    #[test]
    fn level_names_and_directives_build_filters() {
        for level in ["info", "DEBUG", "warn,siphon=trace", "siphon::sip=debug"] {
            assert!(build_filter(level).is_ok(), "{level} should be accepted");
        }
    }

    #[test]
    fn misspelt_level_is_rejected() {
        let error = build_filter("inof").unwrap_err();
        assert!(error.contains("unknown log level `inof`"), "{error}");
    }

    #[test]
    fn second_init_reports_an_error_instead_of_panicking() {
        // The first call may already fail if another test installed a
        // subscriber; the second one must fail either way.
        let _ = init("info", LogFormat::Pretty);
        let again = init("info", LogFormat::Json);
        assert!(again.is_err());
    }
}
