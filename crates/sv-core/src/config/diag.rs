//! Error collection for the validator: every problem is recorded with the byte offset it is
//! about, and only turned into 1-based line/column [`Diagnostic`]s at the end.
//!
//! Invariant: offsets may point anywhere (even past the end or inside a multi-byte character);
//! conversion clamps them, so a bad span can never panic.

use std::ops::Range;
use std::path::Path;

use super::Diagnostic;

/// Collects problems in the order they are found; [`Sink::into_diagnostics`] puts them in file
/// order.
#[derive(Debug, Default)]
pub(super) struct Sink {
    errors: Vec<(usize, String)>,
}

impl Sink {
    /// Records a problem at the start of `span`.
    pub(super) fn error(&mut self, span: &Range<usize>, message: impl Into<String>) {
        self.errors.push((span.start, message.into()));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Converts to positioned diagnostics, sorted by position (stable: problems at the same
    /// place keep the order they were found in).
    pub(super) fn into_diagnostics(self, source: &str, origin: &Path) -> Vec<Diagnostic> {
        let mut errors = self.errors;
        errors.sort_by_key(|(offset, _)| *offset);
        errors
            .into_iter()
            .map(|(offset, message)| {
                let (line, column) = position(source, offset);
                Diagnostic {
                    origin: origin.to_path_buf(),
                    line,
                    column,
                    message,
                }
            })
            .collect()
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn position(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The known word closest to a misspelt one, if any is close enough to be a plausible typo.
pub(super) fn suggest<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    // Edit distance (with transpositions) catches short typos like `tpc`; Jaro-Winkler favours
    // a shared prefix, which is how longer key typos look (`prority`, `autorestrat`).
    let max_edits = (word.chars().count() / 3).max(1);
    known
        .into_iter()
        .map(|candidate| {
            let edits = strsim::damerau_levenshtein(word, candidate);
            let similarity = strsim::jaro_winkler(word, candidate);
            (edits, similarity, candidate)
        })
        .filter(|(edits, similarity, _)| *edits <= max_edits || *similarity >= 0.85)
        .min_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)))
        .map(|(_, _, candidate)| candidate)
}

/// `, did you mean "x"?` or nothing.
pub(super) fn did_you_mean<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    suggest(word, known)
        .map(|s| format!(", did you mean \"{s}\"?"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let src = "a = 1\nbé = \"x\"\n";
        assert_eq!(position(src, 0), (1, 1));
        assert_eq!(position(src, 6), (2, 1));
        // `=` after the two-byte `é` is the 4th character of line 2.
        assert_eq!(position(src, 10), (2, 4));
        assert_eq!(position(src, 9), (2, 3));
        // Inside a multi-byte character and past the end: clamped, no panic.
        assert_eq!(position(src, 8), (2, 2));
        assert_eq!(position(src, 1000), (3, 1));
    }

    #[test]
    fn suggests_close_keys_only() {
        let known = ["priority", "autorestart", "command"];
        assert_eq!(suggest("prority", known), Some("priority"));
        assert_eq!(suggest("autorestrat", known), Some("autorestart"));
        assert_eq!(suggest("zzz", known), None);
        assert_eq!(suggest("tpc", ["tcp", "http", "exec"]), Some("tcp"));
        assert_eq!(suggest("url", ["tls", "port"]), None);
    }
}
