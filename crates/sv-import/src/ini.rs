//! The INI dialect of supervisord: Python's `RawConfigParser` as `UnhosedConfigParser` sets it up.
//!
//! A line-oriented reader rather than an INI crate because the importer needs the file and line
//! of every key (warnings and errors point at them) and CPython's exact rules, which the INI
//! crates (`rust-ini`, `configparser`) do not keep together: they drop positions after parsing and
//! differ on continuation lines and inline comments. The rules reproduced here, from CPython's
//! `configparser.RawConfigParser._read` with `inline_comment_prefixes=(';', '#')` and
//! `strict=False`:
//!
//! - a line whose stripped text starts with `#` or `;` is a comment; elsewhere `;` or `#` starts
//!   a comment when it is at the start of the line or preceded by whitespace (`a;b` is a value);
//! - `[name]` opens a section (the name is everything up to the last `]`); a section seen again
//!   (in the same or another file) is merged, a key seen again replaces the earlier value;
//! - `key = value` or `key: value` (the first `=` or `:` splits), keys lower-cased;
//! - a line indented deeper than its key's line continues the value (joined with `\n`); blank
//!   lines inside a value are kept, trailing ones dropped;
//! - a key or value line before any section is an error, as is a line that is neither.
//!
//! `[DEFAULT]` values are inherited by every section, as `RawConfigParser.get` does.

use std::path::{Path, PathBuf};

/// One `key = value`, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Lower-cased key.
    pub key: String,
    /// The value, continuation lines joined with `\n`, inline comments removed, stripped.
    pub value: String,
    /// The file the key line is in.
    pub file: PathBuf,
    /// The 1-based line of the key.
    pub line: usize,
}

/// One section, merged over every place it was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Section {
    /// The name between the brackets, as written (section names are case-sensitive).
    pub name: String,
    /// Where the section was first opened.
    pub file: PathBuf,
    /// The 1-based line of its first header.
    pub line: usize,
    /// Keys in first-seen order; a repeated key replaces the value in place.
    pub entries: Vec<Entry>,
}

impl Section {
    /// The entry for `key` (lower-case).
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key == key)
    }
}

/// A malformed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub line: usize,
    pub message: String,
}

/// Every section read so far, in first-seen order, plus `[DEFAULT]`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ini {
    pub sections: Vec<Section>,
    pub defaults: Vec<Entry>,
}

/// Where the current key's value goes.
#[derive(Debug, Clone, Copy)]
enum Target {
    Section(usize),
    Defaults,
}

impl Ini {
    /// Reads one file's text into the sections, merging as CPython does when a parser reads
    /// several files. Returns the sections this text opened or reopened with the line of each
    /// header, in order.
    pub fn read(&mut self, text: &str, file: &Path) -> Result<Vec<(String, usize)>, SyntaxError> {
        let mut touched = Vec::new();
        let mut current: Option<Target> = None;
        // (target, entry index, pending blank lines) of the value being continued.
        let mut open_value: Option<(Target, usize, usize)> = None;
        let mut indent_level = 0usize;
        for (index, raw) in split_lines(text).enumerate() {
            let lineno = index + 1;
            let (content, had_comment) = strip_comment(raw);
            let value = content.trim();
            if value.is_empty() {
                // `empty_lines_in_values`: a blank line may be part of a multi-line value, but
                // only when no comment was on it.
                if !had_comment && let Some((_, _, blanks)) = open_value.as_mut() {
                    *blanks += 1;
                }
                continue;
            }
            let cur_indent = raw.chars().take_while(|c| c.is_whitespace()).count();
            if let Some((target, idx, blanks)) = open_value
                && cur_indent > indent_level
            {
                let entry = self.entry_mut(target, idx);
                for _ in 0..blanks {
                    entry.value.push('\n');
                }
                entry.value.push('\n');
                entry.value.push_str(value);
                open_value = Some((target, idx, 0));
                continue;
            }
            indent_level = cur_indent;
            if let Some(name) = section_header(value) {
                open_value = None;
                if name == "DEFAULT" {
                    current = Some(Target::Defaults);
                    continue;
                }
                let idx = match self.sections.iter().position(|s| s.name == name) {
                    Some(idx) => idx,
                    None => {
                        self.sections.push(Section {
                            name: name.to_string(),
                            file: file.to_path_buf(),
                            line: lineno,
                            entries: Vec::new(),
                        });
                        self.sections.len() - 1
                    }
                };
                touched.push((name.to_string(), lineno));
                current = Some(Target::Section(idx));
                continue;
            }
            let Some(target) = current else {
                return Err(SyntaxError {
                    line: lineno,
                    message: format!(
                        "{value:?} is outside any section (a supervisord config starts with a \
                         [section] header)"
                    ),
                });
            };
            let Some((key, val)) = option_line(value) else {
                return Err(SyntaxError {
                    line: lineno,
                    message: format!(
                        "{value:?} is neither a [section] header nor a key = value line"
                    ),
                });
            };
            let entry = Entry {
                key: key.to_lowercase(),
                value: val.to_string(),
                file: file.to_path_buf(),
                line: lineno,
            };
            let entries = self.entries_mut(target);
            let idx = match entries.iter().position(|e| e.key == entry.key) {
                Some(idx) => {
                    entries[idx] = entry;
                    idx
                }
                None => {
                    entries.push(entry);
                    entries.len() - 1
                }
            };
            open_value = Some((target, idx, 0));
        }
        // CPython strips trailing whitespace of every joined value.
        for section in &mut self.sections {
            for entry in &mut section.entries {
                entry.value.truncate(entry.value.trim_end().len());
            }
        }
        Ok(touched)
    }

