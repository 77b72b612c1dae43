//! MQTT topic names of the IoT2MQTT contract and MQTT filter matching.
//!
//! Every topic the bridge builds goes through [`Topics`], so the contract lives in one place
//! (documented in `docs/mqtt-contract.md`). Device, group and property names come from programs
//! and the broker, so [`valid_segment`] rejects anything that would change the topic's shape.

/// Topic builder for one instance.
#[derive(Debug, Clone)]
pub struct Topics {
    base: String,
    root: String,
}

/// What an inbound topic under the instance means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// `devices/{d}/cmd`.
    DeviceCmd(String),
    /// `devices/{d}/get`.
    DeviceGet(String),
    /// `groups/{g}/cmd`.
    GroupCmd(String),
    /// `meta/request/{type}`.
    MetaRequest(String),
}

/// Whether `s` can be one topic level: non-empty, no `/`, `+`, `#` or NUL.
pub fn valid_segment(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '+', '#', '\0'])
}

/// Whether `topic` (a concrete name) matches the MQTT `filter` (with `+` and `#`).
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    // MQTT 3.1.1 §4.7.2: wildcards at the first level do not match `$`-topics.
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether `filter` is a well-formed MQTT subscription filter.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| match *l {
        "#" => i == levels.len() - 1,
        "+" => true,
        other => !other.contains(['+', '#']),
    })
}

/// Whether `topic` is a publishable topic name (no wildcards, non-empty).
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

impl Topics {
    /// Topics for instance `instance` under base topic `base`.
    pub fn new(base: &str, instance: &str) -> Topics {
        Topics {
            base: base.to_string(),
            root: format!("{base}/v1/instances/{instance}"),
        }
    }

    /// `{B}/v1/instances/{I}`.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// `{B}/v1/instances/{I}/status`.
    pub fn status(&self) -> String {
        format!("{}/status", self.root)
    }

    /// `{B}/v1/instances/{I}/devices/{d}/{leaf}`.
    pub fn device(&self, device: &str, leaf: &str) -> String {
        format!("{}/devices/{device}/{leaf}", self.root)
    }

    /// `{B}/v1/instances/{I}/meta/{leaf}`.
    pub fn meta(&self, leaf: &str) -> String {
        format!("{}/meta/{leaf}", self.root)
    }

    /// `{B}/v1/global/events`.
    pub fn global_events(&self) -> String {
        format!("{}/v1/global/events", self.base)
    }

    /// The filters the bridge itself subscribes to.
    pub fn inbound_filters(&self) -> [String; 4] {
        [
            format!("{}/devices/+/cmd", self.root),
            format!("{}/devices/+/get", self.root),
            format!("{}/groups/+/cmd", self.root),
            format!("{}/meta/request/+", self.root),
        ]
    }

    /// Whether `topic` lies inside the instance tree (the default publish ACL).
    pub fn inside_instance(&self, topic: &str) -> bool {
        topic
            .strip_prefix(self.root.as_str())
            .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
    }

    /// Classifies an inbound topic; `None` for anything the bridge does not handle itself.
    pub fn classify(&self, topic: &str) -> Option<Inbound> {
        let rest = topic.strip_prefix(self.root.as_str())?.strip_prefix('/')?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["devices", d, "cmd"] if valid_segment(d) => Some(Inbound::DeviceCmd(d.to_string())),
            ["devices", d, "get"] if valid_segment(d) => Some(Inbound::DeviceGet(d.to_string())),
            ["groups", g, "cmd"] if valid_segment(g) => Some(Inbound::GroupCmd(g.to_string())),
            ["meta", "request", t] if valid_segment(t) => Some(Inbound::MetaRequest(t.to_string())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_matching_follows_mqtt() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("#", "x/y"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("#", "$SYS/x"));
        assert!(valid_filter("a/+/#"));
        assert!(!valid_filter("a/#/b"));
        assert!(!valid_filter("a/b+"));
    }

    #[test]
    fn classifies_inbound_and_checks_instance_tree() {
        let t = Topics::new("B", "i");
        assert_eq!(
            t.classify("B/v1/instances/i/devices/d1/cmd"),
            Some(Inbound::DeviceCmd("d1".into()))
        );
        assert_eq!(
            t.classify("B/v1/instances/i/meta/request/info"),
            Some(Inbound::MetaRequest("info".into()))
        );
        assert_eq!(t.classify("B/v1/instances/i/devices/d1/state"), None);
        assert_eq!(t.classify("B/v1/instances/ix/devices/d1/cmd"), None);
        assert!(t.inside_instance("B/v1/instances/i/x"));
        assert!(!t.inside_instance("B/v1/instances/ix/x"));
        assert!(!t.inside_instance("B/v1/instances/i"));
        assert!(!t.inside_instance("B/v1/instances/i/"));
    }
}
