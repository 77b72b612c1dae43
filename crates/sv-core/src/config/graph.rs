//! Checks across programs: reserved names, dependency targets, conditions that can never hold,
//! and dependency cycles.
//!
//! Works on the programs in file order, so when several programs form one cycle it is reported
//! once, starting from (and positioned at) the one that comes first in the file. Iterative
//! searches only: a hostile config with a very long dependency chain must not overflow the
//! stack.

use std::collections::{HashMap, VecDeque};

use super::diag::{Sink, did_you_mean};
use super::model::{AutoRestart, DependencyCondition, ProgramConfig};
use super::program::ProgramSpans;

/// The program the supervisor adds for the `[bridge]` table; the name is reserved then.
pub const BRIDGE_PROGRAM: &str = "bridge";

/// `programs` is in file order.
pub(super) fn check(programs: &[(ProgramConfig, ProgramSpans)], has_bridge: bool, sink: &mut Sink) {
    let index: HashMap<&str, usize> = programs
        .iter()
        .enumerate()
        .map(|(i, (p, _))| (p.name.as_str(), i))
        .collect();

    for (p, spans) in programs {
        if has_bridge && p.name == BRIDGE_PROGRAM {
            sink.error(
                &spans.name,
                "program name \"bridge\" is reserved when a [bridge] table exists (the supervisor runs the bridge under that name)",
            );
        }
        if let (false, Some(kind)) = (has_bridge, &spans.ready_bridge) {
            sink.error(
                kind,
                "ready kind \"bridge\" needs a [bridge] table (the program reports ready over the bridge socket)",
            );
        }
        for dep in &spans.dependencies {
            if dep.name == p.name {
                sink.error(
                    &dep.name_span,
                    format!("program \"{}\" depends on itself", p.name),
                );
                continue;
            }
            let target = index.get(dep.name.as_str()).map(|&i| &programs[i].0);
            match target {
                None if has_bridge && dep.name == BRIDGE_PROGRAM => {
                    if dep.condition == DependencyCondition::Completed {
                        sink.error(
                            &dep.condition_span,
                            "\"completed\" can never hold for \"bridge\": the bridge runs until shutdown",
                        );
                    }
                }
                None => {
                    let mut known: Vec<&str> = index.keys().copied().collect();
                    known.sort_unstable();
                    if has_bridge {
                        known.push(BRIDGE_PROGRAM);
                    }
                    sink.error(
                        &dep.name_span,
                        format!(
                            "\"depends_on\" names unknown program \"{}\"{}",
                            dep.name,
                            did_you_mean(&dep.name, known)
                        ),
                    );
                }
                Some(target) => {
                    if dep.condition == DependencyCondition::Completed
                        && target.autorestart == AutoRestart::Always
                    {
                        sink.error(
                            &dep.condition_span,
                            format!(
                                "\"completed\" can never hold for \"{}\": it has autorestart = true",
                                dep.name
                            ),
                        );
                    }
                }
            }
        }
    }
    cycles(programs, &index, sink);
}

fn cycles(
    programs: &[(ProgramConfig, ProgramSpans)],
    index: &HashMap<&str, usize>,
    sink: &mut Sink,
) {
    let n = programs.len();
    // Edges to known programs only; self-edges are reported above.
    let edges: Vec<Vec<usize>> = programs
        .iter()
        .enumerate()
        .map(|(i, (_, spans))| {
            spans
                .dependencies
                .iter()
                .filter_map(|d| index.get(d.name.as_str()).copied())
                .filter(|&j| j != i)
                .collect()
        })
        .collect();
    let mut reverse: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, targets) in edges.iter().enumerate() {
        for &j in targets {
            reverse[j].push(i);
        }
    }
    let mut reported = vec![false; n];
    for start in 0..n {
        if reported[start] {
            continue;
        }
        let Some(path) = shortest_cycle(start, &edges) else {
            continue;
        };
        // Everything in the same strongly connected component belongs to this cycle report.
        let forward = reachable(start, &edges);
        let backward = reachable(start, &reverse);
        for i in 0..n {
            if forward[i] && backward[i] {
                reported[i] = true;
            }
        }
        let names: Vec<&str> = path.iter().map(|&i| programs[i].0.name.as_str()).collect();
        let first_edge = &programs[start]
            .1
            .dependencies
            .iter()
            .find(|d| d.name == names[1])
            .map(|d| d.name_span.clone())
            .or_else(|| programs[start].1.depends_on.clone())
            .unwrap_or_else(|| programs[start].1.name.clone());
        sink.error(
            first_edge,
            format!("dependency cycle: {}", names.join(" -> ")),
        );
    }
}

/// `start -> ... -> start` by breadth-first search, if `start` is on a cycle.
fn shortest_cycle(start: usize, edges: &[Vec<usize>]) -> Option<Vec<usize>> {
    let mut parent: Vec<Option<usize>> = vec![None; edges.len()];
    let mut seen = vec![false; edges.len()];
    let mut queue = VecDeque::from([start]);
    seen[start] = true;
    while let Some(node) = queue.pop_front() {
        for &next in &edges[node] {
            if next == start {
                let mut chain = vec![node];
                let mut at = node;
                while at != start {
                    at = parent[at]?;
                    chain.push(at);
                }
                chain.reverse();
                chain.push(start);
                return Some(chain);
            }
            if !seen[next] {
                seen[next] = true;
                parent[next] = Some(node);
                queue.push_back(next);
            }
        }
    }
    None
}

fn reachable(start: usize, edges: &[Vec<usize>]) -> Vec<bool> {
    let mut seen = vec![false; edges.len()];
    let mut stack = vec![start];
    seen[start] = true;
    while let Some(node) = stack.pop() {
        for &next in &edges[node] {
            if !seen[next] {
                seen[next] = true;
                stack.push(next);
            }
        }
    }
    seen
}
