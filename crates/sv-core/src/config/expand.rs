//! `${VAR}` / `${VAR:-default}` expansion in `environment` values.
//!
//! Grammar: `$$` is a literal `$`; `${NAME}` is the variable (an error when it is not set);
//! `${NAME:-default}` is the variable, or `default` (taken literally) when it is unset or empty,
//! as in the POSIX shell. `NAME` is `[A-Za-z_][A-Za-z0-9_]*`. Any other `$` is an error rather
//! than a literal, so `$HOME` (which a shell would expand) never silently stays unexpanded.

/// One problem in a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ExpandError {
    /// `${NAME}` without a default, and `NAME` is not set.
    Undefined(String),
    /// `${` without a closing `}`.
    Unclosed,
    /// A `$` followed by neither `{` nor `$`.
    LoneDollar,
    /// `${...}` whose name is not a variable name.
    BadName(String),
}

impl std::fmt::Display for ExpandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpandError::Undefined(name) => write!(
                f,
                "environment variable \"{name}\" is not set (write \"${{{name}:-default}}\" to give a default)"
            ),
            ExpandError::Unclosed => write!(f, "\"${{\" without a closing \"}}\""),
            ExpandError::LoneDollar => write!(
                f,
                "\"$\" must be followed by \"{{NAME}}\" (write \"$$\" for a literal dollar)"
            ),
            ExpandError::BadName(name) => write!(f, "invalid variable name \"{name}\""),
        }
    }
}

/// Expands one value, collecting every problem in it.
pub(super) fn expand(
    value: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<ExpandError>> {
    let mut out = String::with_capacity(value.len());
    let mut errors = Vec::new();
    let mut rest = value;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(after) = after.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(close) = body.find('}') else {
                errors.push(ExpandError::Unclosed);
                rest = "";
                break;
            };
            let inner = &body[..close];
            rest = &body[close + 1..];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            if !is_name(name) {
                errors.push(ExpandError::BadName(name.to_string()));
                continue;
            }
            match (env(name), default) {
                (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => errors.push(ExpandError::Undefined(name.to_string())),
            }
        } else {
            errors.push(ExpandError::LoneDollar);
            rest = after;
        }
    }
    out.push_str(rest);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("broker".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_variables_defaults_and_escapes() {
        assert_eq!(expand("plain", &env), Ok("plain".into()));
        assert_eq!(expand("${HOST}:1883", &env), Ok("broker:1883".into()));
        assert_eq!(expand("${NOPE:-x y}", &env), Ok("x y".into()));
        assert_eq!(expand("${HOST:-x}", &env), Ok("broker".into()));
        assert_eq!(expand("${EMPTY:-d}", &env), Ok("d".into()));
        assert_eq!(expand("${EMPTY}", &env), Ok("".into()));
        assert_eq!(expand("${NOPE:-}", &env), Ok("".into()));
        assert_eq!(expand("a$$b$${HOST}", &env), Ok("a$b${HOST}".into()));
        assert_eq!(expand("${HOST}${HOST}", &env), Ok("brokerbroker".into()));
    }

    #[test]
    fn reports_every_problem() {
        assert_eq!(
            expand("${A} and ${B}", &env),
            Err(vec![
                ExpandError::Undefined("A".into()),
                ExpandError::Undefined("B".into())
            ])
        );
        assert_eq!(expand("$HOME", &env), Err(vec![ExpandError::LoneDollar]));
        assert_eq!(expand("cost: 5$", &env), Err(vec![ExpandError::LoneDollar]));
        assert_eq!(expand("${HOST", &env), Err(vec![ExpandError::Unclosed]));
        assert_eq!(
            expand("${1X}", &env),
            Err(vec![ExpandError::BadName("1X".into())])
        );
        assert_eq!(
            expand("${}", &env),
            Err(vec![ExpandError::BadName("".into())])
        );
    }
}
