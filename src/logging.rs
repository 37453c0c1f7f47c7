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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let cannot = |e: Box<dyn std::error::Error + Send + Sync>| {
        format!("cannot install the log subscriber: {e}")
    };
    let set: SetFilter = match format {
        LogFormat::Pretty => {
            let builder = builder
                .compact()
                .with_ansi(std::io::stderr().is_terminal())
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
