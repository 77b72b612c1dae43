//! Typed reads over the spanned TOML tree: the first stage of validation.
//!
//! A [`Table`] knows its display path (`[program.web]`) and checks its keys against a list of
//! known ones; a [`Field`] converts one value to a Rust type. Every read that fails records a
//! positioned error in the [`Sink`] and returns `None`, so the caller carries on with the default
//! and later problems are still found.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::diag::{Sink, did_you_mean};
use super::duration::{self, DurationError};

/// A TOML table with where it came from.
#[derive(Debug, Clone)]
pub(super) struct Table<'a, 'i> {
    pub(super) map: &'a DeTable<'i>,
    /// The header (`[program.web]`) or inline table.
    pub(super) span: Range<usize>,
    /// How messages name it, e.g. `[program.web.ready]`.
    pub(super) path: String,
}

impl<'a, 'i> Table<'a, 'i> {
    /// The entries in file order (the map itself is sorted by key).
    pub(super) fn fields(&self) -> Vec<Field<'a, 'i>> {
        let mut fields: Vec<Field<'a, 'i>> = self
            .map
            .iter()
            .map(|(k, v)| Field {
                key: k.get_ref().as_ref(),
                key_span: k.span(),
                value: v,
            })
            .collect();
        fields.sort_by_key(|f| f.key_span.start);
        fields
    }

    /// Reports every key not in `known`, with the closest known key suggested.
    pub(super) fn check_keys(&self, sink: &mut Sink, known: &[&str]) {
        self.check_keys_with(sink, known, |_| None);
    }

    /// As [`Table::check_keys`], but `hint` may explain a key instead of a suggestion (for
    /// options another tool has and this one deliberately does not).
    pub(super) fn check_keys_with(
        &self,
        sink: &mut Sink,
        known: &[&str],
        hint: impl Fn(&str) -> Option<&'static str>,
    ) {
        for field in self.fields() {
            if known.contains(&field.key) {
                continue;
            }
            let advice = match hint(field.key) {
                Some(hint) => format!(": {hint}"),
                None => did_you_mean(field.key, known.iter().copied()),
            };
            sink.error(
                &field.key_span,
                format!("unknown key \"{}\" in {}{advice}", field.key, self.path),
            );
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<Field<'a, 'i>> {
        self.map.get_key_value(key).map(|(k, v)| Field {
            key: k.get_ref().as_ref(),
            key_span: k.span(),
            value: v,
        })
    }

    /// A sub-table's display path.
    pub(super) fn child_path(&self, key: &str) -> String {
        let inner = self.path.strip_prefix('[').unwrap_or(&self.path);
        let parent = inner.strip_suffix(']').unwrap_or(inner);
        format!("[{parent}.{}]", display_key(key))
    }
}

/// Quotes a key the way TOML would need it in a header.
pub(super) fn display_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}

/// One `key = value` pair.
#[derive(Debug, Clone)]
pub(super) struct Field<'a, 'i> {
    pub(super) key: &'a str,
    pub(super) key_span: Range<usize>,
    pub(super) value: &'a Spanned<DeValue<'i>>,
}

/// `an integer`, `a string`, ...
pub(super) fn with_article(type_name: &str) -> String {
    match type_name {
        "integer" | "array" => format!("an {type_name}"),
        _ => format!("a {type_name}"),
    }
}

impl<'a, 'i> Field<'a, 'i> {
    pub(super) fn span(&self) -> Range<usize> {
        self.value.span()
    }

    pub(super) fn get(&self) -> &'a DeValue<'i> {
        self.value.get_ref()
    }

    /// Records a problem with this value.
    pub(super) fn error(&self, sink: &mut Sink, message: impl Into<String>) {
        sink.error(&self.span(), message);
    }

    /// `"key" must be <expected>, found a <type>`.
    pub(super) fn type_error(&self, sink: &mut Sink, expected: &str) {
        let found = with_article(self.get().type_str());
        self.error(
            sink,
            format!("\"{}\" must be {expected}, found {found}", self.key),
        );
    }

    pub(super) fn str(&self, sink: &mut Sink) -> Option<&'a str> {
        match self.get() {
            DeValue::String(s) => Some(s.as_ref()),
            _ => {
                self.type_error(sink, "a string");
                None
            }
        }
    }

    /// A string that is not empty and has no NUL (it ends up in argv, env or a path).
    pub(super) fn text(&self, sink: &mut Sink) -> Option<String> {
        let s = self.str(sink)?;
        if s.is_empty() {
            self.error(sink, format!("\"{}\" must not be empty", self.key));
            None
        } else if s.contains('\0') {
            self.error(
                sink,
                format!("\"{}\" must not contain a NUL character", self.key),
            );
            None
        } else {
            Some(s.to_string())
        }
    }

    pub(super) fn path(&self, sink: &mut Sink) -> Option<PathBuf> {
        self.text(sink).map(PathBuf::from)
    }

