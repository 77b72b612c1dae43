//! supervisord's `%(name)s` expansion: Python's `str % mapping` on every option value.
//!
//! supervisord runs each value through `value % expansions` (`supervisor.options.expand`), so
//! `%%` is a literal `%`, `%(process_num)02d` formats a number, and any other `%` is an error
//! ("badly formatted"). This module implements that subset of Python's printf-style formatting:
//! a mapping key is required, flags `-+ #0`, a width, a precision, an ignored length modifier,
//! and the conversions `s r a d i u x X o`. Which names resolve, and to what, is the caller's
//! decision through [`Lookup`], so `%(ENV_X)s` can be kept for runtime expansion instead of
//! being baked in.

/// What a `%(name)...` resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    /// A string (`here`, `program_name`, `ENV_X`, ...).
    Str(String),
    /// An integer (`process_num`, `numprocs`).
    Int(i64),
    /// Text to insert as is, whatever the conversion (a placeholder the caller replaces later).
    Verbatim(String),
}

/// Resolves a mapping key; `None` is Python's `KeyError`.
pub(crate) type Lookup<'a> = dyn FnMut(&str) -> Option<Value> + 'a;

/// Expands `s`; the error is a lower-case sentence for the caller to position.
pub(crate) fn expand(s: &str, lookup: &mut Lookup<'_>) -> Result<String, String> {
    if !s.contains('%') {
        return Ok(s.to_string());
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.get(i) {
            None => return Err("a lone \"%\" at the end (write \"%%\" for a percent sign)".into()),
            Some('%') => {
                out.push('%');
                i += 1;
                continue;
            }
            Some('(') => {}
            Some(_) => {
                return Err(
                    "\"%\" must start \"%(name)s\" (write \"%%\" for a percent sign)".into(),
                );
            }
        }
        // Python allows balanced parentheses inside the key.
        i += 1;
        let start = i;
        let mut depth = 1;
        while i < chars.len() {
            match chars[i] {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        if i >= chars.len() {
            return Err("\"%(\" without a closing \")\"".into());
        }
        let name: String = chars[start..i].iter().collect();
        i += 1;
        let mut spec = Spec::default();
        while let Some(&f) = chars.get(i) {
            match f {
                '-' => spec.left = true,
                '+' => spec.plus = true,
                ' ' => spec.space = true,
                '#' => spec.alt = true,
                '0' => spec.zero = true,
                _ => break,
            }
            i += 1;
        }
        spec.width = digits(&chars, &mut i);
        if chars.get(i) == Some(&'.') {
            i += 1;
            spec.precision = Some(digits(&chars, &mut i).unwrap_or(0));
        }
        if matches!(chars.get(i), Some('h' | 'l' | 'L')) {
            i += 1;
        }
        let Some(&conv) = chars.get(i) else {
            return Err(format!(
                "\"%({name})\" lacks a conversion such as \"s\" or \"d\""
            ));
        };
        i += 1;
        let value = lookup(&name).ok_or_else(|| format!("unknown name \"%({name})s\""))?;
        out.push_str(&format_one(&name, &value, conv, &spec)?);
    }
    Ok(out)
}

#[derive(Debug, Default)]
struct Spec {
    left: bool,
    plus: bool,
    space: bool,
    alt: bool,
    zero: bool,
    width: Option<usize>,
    precision: Option<usize>,
}

fn digits(chars: &[char], i: &mut usize) -> Option<usize> {
    let start = *i;
    while chars.get(*i).is_some_and(char::is_ascii_digit) {
        *i += 1;
    }
    if *i == start {
        return None;
    }
    chars[start..*i].iter().collect::<String>().parse().ok()
}

fn format_one(name: &str, value: &Value, conv: char, spec: &Spec) -> Result<String, String> {
    let body = match (value, conv) {
        (Value::Verbatim(text), _) => return Ok(text.clone()),
        (Value::Str(s), 's' | 'a') => truncate(s, spec.precision),
        (Value::Str(s), 'r') => truncate(&python_repr(s), spec.precision),
        (Value::Int(n), 's' | 'r' | 'a') => truncate(&n.to_string(), spec.precision),
        (Value::Int(n), 'd' | 'i' | 'u' | 'x' | 'X' | 'o') => {
            let magnitude = n.unsigned_abs();
            let mut digits = match conv {
                'x' => format!("{magnitude:x}"),
                'X' => format!("{magnitude:X}"),
                'o' => format!("{magnitude:o}"),
                _ => magnitude.to_string(),
            };
            if let Some(p) = spec.precision
                && digits.len() < p
            {
                digits = format!("{}{digits}", "0".repeat(p - digits.len()));
            }
            let prefix = match (spec.alt, conv) {
                (true, 'x') => "0x",
                (true, 'X') => "0X",
                (true, 'o') => "0o",
                _ => "",
            };
            let sign = if *n < 0 {
                "-"
            } else if spec.plus {
                "+"
            } else if spec.space {
                " "
            } else {
                ""
            };
            let head = format!("{sign}{prefix}");
            let len = head.chars().count() + digits.len();
            let width = spec.width.unwrap_or(0);
            if spec.zero && !spec.left && len < width {
                return Ok(format!("{head}{}{digits}", "0".repeat(width - len)));
            }
            format!("{head}{digits}")
        }
        (Value::Str(_), 'd' | 'i' | 'u' | 'x' | 'X' | 'o') => {
            return Err(format!(
                "\"%({name}){conv}\" formats a number, but {name} is text (use \"%({name})s\")"
            ));
        }
        _ => {
            return Err(format!(
                "unsupported conversion \"{conv}\" in \"%({name}){conv}\""
            ));
        }
    };
    let width = spec.width.unwrap_or(0);
    let len = body.chars().count();
    if len >= width {
        return Ok(body);
    }
    let pad = " ".repeat(width - len);
    Ok(if spec.left {
        format!("{body}{pad}")
    } else {
        format!("{pad}{body}")
    })
}

fn truncate(s: &str, precision: Option<usize>) -> String {
    match precision {
        Some(p) => s.chars().take(p).collect(),
        None => s.to_string(),
    }
}

/// Python's `repr()` of a string, close enough for paths and names.
fn python_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::from(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &str) -> Result<String, String> {
        expand(s, &mut |name: &str| match name {
            "program_name" => Some(Value::Str("web".into())),
            "process_num" => Some(Value::Int(7)),
            "neg" => Some(Value::Int(-3)),
            "ENV_HOME" => Some(Value::Verbatim("${HOME}".into())),
            _ => None,
        })
    }

    #[test]
    fn names_widths_and_percent_signs() {
        assert_eq!(run("%(program_name)s_%(process_num)02d").unwrap(), "web_07");
        assert_eq!(run("%(process_num)d%%").unwrap(), "7%");
        assert_eq!(
            run("[%(program_name)5s|%(program_name)-5s]").unwrap(),
            "[  web|web  ]"
        );
        assert_eq!(
            run("%(process_num)03x %(process_num)#o").unwrap(),
            "007 0o7"
        );
        assert_eq!(run("%(neg)04d %(process_num)+d").unwrap(), "-003 +7");
        assert_eq!(run("%(program_name).2s").unwrap(), "we");
        assert_eq!(run("%(program_name)r").unwrap(), "'web'");
        assert_eq!(run("no percent").unwrap(), "no percent");
        assert_eq!(run("%(ENV_HOME)s/x").unwrap(), "${HOME}/x");
    }

    #[test]
    fn malformed_formats_are_errors() {
        assert!(run("100%").is_err());
        assert!(run("50% off").is_err());
        assert!(run("%s").is_err());
        assert!(run("%(program_name").is_err());
        assert!(run("%(program_name)").is_err());
        assert!(run("%(missing)s").unwrap_err().contains("unknown name"));
        assert!(
            run("%(program_name)d")
                .unwrap_err()
                .contains("formats a number")
        );
    }
}
