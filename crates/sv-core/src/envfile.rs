//! `.env` files read the way the IoT2MQTT platform writes them.
//!
//! The platform's web backend writes `f.write(f"{key}={value}\n")` with no quoting or escaping
//! and reads the file back with `line.split('=', 1)` and `strip()`
//! (`web/backend/services/config_service.py`). A password such as `pa$s w0rd#1` is therefore
//! stored as is, and a strict dotenv parser either rejects the file or rewrites the value. The
//! rules here follow the platform, with two additions for files written by hand:
//!
//! - a line is trimmed; an empty line or one starting with `#` is skipped;
//! - `KEY=value` splits at the first `=`; key and value are trimmed; the value is kept verbatim
//!   (no `$` expansion, no escapes, `#` inside a value is part of it);
//! - a leading `export ` before the key is dropped (shell-style files);
//! - one pair of matching surrounding quotes (`"…"` or `'…'`) is stripped (what python-dotenv
//!   users write); nothing inside is unescaped;
//! - a later line for the same key wins (the platform loads the lines into a dict);
//! - a line that is not `KEY=value` (no `=`, an empty key, a key with blanks, invalid UTF-8) is
//!   *malformed*: it is remembered, not fatal. Looking up the key it seems to define is an error
//!   naming the line, so a file is only refused for a line somebody actually needs.
//!
//! Pure: the caller reads the bytes and adds the file name to errors.

use std::collections::HashMap;

/// One parsed `.env` file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvFile {
    /// Key → (value, 1-based line), the last definition of each key.
    vars: HashMap<String, (String, usize)>,
    /// Key (best guess) → the last malformed line that seems to be about it.
    malformed: HashMap<String, Malformed>,
    /// Keys in order of first appearance, for callers that export the whole file.
    order: Vec<String>,
}

/// A line that is not `KEY=value`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct Malformed {
    /// 1-based line number.
    pub line: usize,
    /// Why the line was not understood (never quotes the value: it may be a secret).
    pub reason: String,
}

impl EnvFile {
    /// Parses the bytes of a `.env` file. Never fails: malformed lines are kept for lookups.
    pub fn parse(bytes: &[u8]) -> EnvFile {
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let mut out = EnvFile::default();
        for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let line = i + 1;
            let Ok(text) = std::str::from_utf8(raw) else {
                let lossy = String::from_utf8_lossy(raw);
                out.bad(guess_key(&lossy), line, "not valid UTF-8");
                continue;
            };
            let text = text.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            let Some((key, value)) = text.split_once('=') else {
                out.bad(guess_key(text), line, "expected KEY=value");
                continue;
            };
            let key = strip_export(key.trim());
            if key.is_empty() {
                continue;
            }
            if key.contains(char::is_whitespace) {
                out.bad(guess_key(key), line, "a key cannot contain blanks");
                continue;
            }
            if value.contains('\0') {
                out.bad(Some(key), line, "a value cannot contain a NUL byte");
                continue;
            }
            out.malformed.remove(key);
            if !out.vars.contains_key(key) {
                out.order.push(key.to_string());
            }
            out.vars
                .insert(key.to_string(), (unquote(value.trim()).to_string(), line));
        }
        out
    }

    fn bad(&mut self, key: Option<&str>, line: usize, reason: &str) {
        if let Some(key) = key {
            self.vars.remove(key);
            self.malformed.insert(
                key.to_string(),
                Malformed {
                    line,
                    reason: reason.to_string(),
                },
            );
        }
    }

    /// The value of `key`: `Ok(None)` when the file does not define it, an error when the last
    /// line about it is malformed.
    pub fn get(&self, key: &str) -> Result<Option<&str>, Malformed> {
        if let Some(m) = self.malformed.get(key) {
            return Err(m.clone());
        }
        Ok(self.vars.get(key).map(|(v, _)| v.as_str()))
    }

    /// Every well-formed `KEY=value`, in order of first appearance (the value of the last line).
    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.order
            .iter()
            .filter_map(|k| self.vars.get(k).map(|(v, _)| (k.as_str(), v.as_str())))
    }

    /// The malformed lines, for callers that use every key of the file (an `env_file`).
    pub fn malformed(&self) -> impl Iterator<Item = (&str, &Malformed)> {
        self.malformed.iter().map(|(k, m)| (k.as_str(), m))
    }
}

fn strip_export(key: &str) -> &str {
    match key.strip_prefix("export") {
        Some(rest) if rest.starts_with([' ', '\t']) => rest.trim_start(),
        _ => key,
    }
}

