//! Translates supervisord configs into iot2mqtt-sv TOML.
//!
//! [`import_file`] reads a `supervisord.conf` (and the files its `[include]` names), reproduces
//! what supervisord itself would make of it — Python `configparser` syntax, `%(name)s`
//! expansion, `shlex` splitting of `command=` and `environment=`, `numprocs` expansion — and
//! writes an equivalent iot2mqtt-sv config (`numprocs` folded back into one group where a
//! `{num}` template says exactly the same, see `group.rs`). Everything without an equivalent is kept as a comment
//! in the output and reported as a [`Warning`] saying what to do instead; everything supervisord
//! itself would reject is an [`ImportError`] with its file and line.
//!
//! Invariants: the output is deterministic (no dates, no absolute paths the input did not
//! contain), every string in it is escaped so any value round-trips through a TOML parser, and
//! only keys that differ from iot2mqtt-sv's defaults are written (plus `command`, and `priority`
//! whenever the source set it). Reading files is the only IO; nothing here spawns or looks up
//! users.

#![forbid(unsafe_code)]

mod env;
mod expand;
mod group;
mod ini;
mod load;
mod shlex;
mod toml_out;
mod translate;

use std::fmt;
use std::path::{Path, PathBuf};

/// A successful import: the TOML text and what needs a human's attention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    /// The iot2mqtt-sv config, ready to write to a file.
    pub toml: String,
    /// One entry per supervisord setting that was dropped or changed meaning, in input order.
    pub warnings: Vec<Warning>,
}

/// A supervisord setting that has no exact equivalent; the same text is a comment in the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The file the setting is in (the main file or an included one).
    pub file: PathBuf,
    /// Its 1-based line.
    pub line: usize,
    /// What was done and what to do instead, lower-case, no trailing period.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: warning: {}",
            self.file.display(),
            self.line,
            self.message
        )
    }
}

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A file (the main one or an included one) could not be read.
    #[error("reading {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The config is malformed, or uses something supervisord itself would reject.
    #[error("{}: line {line}: {message}", file.display())]
    Invalid {
        /// The file the problem is in.
        file: PathBuf,
        /// The 1-based line.
        line: usize,
        /// Lower-case description.
        message: String,
    },
}

impl ImportError {
    pub(crate) fn invalid(file: &Path, line: usize, message: impl Into<String>) -> ImportError {
        ImportError::Invalid {
            file: file.to_path_buf(),
            line,
            message: message.into(),
        }
    }
}

/// Imports the supervisord config at `path`.
///
/// `env` looks up environment variables for `%(ENV_X)s` where the value has to be fixed at
/// import time (outside `environment=`, which keeps `${X}` for the supervisor to expand) and for
/// `[include] files=`.
pub fn import_file(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Import, ImportError> {
    let text = load::read_text(path)?;
    import_str(&text, path, env)
}

/// Imports supervisord config text that came from `origin`; `[include]` patterns and `%(here)s`
/// are resolved relative to `origin`'s directory.
pub fn import_str(
    source: &str,
    origin: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Import, ImportError> {
    let loaded = load::load(source, origin, env)?;
    let doc = translate::translate(&loaded, env)?;
    Ok(Import {
        toml: toml_out::render(&doc, &loaded),
        warnings: doc.warnings(),
    })
}
