//! Writing the translated document as TOML text with comments.
//!
//! Written by hand rather than through `toml`'s serializer because the output carries comments
//! (the notes) next to the settings they concern, which a serializer cannot place. Safety rests
//! on two functions: [`string`] escapes every value as a TOML basic string (backslash, quote and
//! every control character escaped, so no value can end the string or the line), and [`comment`]
//! escapes control characters in comment text so no note can start a new line. Property tests
//! parse the output back.

use std::fmt::Write as _;
use std::path::Path;

use crate::load::{Loaded, dir_of};
use crate::translate::{Doc, Note, Part, Val};

pub(crate) fn render(doc: &Doc, loaded: &Loaded) -> String {
    let base = dir_of(&loaded.origin);
    let rel = |file: &Path| -> String {
        file.strip_prefix(&base)
            .unwrap_or(file)
            .display()
            .to_string()
    };
    let source_name = loaded.origin.file_name().map_or_else(
        || loaded.origin.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}",
        comment(&format!(
            "iot2mqtt-sv configuration imported from {source_name}"
        ))
    );
    for file in &loaded.included {
        let _ = writeln!(out, "{}", comment(&format!("  and {}", rel(file))));
    }
    for line in [
        "Every \"NOTE\" below is a supervisord setting without an exact equivalent (also printed",
        "as a warning). Check the file with `iot2mqtt-sv check -c FILE`.",
        "",
        "Deliberate differences from supervisord (see docs/migrating-from-supervisord.md):",
        "- stop and kill signals go to the program's whole process group (stopasgroup = true);",
        "- restarts back off exponentially (see [program.NAME.backoff]);",
        "- a program that goes FATAL stops the supervisor with its exit code (critical = true);",
        "- startup order can wait for readiness: consider depends_on and [program.NAME.ready]",
        "  instead of priorities, startsecs and sleeps.",
    ] {
        let _ = writeln!(out, "{}", comment(line));
    }
    if doc.container_output {
        for line in [
            "Program output is captured and written to the supervisor's stdout, one line at a",
            "time, prefixed with the program name (`name | line`); no log file settings needed.",
        ] {
            let _ = writeln!(out, "{}", comment(line));
        }
    }
    if doc.merged_global_env {
        let _ = writeln!(
            out,
            "{}",
            comment("[supervisord] environment is merged into every program's environment.")
        );
    }
    out.push_str("\n[supervisor]\n");
    for (k, v) in &doc.supervisor_keys {
        let _ = writeln!(out, "{k} = {}", value(v));
    }
    for note in &doc.global {
        let _ = writeln!(out, "{}", note_line(note, &rel));
    }
    for group in &doc.groups {
        let _ = writeln!(
            out,
            "{}",
            comment(&format!(
                "{}:{}: {}",
                rel(&group.file),
                group.line,
                group.message
            ))
        );
    }
    for program in &doc.programs {
        let table = format!("program.{}", key(&program.name));
        let _ = writeln!(out, "\n[{table}]");
        let _ = writeln!(
            out,
            "{}",
            comment(&format!(
                "from [{}] at {}:{}",
                program.section,
                rel(&program.file),
                program.line
            ))
        );
        for note in &program.notes {
            let _ = writeln!(out, "{}", note_line(note, &rel));
        }
        for (k, v) in &program.keys {
            let _ = writeln!(out, "{k} = {}", value(v));
        }
        if !program.environment.is_empty() {
            let _ = writeln!(out, "\n[{table}.environment]");
            for (k, parts) in &program.environment {
                let _ = writeln!(out, "{} = {}", key(k), string(&env_text(parts)));
            }
        }
    }
    out
}

fn note_line(note: &Note, rel: &dyn Fn(&Path) -> String) -> String {
    comment(&format!(
        "NOTE {}:{}: {}",
        rel(&note.file),
        note.line,
        note.message
    ))
}

/// An environment value in iot2mqtt-sv's syntax: `$$` for a literal dollar, `${X}` expanded.
fn env_text(parts: &[Part]) -> String {
    let mut s = String::new();
    for part in parts {
        match part {
            Part::Lit(text) => s.push_str(&text.replace('$', "$$")),
            Part::Var(name) => {
                let _ = write!(s, "${{{name}}}");
            }
        }
    }
    s
}

fn value(v: &Val) -> String {
    match v {
        Val::Str(s) => string(s),
        Val::Int(n) => n.to_string(),
        Val::Bool(b) => b.to_string(),
        Val::Strs(items) => {
            let items: Vec<String> = items.iter().map(|s| string(s)).collect();
            format!("[{}]", items.join(", "))
        }
        Val::Ints(items) => {
            let items: Vec<String> = items.iter().map(i64::to_string).collect();
            format!("[{}]", items.join(", "))
        }
    }
}

/// A bare key when TOML allows one, else a quoted key.
pub(crate) fn key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        string(k)
    }
}

/// A TOML basic string.
pub(crate) fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A `#` comment line; control characters are shown escaped so the comment stays one line.
fn comment(text: &str) -> String {
    let mut out = String::from("#");
    if !text.is_empty() {
        out.push(' ');
    }
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_escape_quotes_backslashes_and_controls() {
        assert_eq!(
            string("a\"b\\c\nd\u{7f}\u{1}"),
            "\"a\\\"b\\\\c\\nd\\u007F\\u0001\""
        );
    }

    #[test]
    fn keys_are_bare_only_when_allowed() {
        assert_eq!(key("PYTHONUNBUFFERED"), "PYTHONUNBUFFERED");
        assert_eq!(key("web.1"), "\"web.1\"");
        assert_eq!(key(""), "\"\"");
    }

    #[test]
    fn comments_stay_on_one_line() {
        assert_eq!(comment("a\nb = 1"), "# a\\nb = 1");
    }

    #[test]
    fn environment_values_escape_dollars() {
        let parts = vec![
            Part::Lit("cost $5 ".into()),
            Part::Var("HOME".into()),
            Part::Lit("/x".into()),
        ];
        assert_eq!(env_text(&parts), "cost $$5 ${HOME}/x");
    }
}
