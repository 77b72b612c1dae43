//! `numprocs` back as `numprocs`: the processes of one `[program:x]`, already translated one by
//! one, folded into a single `[program.x]` group when that says exactly the same.
//!
//! supervisord formats `%(process_num)d` wherever it likes; iot2mqtt-sv replaces `{num}` and
//! `{num:0W}` in `process_name`, `command` and `environment` only. So the fold is tried, not
//! assumed: every value that differs between processes must be one template that renders to
//! each process's exact value, every other key must be the same for all, and nothing may
//! already contain `{num` (which the supervisor would replace). Otherwise the processes stay
//! separate programs, as before — correct, only without the group name.

use crate::translate::{Part, Program, Val};

/// The fold of `programs` (the processes numbered `nums`) into one group named `table`, if it
/// is exact.
pub(crate) fn fold(programs: &[Program], nums: &[i64], table: &str) -> Option<Program> {
    let first = programs.first()?;
    if programs.len() < 2 || nums.len() != programs.len() || nums.iter().any(|&n| n < 0) {
        return None;
    }
    if programs.iter().any(|p| p.notes != first.notes) {
        return None;
    }
    let names: Vec<&str> = programs.iter().map(|p| p.name.as_str()).collect();
    let process_name = template(&names, nums).filter(|t| t.contains("{num"))?;
    let mut keys = Vec::with_capacity(first.keys.len() + 3);
    for (i, (key, v0)) in first.keys.iter().enumerate() {
        let column: Vec<&Val> = programs
            .iter()
            .map(|p| p.keys.get(i).filter(|(k, _)| k == key).map(|(_, v)| v))
            .collect::<Option<_>>()?;
        if column.iter().any(|v| mentions_num(v)) {
            return None;
        }
        let value = if column.iter().all(|v| v == &v0) {
            v0.clone()
        } else {
            match (*key, v0) {
                ("command", Val::Strs(args)) => {
                    let mut out = Vec::with_capacity(args.len());
                    for j in 0..args.len() {
                        let texts: Vec<&str> = column
                            .iter()
                            .map(|v| match v {
                                Val::Strs(a) if a.len() == args.len() => Some(a[j].as_str()),
                                _ => None,
                            })
                            .collect::<Option<_>>()?;
                        out.push(template(&texts, nums)?);
                    }
                    Val::Strs(out)
                }
                _ => return None,
            }
        };
        keys.push((*key, value));
        if *key == "command" {
            keys.push(("numprocs", Val::Int(programs.len() as i64)));
            if nums[0] != 0 {
                keys.push(("numprocs_start", Val::Int(nums[0])));
            }
            keys.push(("process_name", Val::Str(process_name.clone())));
        }
    }
    if programs.iter().any(|p| p.keys.len() != first.keys.len()) {
        return None;
    }
    let mut environment = Vec::with_capacity(first.environment.len());
    for (i, (name, parts0)) in first.environment.iter().enumerate() {
        let column: Vec<&Vec<Part>> = programs
            .iter()
            .map(|p| {
                p.environment
                    .get(i)
                    .filter(|(k, _)| k == name)
                    .map(|(_, v)| v)
            })
            .collect::<Option<_>>()?;
        let mut parts = Vec::with_capacity(parts0.len());
        for (j, part) in parts0.iter().enumerate() {
            let texts: Vec<&str> = column
                .iter()
                .map(|ps| match (ps.get(j), part) {
                    (Some(Part::Lit(s)), Part::Lit(_)) => Some(s.as_str()),
                    (Some(Part::Var(v)), Part::Var(v0)) if v == v0 => Some(""),
                    _ => None,
                })
                .collect::<Option<_>>()?;
            match part {
                Part::Var(_) => parts.push(part.clone()),
                Part::Lit(_) => {
                    if texts.iter().any(|t| t.contains("{num")) {
                        return None;
                    }
                    parts.push(Part::Lit(template(&texts, nums)?));
                }
            }
        }
        if column.iter().any(|ps| ps.len() != parts0.len()) {
            return None;
        }
        environment.push((name.clone(), parts));
    }
    if programs
        .iter()
        .any(|p| p.environment.len() != first.environment.len())
    {
        return None;
    }
    Some(Program {
        name: table.to_string(),
        keys,
        environment,
        ..first.clone()
    })
}

fn mentions_num(v: &Val) -> bool {
    match v {
        Val::Str(s) => s.contains("{num"),
        Val::Strs(items) => items.iter().any(|s| s.contains("{num")),
        _ => false,
    }
}

/// A string with `{num}` or `{num:0W}` that renders to `texts[i]` for `nums[i]`: the texts
/// themselves when they are all equal, else the first text with its number made a placeholder.
fn template(texts: &[&str], nums: &[i64]) -> Option<String> {
    let first = *texts.first()?;
    if texts.iter().all(|t| *t == first) {
        return Some(first.to_string());
    }
    // Widest first: "01" is also "1" with the padding left out.
    for width in (2..=9).rev().chain([0]) {
        let needle = format!("{:0width$}", nums[0]);
        if !first.contains(&needle) {
            continue;
        }
        let placeholder = if width == 0 {
            "{num}".to_string()
        } else {
            format!("{{num:0{width}}}")
        };
        let candidate = first.replace(&needle, &placeholder);
        let renders = texts
            .iter()
            .zip(nums)
            .all(|(t, n)| candidate.replace(&placeholder, &format!("{n:0width$}")) == *t);
        if renders {
            return Some(candidate);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_become_placeholders_with_their_padding() {
        assert_eq!(
            template(&["w-01", "w-02", "w-10"], &[1, 2, 10]).as_deref(),
            Some("w-{num:02}")
        );
        assert_eq!(
            template(&["1", "2", "3"], &[1, 2, 3]).as_deref(),
            Some("{num}")
        );
        assert_eq!(template(&["x", "x"], &[0, 1]).as_deref(), Some("x"));
    }

    #[test]
    fn values_that_no_template_renders_are_refused() {
        // The number 0 is also the second "0": replacing both renders "a1b1" for 1.
        assert_eq!(template(&["a0b0", "a1b0"], &[0, 1]), None);
        // A padded number is found as such.
        assert_eq!(
            template(&["8000", "8001"], &[0, 1]).as_deref(),
            Some("8{num:03}")
        );
        assert_eq!(template(&["a", "b"], &[0, 1]), None);
    }
}
