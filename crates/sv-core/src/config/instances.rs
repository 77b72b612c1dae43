//! `numprocs`: several instances of one `[program.NAME]` table.
//!
//! A table with `numprocs`, `numprocs_start` or `process_name` becomes a *group*: `numprocs`
//! programs that share the definition, named by the `process_name` template (`{name}` is the
//! table name, `{num}` the instance number, `{num:02}` the number zero-padded to two digits).
//! `{num}` is also replaced in `command` and `environment` values, so each instance can get its
//! own port or slot. Expansion happens after the cross-program checks, which see the table
//! names: `depends_on = ["worker"]` means every instance of `worker`.
//!
//! Defaults follow supervisord where they can: `numprocs = 1`, `numprocs_start = 0`. The
//! template default differs: supervisord's is `%(program_name)s` (which cannot hold two
//! processes), this one is `"{name}_{num:02}"`, so a group works with `numprocs` alone.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::ops::Range;

use super::diag::Sink;
use super::model::ProgramConfig;

/// The `process_name` default.
pub const DEFAULT_PROCESS_NAME: &str = "{name}_{num:02}";
/// The most instances one table may have (a typo such as `numprocs = 10000` must not fork-bomb
/// the container).
pub const MAX_NUMPROCS: i64 = 1000;

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Name,
    /// `{num}` (width 0) or `{num:0W}`.
    Num {
        width: usize,
    },
}

/// A parsed `process_name` (or a command/environment string holding `{num}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Template(Vec<Piece>);

impl Template {
    /// Parses a `process_name`: every `{...}` must be `{name}`, `{num}` or `{num:0W}`.
    pub(super) fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find(['{', '}']) {
            if rest[open..].starts_with('}') {
                return Err("unmatched \"}\"".into());
            }
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                return Err("unclosed \"{\"".into());
            };
            let inner = &after[..close];
            pieces.push(placeholder(inner).ok_or_else(|| {
                format!("unknown placeholder \"{{{inner}}}\" (use {{name}}, {{num}} or {{num:02}})")
            })?);
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Template(pieces))
    }

    fn has_num(&self) -> bool {
        self.0.iter().any(|p| matches!(p, Piece::Num { .. }))
    }

    fn render(&self, name: &str, num: u32) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Name => out.push_str(name),
                Piece::Num { width } => {
                    let _ = write!(out, "{num:0width$}");
                }
            }
        }
        out
    }
}

/// `name`, `num` or `num:0W` (W from 1 to 9).
fn placeholder(inner: &str) -> Option<Piece> {
    match inner {
        "name" => Some(Piece::Name),
        "num" => Some(Piece::Num { width: 0 }),
        _ => {
            let spec = inner.strip_prefix("num:0")?;
            let width: usize = spec.parse().ok().filter(|w| (1..=9).contains(w))?;
            (spec.len() == 1).then_some(Piece::Num { width })
        }
    }
}

