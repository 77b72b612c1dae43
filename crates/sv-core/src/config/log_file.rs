//! `log_file = { path, max_bytes, backups }` in `[program.NAME]`: a copy of the program's output
//! in a size-rotated file, supervisord's `stdout_logfile` with `stdout_logfile_maxbytes` and
//! `stdout_logfile_backups`.
//!
//! Sizes are an integer number of bytes or a string with a unit as supervisord writes them
//! (`"50MB"`, `"512KB"`, `"1GB"`: powers of 1024, as supervisord's `byte_size`; `KiB`/`MiB`/`GiB`
//! are accepted too).

use toml::de::DeValue;

use super::diag::Sink;
use super::model::{LogFileConfig, OutputMode};
use super::value::{Field, Table, parse_size};

const LOG_FILE_KEYS: &[&str] = &["path", "max_bytes", "backups"];

/// Reads `log_file` (a table, or a string meaning `{ path = "…" }`).
pub(super) fn log_file(
    program: &Table<'_, '_>,
    field: &Field<'_, '_>,
    output: OutputMode,
    sink: &mut Sink,
) -> Option<LogFileConfig> {
    if output == OutputMode::Inherit {
        field.error(
            sink,
            "\"log_file\" needs output = \"capture\": with \"inherit\" the supervisor never sees the lines",
        );
        return None;
    }
    let mut cfg = LogFileConfig::new(Default::default());
    let path_field = match field.get() {
        DeValue::String(_) => field.clone(),
        DeValue::Table(_) => {
            let table = field.table(sink, program.child_path("log_file"))?;
            table.check_keys(sink, LOG_FILE_KEYS);
            if let Some(f) = table.get("max_bytes") {
                cfg.max_bytes = size(&f, sink)?;
            }
            if let Some(f) = table.get("backups") {
                cfg.backups = f.int_in(sink, 0, 1000)?;
            }
            let Some(f) = table.get("path") else {
                sink.error(
                    &table.span,
                    format!("missing key \"path\" in {}", table.path),
                );
                return None;
            };
            f
        }
        _ => {
            field.type_error(sink, "a table { path, max_bytes, backups } or a path");
            return None;
        }
    };
    let path = path_field.path(sink)?;
    if !path.is_absolute() {
        path_field.error(
            sink,
            format!(
                "\"log_file\" path must be absolute, found {:?}",
                path.display().to_string()
            ),
        );
        return None;
    }
    cfg.path = path;
    Some(cfg)
}

/// A byte count: an integer, or a string with a unit.
fn size(f: &Field<'_, '_>, sink: &mut Sink) -> Option<u64> {
    match f.get() {
        DeValue::Integer(_) => f.int_in(sink, 0, i64::MAX),
        DeValue::String(s) => match parse_size(s) {
            Some(v) => Some(v),
            None => {
                f.error(
                    sink,
                    format!(
                        "\"{}\" must be a size such as 1048576, \"512KB\" or \"50MB\", found {:?}",
                        f.key,
                        s.as_ref()
                    ),
                );
                None
            }
        },
        _ => {
            f.type_error(sink, "a size (bytes, or a string such as \"50MB\")");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_use_supervisord_units() {
        assert_eq!(parse_size("50MB"), Some(50 << 20));
        assert_eq!(parse_size("512kb"), Some(512 << 10));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("MB"), None);
        assert_eq!(parse_size("5 parsecs"), None);
        assert_eq!(parse_size("99999999999GB"), None);
    }
}
