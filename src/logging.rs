//! Process-wide `tracing` setup: one subscriber writing to stderr, filtered by
//! `log.level` from the config, or by `RUST_LOG` when that is set (so an
//! operator can turn on debug logs without editing the config).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{check_log_level, LogFormat};

/// Installs the global subscriber. `level` is a `log.level` value (a level
/// name or an EnvFilter directive list). Returns an error, never panics, when
/// the filter is invalid or a global subscriber is already installed.
pub fn init(level: &str, format: LogFormat) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::builder()
            .parse(&directives)
            .map_err(|e| format!("invalid RUST_LOG `{directives}`: {e}"))?,
        _ => build_filter(level)?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let installed = match format {
        LogFormat::Pretty => builder
            .compact()
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
    installed.map_err(|e| format!("cannot install the log subscriber: {e}"))
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

#[cfg(test)]
mod tests {
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
