//! Merging a device's state update into its cached full state, reversibly.
//!
//! The bridge keeps the full state per device and publishes it whole after every update. An
//! update that cannot be published (too large, an invalid device id) must leave the cached state
//! as it was, or the next update would publish values that were refused. Cloning the whole state
//! for each update would cost a busy device a copy per message; instead the merge records what
//! it overwrote (the keys of the update only) and [`Undo::revert`] puts it back.
//! Pure: no IO.

use serde_json::{Map, Value};

/// What [`merge`] changed, enough to undo it.
#[derive(Debug)]
#[must_use = "revert it if the merged state is not kept"]
pub(crate) enum Undo {
    /// `replace`: the previous state, whole.
    Replaced(Map<String, Value>),
    /// A merge: each updated key with its previous value (`None`: it was absent).
    Merged(Vec<(String, Option<Value>)>),
}

/// Merges `update` into `full` (or replaces `full` with it) and returns how to undo that.
pub(crate) fn merge(
    full: &mut Map<String, Value>,
    update: Map<String, Value>,
    replace: bool,
) -> Undo {
    if replace {
        return Undo::Replaced(std::mem::replace(full, update));
    }
    let mut previous = Vec::with_capacity(update.len());
    for (k, v) in update {
        let old = full.insert(k.clone(), v);
        previous.push((k, old));
    }
    Undo::Merged(previous)
}

impl Undo {
    /// Restores `full` to what it was before the [`merge`] that returned `self`.
    pub(crate) fn revert(self, full: &mut Map<String, Value>) {
        match self {
            Undo::Replaced(old) => *full = old,
            Undo::Merged(previous) => {
                // Newest first: a key given twice is restored to its value before the first.
                for (k, old) in previous.into_iter().rev() {
                    match old {
                        Some(v) => full.insert(k, v),
                        None => full.remove(&k),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("an object literal"),
        }
    }

    #[test]
    fn a_reverted_merge_or_replace_leaves_the_state_unchanged() {
        let before = map(json!({"on": true, "brightness": 80}));
        let mut full = before.clone();
        let undo = merge(&mut full, map(json!({"on": false, "color": "red"})), false);
        assert_eq!(
            Value::Object(full.clone()),
            json!({"on": false, "brightness": 80, "color": "red"})
        );
        undo.revert(&mut full);
        assert_eq!(full, before);

        let undo = merge(&mut full, map(json!({"x": 1})), true);
        assert_eq!(Value::Object(full.clone()), json!({"x": 1}));
        undo.revert(&mut full);
        assert_eq!(full, before);
    }
}
