//! Reading the main file and everything its `[include]` sections name into one [`Ini`].
//!
//! As in supervisord, `files=` is a whitespace-separated list of glob patterns relative to the
//! directory of the file that holds the `[include]`, matched files are read in sorted order after
//! the including file, and a pattern matching nothing is only a warning. supervisord 4.2 ignores
//! `[include]` inside an included file; the importer follows it (with a warning) and guards
//! against cycles: a file that includes itself, directly or not, is an error, and a file reached
//! twice by different paths is read once (reading it again would change nothing).

use std::path::{Path, PathBuf};

use crate::ImportError;
use crate::expand::{Value, expand};
use crate::ini::Ini;
use crate::translate::Note;

/// The merged sections of every file read, and notes about the reading itself.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub ini: Ini,
    /// The main file, as given.
    pub origin: PathBuf,
    /// Every file read after the main one, in reading order.
    pub included: Vec<PathBuf>,
    pub notes: Vec<Note>,
}

/// Reads a file as UTF-8 text.
pub(crate) fn read_text(path: &Path) -> Result<String, ImportError> {
    let bytes = std::fs::read(path).map_err(|source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
        ImportError::invalid(path, line, "the file is not valid UTF-8")
    })
}

/// The directory a file's relative references are resolved against.
pub(crate) fn dir_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `%(here)s`: the absolute directory of `file`, as supervisord computes it.
pub(crate) fn here_of(file: &Path) -> String {
    let dir = dir_of(file);
    std::path::absolute(&dir)
        .unwrap_or(dir)
        .display()
        .to_string()
}

pub(crate) fn load(
    source: &str,
    origin: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ImportError> {
    let mut loaded = Loaded {
        ini: Ini::default(),
        origin: origin.to_path_buf(),
        included: Vec::new(),
        notes: Vec::new(),
    };
    let identity = identity(origin);
    let mut seen = vec![identity.clone()];
    let mut stack = vec![identity];
    read_one(&mut loaded, source, origin, env, &mut stack, &mut seen)?;
    Ok(loaded)
}

/// A file's identity for the cycle guard: its canonical path when it exists.
fn identity(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

fn read_one(
    loaded: &mut Loaded,
    text: &str,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    stack: &mut Vec<PathBuf>,
    seen: &mut Vec<PathBuf>,
) -> Result<(), ImportError> {
    let touched = loaded
        .ini
        .read(text, file)
        .map_err(|e| ImportError::invalid(file, e.line, e.message))?;
    let Some(&(_, header_line)) = touched.iter().find(|(s, _)| s == "include") else {
        return Ok(());
    };
    let include = loaded
        .ini
        .section("include")
        .expect("touched section exists");
    let Some(entry) = include.get("files").filter(|e| e.file == file) else {
        return Err(ImportError::invalid(
            file,
            header_line,
            "[include] has no \"files\" setting",
        ));
    };
    let entry = entry.clone();
    if stack.len() > 1 {
        loaded.notes.push(Note::new(
            &entry.file,
            entry.line,
            "[include] in an included file: supervisord 4 ignores it, the importer followed it; \
             check that the programs it brings in are wanted",
        ));
    }
    let here = here_of(file);
    let patterns = expand(&entry.value, &mut |name: &str| match name {
        "here" => Some(Value::Str(here.clone())),
        "host_node_name" => env("HOSTNAME").map(Value::Str),
        _ => name.strip_prefix("ENV_").and_then(env).map(Value::Str),
    })
    .map_err(|m| ImportError::invalid(file, entry.line, format!("[include] files: {m}")))?;
    let base = dir_of(file);
    for pattern in patterns.split_whitespace() {
        let full = if Path::new(pattern).is_absolute() {
            pattern.to_string()
        } else {
            format!(
                "{}/{pattern}",
                glob::Pattern::escape(&base.display().to_string())
            )
        };
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            // Python's glob skips dot files unless the pattern names the dot.
            require_literal_leading_dot: true,
        };
        let paths = glob::glob_with(&full, options).map_err(|e| {
            ImportError::invalid(
                file,
                entry.line,
                format!("[include] files: invalid pattern {pattern:?}: {e}"),
            )
        })?;
        let mut matches: Vec<PathBuf> = paths
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect();
        matches.sort();
        if matches.is_empty() {
            loaded.notes.push(Note::new(
                &entry.file,
                entry.line,
                format!("[include] pattern {pattern:?} matches no file; nothing was included"),
            ));
            continue;
        }
        for path in matches {
            let id = identity(&path);
            if stack.contains(&id) {
                return Err(ImportError::invalid(
                    file,
                    entry.line,
                    format!("[include] cycle: {} includes itself", path.display()),
                ));
            }
            if seen.contains(&id) {
                continue;
            }
            seen.push(id.clone());
            let text = read_text(&path)?;
            loaded.included.push(path.clone());
            stack.push(id);
            read_one(loaded, &text, &path, env, stack, seen)?;
            stack.pop();
        }
    }
    Ok(())
}