    pub(super) fn bool(&self, sink: &mut Sink) -> Option<bool> {
        match self.get() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.type_error(sink, "a boolean");
                None
            }
        }
    }

    /// Any TOML integer that fits an `i64`.
    pub(super) fn integer(&self, sink: &mut Sink) -> Option<i64> {
        match self.get() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(v) => Some(v),
                Err(_) => {
                    self.error(sink, format!("\"{}\" is out of range", self.key));
                    None
                }
            },
            _ => {
                self.type_error(sink, "an integer");
                None
            }
        }
    }

    /// An integer in `min..=max`, converted to the target type.
    pub(super) fn int_in<T: TryFrom<i64>>(&self, sink: &mut Sink, min: i64, max: i64) -> Option<T> {
        let v = self.integer(sink)?;
        match T::try_from(v) {
            Ok(t) if (min..=max).contains(&v) => Some(t),
            _ => {
                self.error(
                    sink,
                    format!(
                        "\"{}\" must be between {min} and {max}, found {v}",
                        self.key
                    ),
                );
                None
            }
        }
    }

    /// A finite number (integer or float).
    pub(super) fn number(&self, sink: &mut Sink) -> Option<f64> {
        match self.get() {
            DeValue::Integer(_) => self.integer(sink).map(|v| v as f64),
            DeValue::Float(f) => match f.as_str().parse::<f64>() {
                Ok(v) if v.is_finite() => Some(v),
                _ => {
                    self.error(sink, format!("\"{}\" must be a finite number", self.key));
                    None
                }
            },
            _ => {
                self.type_error(sink, "a number");
                None
            }
        }
    }

    /// A duration (see [`duration`]); `positive` rejects zero.
    pub(super) fn duration(&self, sink: &mut Sink, positive: bool) -> Option<Duration> {
        let parsed = match self.get() {
            DeValue::Integer(_) => duration::from_secs_int(self.integer(sink)?),
            DeValue::Float(f) => match f.as_str().parse::<f64>() {
                Ok(v) => duration::from_secs_float(v),
                Err(_) => Err(DurationError::Syntax),
            },
            DeValue::String(s) => duration::parse_str(s),
            _ => {
                self.type_error(sink, "a duration (seconds or a string like \"10s\")");
                return None;
            }
        };
        let key = self.key;
        match parsed {
            Ok(d) if positive && d.is_zero() => {
                self.error(sink, format!("\"{key}\" must be greater than zero"));
                None
            }
            Ok(d) => Some(d),
            Err(DurationError::Negative) => {
                self.error(sink, format!("\"{key}\" must not be negative"));
                None
            }
            Err(DurationError::TooLong) => {
                self.error(sink, format!("\"{key}\" must be at most 365 days"));
                None
            }
            Err(DurationError::Syntax) => {
                let shown = match self.get() {
                    DeValue::String(s) => format!("{:?}", s.as_ref()),
                    DeValue::Float(f) => f.as_str().to_string(),
                    _ => String::new(),
                };
                self.error(
                    sink,
                    format!(
                        "invalid duration {shown} for \"{key}\": expected {}",
                        duration::EXPECTED
                    ),
                );
                None
            }
        }
    }

    /// Permission bits: a string of octal digits (`"022"`) or an integer (`0o022`, `18`), at
    /// most `0o777`.
    pub(super) fn mode(&self, sink: &mut Sink) -> Option<u32> {
        let key = self.key;
        let v = match self.get() {
            DeValue::String(s) => {
                let digits = s.strip_prefix("0o").unwrap_or(s);
                if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
                    self.error(
                        sink,
                        format!("\"{key}\" must be octal digits like \"022\", found {s:?}"),
                    );
                    return None;
                }
                u32::from_str_radix(digits, 8).unwrap_or(u32::MAX)
            }
            DeValue::Integer(_) => {
                let v = self.integer(sink)?;
                u32::try_from(v).unwrap_or(u32::MAX)
            }
            _ => {
                self.type_error(
                    sink,
                    "an octal string like \"022\" or an integer like 0o022",
                );
                return None;
            }
        };
        if v > 0o777 {
            self.error(sink, format!("\"{key}\" must be at most 0o777"));
            return None;
        }
        Some(v)
    }

    /// One of a fixed set of strings; a near miss gets a suggestion.
    pub(super) fn choice(&self, sink: &mut Sink, options: &[&'static str]) -> Option<&'static str> {
        let expected = options
            .iter()
            .map(|o| format!("\"{o}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let DeValue::String(s) = self.get() else {
            self.type_error(sink, &format!("one of {expected}"));
            return None;
        };
        if let Some(found) = options.iter().find(|o| **o == s.as_ref()) {
            return Some(found);
        }
        self.error(
            sink,
            format!(
                "\"{}\" must be one of {expected}, found {:?}{}",
                self.key,
                s.as_ref(),
                did_you_mean(s, options.iter().copied())
            ),
        );
        None
    }

    /// An array of non-empty strings, each with its span.
    pub(super) fn strings(&self, sink: &mut Sink) -> Option<Vec<(String, Range<usize>)>> {
        let DeValue::Array(items) = self.get() else {
            self.type_error(sink, "an array of strings");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items.iter() {
            let field = Field {
                key: self.key,
                key_span: self.key_span.clone(),
                value: item,
            };
            match item.get_ref() {
                DeValue::String(_) => match field.text(sink) {
                    Some(s) => out.push((s, item.span())),
                    None => ok = false,
                },
                other => {
                    ok = false;
                    sink.error(
                        &item.span(),
                        format!(
                            "\"{}\" must be an array of strings, found {} in it",
                            self.key,
                            with_article(other.type_str())
                        ),
                    );
                }
            }
        }
        ok.then_some(out)
    }

    /// A count or size: an integer, or (with `bytes`) a string such as `"300MB"`, `"8MiB"`, `"1G"`
    /// (K, M, G, T are powers of 1024 with or without `B`/`iB`, as memmon reads them). `"unlimited"`
    /// gives `Some(None)` when `unlimited` is allowed.
    pub(super) fn amount(
        &self,
        sink: &mut Sink,
        bytes: bool,
        unlimited: bool,
    ) -> Option<Option<u64>> {
        let key = self.key;
        match self.get() {
            DeValue::Integer(_) => self.int_in::<u64>(sink, 0, i64::MAX).map(Some),
            DeValue::String(s) if unlimited && s.as_ref() == "unlimited" => Some(None),
            DeValue::String(s) if bytes => match parse_size(s) {
                Some(n) => Some(Some(n)),
                None => {
                    self.error(
                        sink,
                        format!("invalid size {:?} for \"{key}\": expected bytes or a number with K, M, G or T (\"300MB\"){}", s.as_ref(), if unlimited { " or \"unlimited\"" } else { "" }),
                    );
                    None
                }
            },
            _ => {
                let what = match (bytes, unlimited) {
                    (true, true) => "a size (\"8MB\"), an integer or \"unlimited\"",
                    (true, false) => "a size (\"300MB\") or an integer",
                    (false, true) => "an integer or \"unlimited\"",
                    (false, false) => "an integer",
                };
                self.type_error(sink, what);
                None
            }
        }
    }

    /// `env_file`: one absolute path or an array of them.
    pub(super) fn absolute_paths(&self, sink: &mut Sink) -> Option<Vec<PathBuf>> {
        let items = match self.get() {
            DeValue::String(_) => vec![(self.text(sink)?, self.span())],
            DeValue::Array(_) => self.strings(sink)?,
            _ => {
                self.type_error(sink, "a path or an array of paths");
                return None;
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for (p, span) in items {
            if p.starts_with('/') {
                out.push(PathBuf::from(p));
            } else {
                sink.error(
                    &span,
                    format!(
                        "\"{}\" paths must be absolute, found {p:?} (the working directory of PID 1 is rarely what you expect)",
                        self.key
                    ),
                );
            }
        }
        Some(out)
    }

    /// A command line: an array of strings, or a string split like a shell would (no shell
    /// runs). Never empty.
    pub(super) fn command(&self, sink: &mut Sink) -> Option<Vec<String>> {
        let argv = match self.get() {
            DeValue::String(s) => {
                let Some(argv) = shlex::split(s) else {
                    self.error(
                        sink,
                        format!("\"{}\" has an unclosed quote or escape", self.key),
                    );
                    return None;
                };
                if argv.iter().any(|a| a.contains('\0')) {
                    self.error(
                        sink,
                        format!("\"{}\" must not contain a NUL character", self.key),
                    );
                    return None;
                }
                argv
            }
            DeValue::Array(items) => {
                // Arguments may legitimately be empty strings; only argv[0] may not.
                let mut argv = Vec::with_capacity(items.len());
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::String(s) if s.contains('\0') => {
                            sink.error(
                                &item.span(),
                                format!("\"{}\" must not contain a NUL character", self.key),
                            );
                            return None;
                        }
                        DeValue::String(s) => argv.push(s.to_string()),
                        other => {
                            sink.error(
                                &item.span(),
                                format!(
                                    "\"{}\" must be an array of strings, found {} in it",
                                    self.key,
                                    with_article(other.type_str())
                                ),
                            );
                            return None;
                        }
                    }
                }
                argv
            }
            _ => {
                self.type_error(sink, "an array of strings or a string");
                return None;
            }
        };
        if argv.first().is_none_or(|a| a.is_empty()) {
            self.error(sink, format!("\"{}\" must not be empty", self.key));
            return None;
        }
        Some(argv)
    }

    /// A sub-table.
    pub(super) fn table(&self, sink: &mut Sink, path: String) -> Option<Table<'a, 'i>> {
        match self.get() {
            DeValue::Table(map) => Some(Table {
                map,
                span: self.span(),
                path,
            }),
            _ => {
                self.type_error(sink, "a table");
                None
            }
        }
    }
}

/// `"300MB"` → bytes; see [`Field::amount`].
pub(super) fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}