    /// The section named `name`, if any.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// `key` in `section`, falling back to `[DEFAULT]` as `RawConfigParser.get` does.
    pub fn lookup<'a>(&'a self, section: &'a Section, key: &str) -> Option<&'a Entry> {
        section
            .get(key)
            .or_else(|| self.defaults.iter().find(|e| e.key == key))
    }

    fn entries_mut(&mut self, target: Target) -> &mut Vec<Entry> {
        match target {
            Target::Section(idx) => &mut self.sections[idx].entries,
            Target::Defaults => &mut self.defaults,
        }
    }

    fn entry_mut(&mut self, target: Target, idx: usize) -> &mut Entry {
        &mut self.entries_mut(target)[idx]
    }
}

/// Lines as Python's universal-newline text mode yields them (`\r\n`, `\r` and `\n` end a line).
fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\r', '\n']) {
            Some(i) => {
                let skip = if s[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[i + skip..]);
                Some(&s[..i])
            }
            None => {
                rest = None;
                if s.is_empty() { None } else { Some(s) }
            }
        }
    })
}

/// Removes a full-line or inline comment; says whether there was one.
fn strip_comment(line: &str) -> (&str, bool) {
    let trimmed = line.trim_start();
    if trimmed.starts_with('#') || trimmed.starts_with(';') {
        return ("", true);
    }
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        if (c == ';' || c == '#') && prev_space {
            return (&line[..i], true);
        }
        prev_space = c.is_whitespace();
    }
    (line, false)
}

/// `\[(?P<header>.+)\]` matched at the start: the name runs to the last `]`.
fn section_header(value: &str) -> Option<&str> {
    let inner = value.strip_prefix('[')?;
    let close = inner.rfind(']')?;
    let name = &inner[..close];
    (!name.is_empty()).then_some(name)
}

/// `(?P<option>.*?)\s*(?P<vi>=|:)\s*(?P<value>.*)$`: the first `=` or `:` splits.
fn option_line(value: &str) -> Option<(&str, &str)> {
    let split = value.find(['=', ':'])?;
    let key = value[..split].trim_end();
    if key.is_empty() {
        return None;
    }
    Some((key, value[split + 1..].trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Ini, SyntaxError> {
        let mut ini = Ini::default();
        ini.read(text, Path::new("t.conf"))?;
        Ok(ini)
    }

    fn value<'a>(ini: &'a Ini, section: &str, key: &str) -> &'a str {
        &ini.section(section).unwrap().get(key).unwrap().value
    }

    #[test]
    fn continuation_lines_join_with_newlines_and_keep_inner_blank_lines() {
        let ini = read("[a]\nenv = A=1,\n  B=2\n\n  C=3\n\n\nnext=x\n").unwrap();
        assert_eq!(value(&ini, "a", "env"), "A=1,\nB=2\n\nC=3");
        assert_eq!(value(&ini, "a", "next"), "x");
    }

    #[test]
    fn blank_line_with_a_comment_is_not_part_of_the_value() {
        let ini = read("[a]\nk = 1\n  ; note\n  2\n").unwrap();
        assert_eq!(value(&ini, "a", "k"), "1\n2");
    }

    #[test]
    fn inline_comments_need_preceding_whitespace() {
        let ini = read("[a]\nk = x;y ; comment\nh = a#b # c\nurl=http://h/#frag\n").unwrap();
        assert_eq!(value(&ini, "a", "k"), "x;y");
        assert_eq!(value(&ini, "a", "h"), "a#b");
        assert_eq!(value(&ini, "a", "url"), "http://h/#frag");
    }

    #[test]
    fn first_equals_or_colon_splits_and_keys_are_lower_cased() {
        let ini = read("[a]\nCommand: /bin/x --a=b\nPRIORITY = 5\n").unwrap();
        assert_eq!(value(&ini, "a", "command"), "/bin/x --a=b");
        assert_eq!(value(&ini, "a", "priority"), "5");
    }

    #[test]
    fn repeated_sections_merge_and_repeated_keys_replace() {
        let ini = read("[a]\nx=1\ny=2\n[b]\n[a]\nx=3\n").unwrap();
        let a = ini.section("a").unwrap();
        assert_eq!(a.get("x").unwrap().value, "3");
        assert_eq!(a.get("x").unwrap().line, 6);
        assert_eq!(a.line, 1);
        assert_eq!(ini.sections.len(), 2);
    }

    #[test]
    fn line_outside_a_section_is_an_error_with_its_line() {
        let err = read("; header comment\n\nfoo=bar\n").unwrap_err();
        assert_eq!(err.line, 3);
        assert!(
            err.message.contains("outside any section"),
            "{}",
            err.message
        );
    }

    #[test]
    fn line_without_separator_is_an_error() {
        let err = read("[a]\nx=1\njunk\n").unwrap_err();
        assert_eq!(err.line, 3);
    }

    #[test]
    fn crlf_and_defaults() {
        let ini = read("[DEFAULT]\nstartsecs=3\r\n[a]\r\nx=1\r\n").unwrap();
        let a = ini.section("a").unwrap();
        assert_eq!(ini.lookup(a, "startsecs").unwrap().value, "3");
        assert_eq!(ini.lookup(a, "x").unwrap().value, "1");
    }
}
