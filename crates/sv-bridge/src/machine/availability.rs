//! Device availability (`…/devices/{d}/availability`), owned by the bridge.
//!
//! Home Assistant marks an entity unavailable only when this topic says so, so it must follow
//! the program that serves the device rather than the last thing that program said: a device is
//! `online` while a connected, ready program claims it and has not reported `online: false`
//! for it, and `offline` otherwise. The machine computes the wanted value per device (it knows
//! the claims and the supervisor's view); this module remembers what was reported and what was
//! published, and says which retained messages must change. It has no IO.

use std::collections::HashMap;

use super::Machine;
use crate::topics::valid_segment;

/// Reported and published availability per device.
#[derive(Debug, Default)]
pub(crate) struct Availability {
    /// The last `online` boolean a program reported in a device's state.
    reported: HashMap<String, bool>,
    /// The value last published per device (retained on the broker).
    published: HashMap<String, bool>,
}

impl Availability {
    /// Whether the device was last published `online`.
    pub(crate) fn is_online(&self, device: &str) -> bool {
        self.published.get(device).copied().unwrap_or(false)
    }

    /// Whether the device's availability was published.
    pub(crate) fn is_known(&self, device: &str) -> bool {
        self.published.contains_key(device)
    }

    /// Records an `online` boolean from a state message; true when it differs from the last one.
    pub(crate) fn report(&mut self, device: &str, online: bool) -> bool {
        self.reported.insert(device.to_string(), online) != Some(online)
    }

    /// Forgets what programs reported for `devices` (their program went away: a new owner's
    /// claim starts from "online unless it says otherwise").
    pub(crate) fn forget_reports<'a>(&mut self, devices: impl IntoIterator<Item = &'a String>) {
        for d in devices {
            self.reported.remove(d);
        }
    }

    /// Whether the device's program reported it offline.
    pub(crate) fn reported_offline(&self, device: &str) -> bool {
        self.reported.get(device) == Some(&false)
    }

    /// Devices whose availability was ever published or reported, for recomputation.
    pub(crate) fn known(&self) -> impl Iterator<Item = &String> {
        self.published.keys().chain(self.reported.keys())
    }

    /// Records `want` for `device`; returns the payload to publish when it changed (or was
    /// never published: after a crash the broker may still hold a stale `online`).
    pub(crate) fn set(&mut self, device: &str, want: bool) -> Option<&'static str> {
        if self.published.get(device) == Some(&want) {
            return None;
        }
        self.published.insert(device.to_string(), want);
        Some(payload(want))
    }

    /// Marks every device published `online` as `offline` and returns them, sorted (the
    /// graceful stop, before the instance's own `offline`).
    pub(crate) fn all_offline(&mut self) -> Vec<String> {
        let mut out: Vec<String> = self
            .published
            .iter_mut()
            .filter(|(_, on)| **on)
            .map(|(d, on)| {
                *on = false;
                d.clone()
            })
            .collect();
        out.sort();
        out
    }
}

impl Machine {
    /// The connection serving `device`: its explicit claim, else a catch-all `hello` (which
    /// does not cover devices the instance file disables).
    fn device_owner(&self, device: &str) -> Option<u64> {
        if let Some(&c) = self.handlers.get(device) {
            return Some(c);
        }
        let disabled = self
            .s
            .instance_config
            .devices
            .iter()
            .any(|d| d.device_id == device && !d.enabled);
        self.all_handler.filter(|_| !disabled)
    }

    /// Whether the program behind `conn` is running and ready per the supervisor. A peer the
    /// supervisor does not know (no readiness to ask about) counts as ready while connected.
    fn conn_ready(&self, conn: u64) -> bool {
        let Some(c) = self.conns.get(&conn) else {
            return false;
        };
        let Some(name) = &c.program else { return true };
        self.view
            .programs
            .iter()
            .find(|p| &p.name == name)
            .is_none_or(|p| p.ready && p.pid.is_some())
    }

    /// Publishes `device`'s availability when its wanted value changed.
    pub(super) fn refresh_device(&mut self, device: &str) {
        if !valid_segment(device) {
            return;
        }
        let want = self
            .device_owner(device)
            .is_some_and(|c| self.conn_ready(c))
            && !self.availability.reported_offline(device);
        if let Some(p) = self.availability.set(device, want) {
            let t = self.topics.device(device, "availability");
            self.publish_priority(t, p);
        }
    }

    /// Every device the bridge knows of: the instance file's, the claimed ones, those with a
    /// state and those whose availability was published before.
    fn known_devices(&self) -> Vec<String> {
        let mut devices: Vec<String> = self
            .s
            .instance_config
            .devices
            .iter()
            .map(|d| d.device_id.clone())
            .chain(self.handlers.keys().cloned())
            .chain(self.states.keys().cloned())
            .chain(self.availability.known().cloned())
            .collect();
        devices.sort();
        devices.dedup();
        devices
    }

    /// Recomputes every known device's availability.
    pub(super) fn refresh_availability(&mut self) {
        for d in self.known_devices() {
            self.refresh_device(&d);
        }
    }

    /// The devices `conn` serves now (called before its claims are dropped).
    pub(super) fn served_by(&self, conn: u64) -> Vec<String> {
        self.known_devices()
            .into_iter()
            .filter(|d| self.device_owner(d) == Some(conn))
            .collect()
    }

    /// A connection closed: what it reported about the devices it served no longer holds.
    pub(super) fn availability_after_close(&mut self, served: &[String]) {
        self.availability.forget_reports(served);
        self.refresh_availability();
    }

    /// Every device `offline`, queued before the instance's own final `offline`.
    pub(super) fn devices_offline(&mut self) {
        for d in self.availability.all_offline() {
            let t = self.topics.device(&d, "availability");
            self.publish_priority(t, payload(false));
        }
    }
}

/// The retained payload for a value.
pub(crate) fn payload(online: bool) -> &'static str {
    if online { "online" } else { "offline" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_value_is_always_published_then_only_changes() {
        let mut a = Availability::default();
        assert_eq!(a.set("d1", false), Some("offline"));
        assert_eq!(a.set("d1", false), None);
        assert_eq!(a.set("d1", true), Some("online"));
        assert!(a.is_online("d1"));
        assert_eq!(a.set("d2", true), Some("online"));
        assert_eq!(a.all_offline(), vec!["d1".to_string(), "d2".to_string()]);
        assert!(!a.is_online("d1"));
        assert!(a.all_offline().is_empty());
    }

    #[test]
    fn reports_are_remembered_until_forgotten() {
        let mut a = Availability::default();
        assert!(a.report("d1", false));
        assert!(!a.report("d1", false));
        assert!(a.reported_offline("d1"));
        a.forget_reports([&"d1".to_string()]);
        assert!(!a.reported_offline("d1"));
    }
}
