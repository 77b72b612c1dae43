//! Configuration: TOML text → validated [`Config`].
//!
//! Parsing happens in two stages, as ripgrep does with its arguments: the TOML text is parsed into
//! a spanned tree, then every table and key is checked against the model, collecting **every**
//! problem with its line and column before giving up (a config with three mistakes gets three
//! errors, not three round trips). Nothing here reads the filesystem or the process environment:
//! the caller passes the text, its origin (for messages) and an environment lookup (for
//! `${VAR}` / `${VAR:-default}` expansion).

mod diag;
mod duration;
mod expand;
mod graph;
mod instances;
mod log_file;
mod model;
mod program;
mod schedule;
mod supervisor;
mod value;

pub use graph::BRIDGE_PROGRAM;
pub use instances::{DEFAULT_PROCESS_NAME, MAX_NUMPROCS};
pub use model::*;

use std::fmt;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use diag::{Sink, did_you_mean};
use value::Table;

/// One positioned problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the text came from, as given to [`parse`].
    pub origin: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// Lower-case message without trailing period, e.g. `unknown key "prority", did you mean "priority"?`.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: line {}, column {}: {}",
            self.origin.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Every problem found in one config, in file order. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<Diagnostic>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The config file when none is named on the command line: `$IOT2MQTT_SV_CONFIG`, else this.
pub const DEFAULT_PATH: &str = "/etc/iot2mqtt-sv.toml";

/// The config file both binaries read: `explicit` (`-c`), else `$IOT2MQTT_SV_CONFIG`, else
/// [`DEFAULT_PATH`]. One rule, so the supervisor and the bridge it starts never disagree.
pub fn path(explicit: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| {
            env("IOT2MQTT_SV_CONFIG")
                .filter(|p| !p.is_empty())
                .map(Into::into)
        })
        .unwrap_or_else(|| DEFAULT_PATH.into())
}

/// Parses and validates a whole config.
///
/// `env` looks up variables for `${VAR}` expansion in `environment` values (and only there).
/// Never panics: any input yields a [`Config`] or at least one positioned [`Diagnostic`].
pub fn parse(
    source: &str,
    origin: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let mut sink = Sink::default();
    let config = match DeTable::parse(source) {
        Ok(root) => Some(document(root.get_ref(), env, &mut sink)),
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let mut message = format!("invalid TOML: {}", e.message().trim());
            // The parser's span covers the repeated key; name it, the message alone does not.
            if e.message().starts_with("duplicate key") {
                if let Some(key) = source.get(span.clone()).filter(|k| !k.is_empty()) {
                    message = if key.starts_with(['"', '\'']) {
                        format!("invalid TOML: duplicate key {key}")
                    } else {
                        format!("invalid TOML: duplicate key \"{key}\"")
                    };
                }
            }
            sink.error(&span, message);
            None
        }
    };
    match config {
        Some(config) if sink.is_empty() => Ok(config),
        _ => Err(ConfigErrors(sink.into_diagnostics(source, origin))),
    }
}

const TOP_LEVEL_KEYS: &[&str] = &["supervisor", "program", "bridge"];

const NAME_RULE: &str = "use letters, digits, \"_\", \".\" and \"-\"";

const PROGRAM_ARRAY: &str = "\"program\" must be a table of [program.NAME] tables, found an array \
     (write [program.NAME], not [[program]])";

/// The second stage: the spanned tree → the model, recording every problem in `sink`.
fn document(root: &DeTable<'_>, env: &dyn Fn(&str) -> Option<String>, sink: &mut Sink) -> Config {
    let root = Table {
        map: root,
        span: 0..0,
        path: "the top level".into(),
    };
    for field in root.fields() {
        if TOP_LEVEL_KEYS.contains(&field.key) {
            continue;
        }
        let what = if matches!(field.get(), DeValue::Table(_)) {
            "table"
        } else {
            "top-level key"
        };
        sink.error(
            &field.key_span,
            format!(
                "unknown {what} \"{}\" (expected [supervisor], [program.NAME] or [bridge]){}",
                field.key,
                did_you_mean(field.key, TOP_LEVEL_KEYS.iter().copied())
            ),
        );
    }

    let supervisor = match root.get("supervisor") {
        Some(f) => match f.table(sink, "[supervisor]".into()) {
            Some(t) => supervisor::supervisor(&t, sink),
            None => SupervisorSettings::default(),
        },
        None => SupervisorSettings::default(),
    };
    let bridge = root
        .get("bridge")
        .map(|f| match f.table(sink, "[bridge]".into()) {
            Some(t) => supervisor::bridge(&t, sink),
            None => BridgeSection::default(),
        });

    let mut programs = Vec::new();
    // Whether "nothing to supervise" would be news: not when `program` is already reported.
    let mut nothing_to_supervise = true;
    if let Some(f) = root.get("program") {
        match f.get() {
            DeValue::Table(_) => {
                if let Some(t) = f.table(sink, "[program]".into()) {
                    nothing_to_supervise = t.map.is_empty();
                    for pf in t.fields() {
                        let name = pf.key;
                        if name.is_empty()
                            || !name
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
                        {
                            let message = format!("invalid program name {name:?}: {NAME_RULE}");
                            sink.error(&pf.key_span, message);
                        }
                        if let Some(program) = program::program(name, &pf, env, sink) {
                            programs.push(program);
                        }
                    }
                }
            }
            DeValue::Array(_) => {
                nothing_to_supervise = false;
                f.error(sink, PROGRAM_ARRAY);
            }
            _ => {
                nothing_to_supervise = false;
                f.type_error(sink, "a table of [program.NAME] tables");
            }
        }
    }
    if nothing_to_supervise && bridge.is_none() {
        sink.error(
            &(0..0),
            "nothing to supervise: add a [program.NAME] table or a [bridge] table",
        );
    }
    graph::check(&programs, bridge.is_some(), sink);

    let reserved: &[&str] = if bridge.is_some() {
        &[graph::BRIDGE_PROGRAM]
    } else {
        &[]
    };
    let programs = programs
        .into_iter()
        .map(|(p, spans)| (p, spans.instances, spans.name))
        .collect();
    let mut programs = instances::expand(programs, reserved, sink);
    // `[supervisor] env_file` is read first for every program: its own files win.
    if !supervisor.env_files.is_empty() {
        for p in &mut programs {
            p.env_files
                .splice(0..0, supervisor.env_files.iter().cloned());
        }
    }
    programs.sort_by(|a, b| a.name.cmp(&b.name));
    Config {
        supervisor,
        programs,
        bridge,
    }
}