/// The key a malformed line most likely meant: its first word after an optional `export`.
fn guess_key(text: &str) -> Option<&str> {
    let text = strip_export(text.trim());
    text.split(|c: char| c.is_whitespace() || c == '=')
        .next()
        .filter(|k| !k.is_empty())
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(text: &str, key: &str) -> Option<String> {
        EnvFile::parse(text.as_bytes())
            .get(key)
            .unwrap()
            .map(str::to_string)
    }

    #[test]
    fn values_the_platform_writes_are_kept_verbatim() {
        // What `f.write(f"{key}={value}\n")` produces for these values.
        for v in [
            "pa$s w0rd#1",
            "$HOME",
            "${USER}x",
            r"back\slash\n",
            r#"it's "quoted" inside"#,
            "a=b=c",
            "#not-a-comment",
            "trailing # kept",
        ] {
            assert_eq!(
                get(&format!("MQTT_PASSWORD={v}\n"), "MQTT_PASSWORD").unwrap(),
                v
            );
        }
    }

    #[test]
    fn the_platform_generated_header_and_blank_lines_are_skipped() {
        let text = "# IoT2MQTT Configuration\n# Generated at 2024-01-01T00:00:00\n\n# MQTT Broker Settings\nMQTT_HOST=\nMQTT_PORT=1883\n\n";
        let f = EnvFile::parse(text.as_bytes());
        assert_eq!(f.get("MQTT_HOST").unwrap(), Some(""));
        assert_eq!(f.get("MQTT_PORT").unwrap(), Some("1883"));
        assert_eq!(f.vars().count(), 2);
    }

    #[test]
    fn trimming_quotes_and_export_follow_python_strip_and_python_dotenv() {
        for (line, key, value) in [
            ("  KEY  =  v a l  \r\n", "KEY", "v a l"),
            ("\u{feff}KEY=1", "KEY", "1"),
            ("   # indented comment\nK=1", "K", "1"),
            // One pair of matching quotes goes; nothing inside is unescaped.
            ("K=\"pa$s w0rd#1\"", "K", "pa$s w0rd#1"),
            ("K='x'", "K", "x"),
            (r#"K="a\"b""#, "K", r#"a\"b"#),
            ("K=\"\"x\"\"", "K", "\"x\""),
            ("K=\"unbalanced", "K", "\"unbalanced"),
            ("K=\"mixed'", "K", "\"mixed'"),
            ("K=\"", "K", "\""),
            ("export K=1", "K", "1"),
            ("export\tK = 2", "K", "2"),
            // A key that merely starts with "export" is a key.
            ("exported=3", "exported", "3"),
        ] {
            assert_eq!(get(line, key).unwrap(), value, "{line:?}");
        }
    }

    #[test]
    fn later_lines_win() {
        assert_eq!(get("K=1\nK=2\n", "K").unwrap(), "2");
        let f = EnvFile::parse(b"A=1\nB=2\nA=3\n");
        assert_eq!(f.vars().collect::<Vec<_>>(), [("A", "3"), ("B", "2")]);
    }

    #[test]
    fn malformed_lines_fail_only_the_key_they_name() {
        let f = EnvFile::parse(
            b"GOOD=1\nMQTT_PASSWORD secret\nBAD LINE 'unterminated\nexport LONELY\n=nokey\nSPACED KEY=x\n",
        );
        assert_eq!(f.get("GOOD").unwrap(), Some("1"));
        assert_eq!(f.get("OTHER").unwrap(), None);
        let e = f.get("MQTT_PASSWORD").unwrap_err();
        assert_eq!(e.line, 2);
        assert_eq!(e.to_string(), "line 2: expected KEY=value");
        assert!(!e.to_string().contains("secret"));
        assert_eq!(f.get("BAD").unwrap_err().line, 3);
        assert_eq!(f.get("LONELY").unwrap_err().line, 4);
        assert_eq!(f.get("SPACED").unwrap_err().line, 6);
        assert_eq!(f.malformed().count(), 4);
    }

    #[test]
    fn a_well_formed_line_after_a_malformed_one_repairs_the_key_and_vice_versa() {
        let f = EnvFile::parse(b"K oops\nK=fixed\n");
        assert_eq!(f.get("K").unwrap(), Some("fixed"));
        let f = EnvFile::parse(b"K=old\nK oops\n");
        assert_eq!(f.get("K").unwrap_err().line, 2);
    }

    #[test]
    fn invalid_utf8_and_nul_are_malformed_for_their_key_only() {
        let f = EnvFile::parse(b"A=\xff\xfe\nB=ok\nC=x\0y\n");
        assert_eq!(f.get("A").unwrap_err().line, 1);
        assert_eq!(f.get("B").unwrap(), Some("ok"));
        assert_eq!(f.get("C").unwrap_err().line, 3);
    }

    #[test]
    fn an_empty_file_defines_nothing() {
        let f = EnvFile::parse(b"");
        assert_eq!(f.vars().count(), 0);
        assert_eq!(f.get("K").unwrap(), None);
    }
}
