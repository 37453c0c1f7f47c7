//! Config errors: each names the file and the key or line, and the fix.

use super::*;

/// Why a config could not be used. Display is one line naming the file and
/// the key or line, meant to be shown to the operator as is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {}", path.display(), io_reason(source))]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A `${...}` reference could not be expanded.
    #[error("{}: line {line}: {message}", file.display())]
    Expand {
        file: PathBuf,
        line: usize,
        message: String,
    },
    /// The YAML is malformed or a value has the wrong shape or type.
    #[error("{}: {}{message}{}", file.display(), key_prefix(key), line_suffix(*line))]
    Parse {
        file: PathBuf,
        /// Key path such as `gateway.groups[0].algorithm`; empty at the root.
        key: String,
        line: Option<usize>,
        message: String,
    },
    /// The YAML is well-formed but a value is not acceptable.
    #[error("{}: {key}: {message}", file.display())]
    Invalid {
        file: PathBuf,
        key: String,
        message: String,
    },
}

impl ConfigError {
    /// The offending key path, when the error is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Parse { key, .. } | ConfigError::Invalid { key, .. }
                if !key.is_empty() =>
            {
                Some(key)
            }
            _ => None,
        }
    }
}

pub(super) fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

pub(super) fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}

/// `No such file or directory` rather than `... (os error 2)`.
pub(super) fn io_reason(error: &io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error ") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}

/// A problem with one field of a group, destination or probe; `key` is
/// relative to the thing checked (e.g. `destinations[1].uri`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub key: String,
    pub message: String,
}

impl FieldError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            key: key.into(),
            message: message.into(),
        }
    }

    /// Prefixes the key with its parent, e.g. `probe` + `interval_secs`.
    pub(super) fn under(self, parent: &str) -> Self {
        FieldError {
            key: format!("{parent}.{}", self.key),
            message: self.message,
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for FieldError {}