/// Replaces `{num}` and `{num:0W}` in `text`, leaving every other brace alone (commands may
/// hold JSON or shell braces).
fn substitute_num(text: &str, num: u32) -> String {
    if !text.contains("{num") {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("{num") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after
            .find('}')
            .and_then(|close| Some((close, placeholder(&after[..close])?)))
        {
            Some((close, Piece::Num { width })) => {
                let _ = write!(out, "{num:0width$}");
                rest = &after[close + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The group keys of one table, as read.
#[derive(Debug, Clone)]
pub(super) struct Instances {
    pub(super) numprocs: u32,
    pub(super) start: u32,
    pub(super) template: Template,
    /// Where name problems are reported: the `process_name` value, else the table name.
    pub(super) span: Range<usize>,
}

/// Checks a template against `numprocs` (the `{num}` rule) and returns it.
pub(super) fn instances(
    numprocs: u32,
    start: u32,
    process_name: Option<(&str, Range<usize>)>,
    table_span: Range<usize>,
    sink: &mut Sink,
) -> Option<Instances> {
    let (text, span) = process_name.unwrap_or((DEFAULT_PROCESS_NAME, table_span));
    let template = match Template::parse(text) {
        Ok(t) => t,
        Err(e) => {
            sink.error(&span, format!("invalid \"process_name\" {text:?}: {e}"));
            return None;
        }
    };
    if numprocs > 1 && !template.has_num() {
        sink.error(
            &span,
            format!(
                "\"process_name\" {text:?} must contain {{num}} when numprocs > 1 (every instance needs its own name)"
            ),
        );
        return None;
    }
    if start.checked_add(numprocs - 1).is_none() {
        sink.error(&span, "\"numprocs_start\" + \"numprocs\" is too large");
        return None;
    }
    Some(Instances {
        numprocs,
        start,
        template,
        span,
    })
}

/// Whether `name` is a valid program name.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Expands every group into its instances and rewrites dependencies on a group into
/// dependencies on each instance. Reports invalid and clashing names at the group's span.
/// `reserved` are names no program may take (the bridge's).
pub(super) fn expand(
    programs: Vec<(ProgramConfig, Option<Instances>, Range<usize>)>,
    reserved: &[&str],
    sink: &mut Sink,
) -> Vec<ProgramConfig> {
    let mut out: Vec<(ProgramConfig, Range<usize>)> = Vec::new();
    // Group table name → instance names, for `depends_on`.
    let mut members: HashMap<String, Vec<String>> = HashMap::new();
    for (p, inst, table_span) in programs {
        let Some(inst) = inst else {
            out.push((p, table_span));
            continue;
        };
        let mut names = Vec::with_capacity(inst.numprocs as usize);
        for k in 0..inst.numprocs {
            let num = inst.start + k;
            let name = inst.template.render(&p.name, num);
            if !valid_name(&name) {
                sink.error(
                    &inst.span,
                    format!(
                        "\"process_name\" makes the invalid program name {name:?}: use letters, digits, \"_\", \".\" and \"-\""
                    ),
                );
                break;
            }
            let mut q = p.clone();
            q.name = name.clone();
            q.group = Some(p.name.clone());
            q.num = Some(num);
            q.command = q.command.iter().map(|a| substitute_num(a, num)).collect();
            for (_, v) in &mut q.environment {
                *v = substitute_num(v, num);
            }
            names.push(name);
            out.push((q, inst.span.clone()));
        }
        members.insert(p.name.clone(), names);
    }
    // Every name a program is addressed by must be unique: program names, and group names
    // (which address all their instances) unless the group's only instance has its name.
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (p, span) in &out {
        let owner = p.group.as_deref().unwrap_or(&p.name);
        if reserved.contains(&p.name.as_str()) && p.group.is_some() {
            sink.error(
                span,
                format!(
                    "\"process_name\" makes the reserved program name {:?}",
                    p.name
                ),
            );
        }
        match seen.insert(&p.name, owner) {
            Some(other) if other != owner => sink.error(
                span,
                format!(
                    "program name {:?} is made by both [program.{other}] and [program.{owner}]",
                    p.name
                ),
            ),
            _ => {}
        }
    }
    for (group, names) in &members {
        if let Some(owner) = seen.get(group.as_str()) {
            if owner != group {
                if let Some((_, span)) = out.iter().find(|(p, _)| p.name == *group) {
                    sink.error(
                        span,
                        format!(
                            "program name {group:?} is also the name of the group [program.{group}] ({})",
                            names.join(", ")
                        ),
                    );
                }
            }
        }
    }
    let mut programs: Vec<ProgramConfig> = out.into_iter().map(|(p, _)| p).collect();
    for p in &mut programs {
        if p.depends_on.iter().any(|(d, _)| members.contains_key(d)) {
            p.depends_on = std::mem::take(&mut p.depends_on)
                .into_iter()
                .flat_map(|(d, cond)| match members.get(&d) {
                    Some(names) => names.iter().map(|n| (n.clone(), cond)).collect(),
                    None => vec![(d, cond)],
                })
                .collect();
        }
    }
    programs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_names_and_padded_numbers() {
        let t = Template::parse(DEFAULT_PROCESS_NAME).unwrap();
        assert_eq!(t.render("worker", 3), "worker_03");
        assert_eq!(t.render("worker", 123), "worker_123");
        let t = Template::parse("w-{num}").unwrap();
        assert_eq!(t.render("worker", 7), "w-7");
    }

    #[test]
    fn bad_templates_say_why() {
        assert_eq!(
            Template::parse("{name}_{n}").unwrap_err(),
            "unknown placeholder \"{n}\" (use {name}, {num} or {num:02})"
        );
        assert_eq!(Template::parse("{name").unwrap_err(), "unclosed \"{\"");
        assert_eq!(Template::parse("a}").unwrap_err(), "unmatched \"}\"");
        assert!(Template::parse("{num:2}").is_err());
        assert!(Template::parse("{num:010}").is_err());
    }

    #[test]
    fn num_is_replaced_and_other_braces_kept() {
        assert_eq!(substitute_num("--port=80{num:02}", 5), "--port=8005");
        assert_eq!(substitute_num("{\"slot\":{num}}", 2), "{\"slot\":2}");
        assert_eq!(substitute_num("${HOME} {number}", 2), "${HOME} {number}");
        assert_eq!(substitute_num("{num", 2), "{num");
    }
}
