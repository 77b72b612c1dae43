//! `environment=` values: supervisord's `KEY="val",KEY2=val2` syntax.
//!
//! supervisord (`supervisor.datatypes.dict_of_key_value_pairs`) tokenizes the whole value with
//! Python's `shlex` (extra word characters `/.+-():`), then takes tokens three at a time
//! (`KEY`, `=`, `value`) and skips one separator token. Quotes allow commas, spaces and newlines in
//! a value; a continuation line is just more whitespace. supervisord 4.2 runs the tokenizer in
//! legacy mode (quotes kept, then stripped with `strip('\'"')`, no backslash escapes); the next
//! release uses POSIX mode so that `\"` works inside double quotes. The importer takes the POSIX
//! reading, which accepts everything the legacy one does, and reports any key whose value the two
//! readings disagree on, so nothing changes silently.

use crate::shlex::{Lexer, ShlexError};

/// Why an environment string was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EnvError {
    /// The tokenizer failed (unterminated quote, trailing backslash).
    Lex(ShlexError),
    /// The tokens are not `KEY = value` triples; the message says where.
    Pairs(String),
}

impl std::fmt::Display for EnvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnvError::Lex(e) => write!(f, "{e}"),
            EnvError::Pairs(m) => f.write_str(m),
        }
    }
}

/// The pairs of one `environment=` value, in first-seen order; a repeated key keeps its first
/// position and its last value, as a Python dict does.
pub(crate) fn parse_pairs(value: &str) -> Result<Vec<(String, String)>, EnvError> {
    pairs(value, true)
}

/// Keys whose value supervisord 4.2's legacy parsing would read differently, with that reading.
/// Empty when the legacy parser would reject the string altogether.
pub(crate) fn legacy_differences(value: &str, posix: &[(String, String)]) -> Vec<(String, String)> {
    let Ok(legacy) = pairs(value, false) else {
        return Vec::new();
    };
    legacy
        .into_iter()
        .filter(|(k, v)| posix.iter().any(|(pk, pv)| pk == k && pv != v))
        .collect()
}

fn pairs(value: &str, posix: bool) -> Result<Vec<(String, String)>, EnvError> {
    let tokens = Lexer::key_value(posix)
        .tokens(value)
        .map_err(EnvError::Lex)?;
    let mut out: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let triple = &tokens[i..tokens.len().min(i + 3)];
        if triple.len() != 3 || triple[1] != "=" {
            let near = triple.first().map(String::as_str).unwrap_or("");
            return Err(EnvError::Pairs(format!(
                "expected KEY=value pairs separated by commas, but the pairs end at {near:?} \
                 (quote values that contain characters other than letters, digits and \
                 _/.+-():)"
            )));
        }
        let key = triple[0].clone();
        let mut val = triple[2].clone();
        if !posix {
            val = val.trim_matches(['\'', '"']).to_string();
        }
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = val,
            None => out.push((key, val)),
        }
        i += 4;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Vec<(String, String)> {
        parse_pairs(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    // Cases from supervisord's own test suite (DictOfKeyValuePairsTests).
    #[test]
    fn supervisord_test_suite_cases() {
        assert_eq!(ok(""), kv(&[]));
        assert_eq!(ok("foo=bar"), kv(&[("foo", "bar")]));
        assert_eq!(ok("foo=bar,baz=qux"), kv(&[("foo", "bar"), ("baz", "qux")]));
        assert_eq!(
            ok(" foo = bar , baz = qux "),
            kv(&[("foo", "bar"), ("baz", "qux")])
        );
        assert_eq!(
            ok("foo\n=\nbar\n,\nbaz\n=\nqux"),
            kv(&[("foo", "bar"), ("baz", "qux")])
        );
        assert_eq!(
            ok("foo='bar,baz',baz='q,ux'"),
            kv(&[("foo", "bar,baz"), ("baz", "q,ux")])
        );
        assert_eq!(
            ok("foo=\"bar,baz\",baz=\"q,ux\""),
            kv(&[("foo", "bar,baz"), ("baz", "q,ux")])
        );
        assert_eq!(ok("foo=\"a\nb\nc\""), kv(&[("foo", "a\nb\nc")]));
        assert_eq!(ok("foo=\"'\\\"\""), kv(&[("foo", "'\"")]));
        assert_eq!(ok("foo=\"\""), kv(&[("foo", "")]));
        assert_eq!(ok("foo=\"\",bar=a"), kv(&[("foo", ""), ("bar", "a")]));
        assert_eq!(
            ok("HOME=/home/auser,FOO=/.foo+(1.2)-_/,SUPERVISOR_SERVER_URL=http://127.0.0.1:9001"),
            kv(&[
                ("HOME", "/home/auser"),
                ("FOO", "/.foo+(1.2)-_/"),
                ("SUPERVISOR_SERVER_URL", "http://127.0.0.1:9001")
            ])
        );
        assert_eq!(ok("foo=bar,"), kv(&[("foo", "bar")]));
        for bad in [
            "foo",
            "foo=",
            "foo=bar,baz",
            "foo=bar,baz=",
            "KEY1=no-comma KEY2=x,",
        ] {
            assert!(parse_pairs(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn unterminated_quote_is_a_lex_error() {
        assert_eq!(
            parse_pairs("A=\"open,B=2"),
            Err(EnvError::Lex(ShlexError::NoClosingQuotation))
        );
    }

    #[test]
    fn special_characters_need_quotes() {
        assert!(parse_pairs("A=user@host").is_err());
        assert_eq!(ok("A=\"user@host\""), kv(&[("A", "user@host")]));
    }

    #[test]
    fn repeated_key_keeps_first_position_last_value() {
        assert_eq!(ok("A=1,B=2,A=3"), kv(&[("A", "3"), ("B", "2")]));
    }

    #[test]
    fn legacy_reading_differences_are_reported() {
        let value = "A='say \"hi\"',B=plain";
        let posix = ok(value);
        assert_eq!(posix, kv(&[("A", "say \"hi\""), ("B", "plain")]));
        assert_eq!(legacy_differences(value, &posix), kv(&[("A", "say \"hi")]));
        let same = "A=\"x,y\",B=z";
        assert!(legacy_differences(same, &ok(same)).is_empty());
    }
}
