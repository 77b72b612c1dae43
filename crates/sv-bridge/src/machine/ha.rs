//! Home Assistant discovery on behalf of every program: the bridge machine's side.
//!
//! The configs come from the instance file ([`crate::discovery`]) and from programs (the
//! `ha_discovery` op, for devices the file cannot describe); both are published retained on
//! every connect. To clear the configs of devices that left the instance file, the bridge keeps a
//! retained index of what it published on `{B}/v1/instances/{I}/meta/ha_discovery` and
//! subscribes to it: the broker hands the previous run's index back (retained, before anything
//! this connection publishes), and every config in it that is no longer wanted is cleared with an
//! empty retained payload. The new index is written only once the old one has been read: after
//! subscribing, the bridge publishes an empty, non-retained probe on the index topic, whose echo
//! (sent by the broker after any retained copy) says the old index, if any, is in.
//! A program's config outlives a bridge restart (the program sends it
//! again when it reconnects) unless its device was removed from the instance file.
//! Home Assistant's birth message (`{prefix}/status` = `online`) makes the bridge publish its
//! configs again, as Home Assistant asks integrations to do after it restarted.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::Machine;
use crate::codec::ErrorCode;
use crate::discovery::{self, Config, Context};
use crate::settings::DeviceInfo;

/// Discovery state: what the instance file yields, what programs added, what a previous run
/// published for programs.
#[derive(Debug, Default)]
pub(super) struct Ha {
    prefix: String,
    /// topic → config, from the instance file.
    generated: BTreeMap<String, Config>,
    /// topic → (device, config or `None` = removed), from programs.
    programs: BTreeMap<String, (String, Option<Value>)>,
    /// topic → device: programs' configs of a previous run, kept until a program replaces or
    /// removes them.
    carried: BTreeMap<String, String>,
    /// Whether this connection has seen the previous run's index (or its absence): until then
    /// writing the index would overwrite entries not yet carried over.
    synced: bool,
}

impl Ha {
    /// The state for `prefix`, with the instance file's configs.
    pub(super) fn new(prefix: &str, ctx: &Context<'_>, devices: &[DeviceInfo]) -> Ha {
        Ha {
            prefix: prefix.to_string(),
            generated: discovery::generate(ctx, devices)
                .into_iter()
                .map(|c| (c.topic.clone(), c))
                .collect(),
            ..Ha::default()
        }
    }

    /// Every config to publish now: `(topic, payload)`, an empty payload for a removed one.
    fn wanted(&self) -> Vec<(String, Vec<u8>)> {
        let mut out: BTreeMap<&String, Vec<u8>> = self
            .generated
            .iter()
            .map(|(t, c)| (t, c.payload.to_string().into_bytes()))
            .collect();
        for (t, (_, c)) in &self.programs {
            out.insert(
                t,
                c.as_ref()
                    .map(|v| v.to_string().into_bytes())
                    .unwrap_or_default(),
            );
        }
        out.into_iter().map(|(t, p)| (t.clone(), p)).collect()
    }

    /// The index: the instance file's devices and every live config with its device and source.
    fn index(&self, file_devices: &[String]) -> Value {
        let mut configs: Vec<Value> = Vec::new();
        for (t, c) in &self.generated {
            if !self.programs.contains_key(t) {
                configs.push(json!({"topic": t, "device_id": c.device_id, "source": "file"}));
            }
        }
        for (t, (d, c)) in &self.programs {
            if c.is_some() {
                configs.push(json!({"topic": t, "device_id": d, "source": "program"}));
            }
        }
        for (t, d) in &self.carried {
            configs.push(json!({"topic": t, "device_id": d, "source": "program"}));
        }
        json!({"devices": file_devices, "configs": configs})
    }

    /// The topics of a previous run's index to clear now, remembering the programs' configs
    /// that stay.
    fn stale(&mut self, old: &Value, file_devices: &[String]) -> Vec<String> {
        let old_devices: BTreeSet<&str> = old["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let mut clear = Vec::new();
        for entry in old["configs"].as_array().into_iter().flatten() {
            let (Some(topic), Some(device)) =
                (entry["topic"].as_str(), entry["device_id"].as_str())
            else {
                continue;
            };
            // Only ever one of ours: a config topic under our prefix.
            if !topic.starts_with(&format!("{}/", self.prefix)) || !topic.ends_with("/config") {
                continue;
            }
            if self.generated.contains_key(topic)
                || self.programs.contains_key(topic)
                || self.carried.contains_key(topic)
            {
                continue;
            }
            let removed_from_file =
                old_devices.contains(device) && !file_devices.iter().any(|d| d == device);
            if entry["source"] == "program" && !removed_from_file {
                self.carried.insert(topic.to_string(), device.to_string());
            } else {
                clear.push(topic.to_string());
            }
        }
        clear
    }
}

impl Machine {
    fn ha_context(&self) -> Option<Context<'_>> {
        let prefix = self.s.ha_discovery.as_deref()?;
        Some(Context {
            prefix,
            root: self.topics.root(),
            instance: &self.s.instance,
        })
    }

    /// The instance file's device ids (the index records them, to tell a device removed from
    /// the file from one only a program describes).
    fn file_devices(&self) -> Vec<String> {
        self.s
            .instance_config
            .devices
            .iter()
            .map(|d| d.device_id.clone())
            .collect()
    }

    fn index_topic(&self) -> String {
        self.topics.meta("ha_discovery")
    }

    /// The discovery state, when discovery is on.
    pub(super) fn ha_new(&self) -> Option<Ha> {
        let ctx = self.ha_context()?;
        Some(Ha::new(ctx.prefix, &ctx, &self.s.instance_config.devices))
    }

    /// Filters to subscribe to on every connect: the index and Home Assistant's birth topic.
    pub(super) fn ha_filters(&self) -> Vec<String> {
        match &self.ha {
            Some(ha) => vec![self.index_topic(), format!("{}/status", ha.prefix)],
            None => Vec::new(),
        }
    }

    /// After each connect: every config, then the probe that tells when the previous run's
    /// index has been read.
    pub(super) fn ha_on_connect(&mut self) {
        let Some(ha) = &mut self.ha else { return };
        ha.synced = false;
        self.ha_publish_configs();
        let t = self.index_topic();
        self.publish(t, Vec::new(), 1, false);
    }

    /// Publishes every config (and, once synced, the index).
    fn ha_publish_configs(&mut self) {
        let Some(ha) = &self.ha else { return };
        let wanted = ha.wanted();
        for (topic, payload) in wanted {
            self.publish(topic, payload, 1, true);
        }
        self.ha_publish_index();
    }

    fn ha_publish_index(&mut self) {
        let Some(ha) = &self.ha else { return };
        if !ha.synced {
            return;
        }
        let index = ha.index(&self.file_devices());
        let t = self.index_topic();
        self.publish_json(t, &index, 1, true);
    }

    /// An inbound message on one of [`Machine::ha_filters`].
    pub(super) fn ha_inbound(&mut self, topic: &str, payload: &[u8], retain: bool) {
        let Some(ha) = &self.ha else { return };
        if topic == format!("{}/status", ha.prefix) {
            // A retained birth is the broker's memory, not a restart: the connect that brought
            // it published the configs already.
            if !retain && payload.trim_ascii() == b"online" {
                tracing::debug!("home assistant is online; publishing discovery again");
                self.ha_publish_configs();
            }
            return;
        }
        if topic != self.index_topic() {
            return;
        }
        // Live, the index comes back as our own publishes: the empty probe means every
        // retained copy was delivered before it.
        if !retain {
            if payload.is_empty()
                && let Some(ha) = &mut self.ha
                && !ha.synced
            {
                ha.synced = true;
                self.ha_publish_index();
            }
            return;
        }
        let Ok(old) = serde_json::from_slice::<Value>(payload) else {
            return;
        };
        let files = self.file_devices();
        let Some(ha) = &mut self.ha else { return };
        let stale = ha.stale(&old, &files);
        for t in &stale {
            tracing::info!(topic = %t, "clearing the discovery config of a removed device");
            self.publish(t.clone(), Vec::new(), 1, true);
        }
    }

    /// The `ha_discovery` op.
    pub(super) fn ha_program_config(
        &mut self,
        device_id: &str,
        component: &str,
        entity: Option<&str>,
        config: Option<Map<String, Value>>,
    ) -> Result<(), (ErrorCode, String)> {
        let Some(ctx) = self.ha_context() else {
            return Err((
                ErrorCode::Unavailable,
                "home assistant discovery is disabled (HA_DISCOVERY_ENABLED)".into(),
            ));
        };
        let object_id = match entity {
            Some(e) => format!("{}_{e}", ctx.global_id(device_id)),
            None => ctx.global_id(device_id),
        };
        let topic = ctx.topic(component, &object_id);
        let device = self
            .s
            .instance_config
            .devices
            .iter()
            .find(|d| d.device_id == device_id)
            .cloned()
            .unwrap_or_else(|| bare_device(device_id));
        let ha = self.ha.as_ref();
        // Replacing a generated config keeps its unique_id: the same Home Assistant entity.
        let unique_id = ha
            .and_then(|h| h.generated.get(&topic))
            .and_then(|c| c.payload["unique_id"].as_str())
            .map_or_else(|| object_id.clone(), str::to_string);
        let payload = config.map(|mut c| {
            ctx.complete(&device, &unique_id, &mut c);
            Value::Object(c)
        });
        let bytes = payload
            .as_ref()
            .map(|v| v.to_string().into_bytes())
            .unwrap_or_default();
        if !self.publish(topic.clone(), bytes, 1, true) {
            return Err((ErrorCode::BadRequest, "config too large to publish".into()));
        }
        if let Some(ha) = &mut self.ha {
            ha.carried.remove(&topic);
            ha.programs.insert(topic, (device_id.to_string(), payload));
        }
        self.ha_publish_index();
        Ok(())
    }
}

/// A device the instance file does not list: its id is all there is.
fn bare_device(device_id: &str) -> DeviceInfo {
    DeviceInfo {
        device_id: device_id.to_string(),
        enabled: true,
        name: None,
        model: None,
        friendly_name: None,
        manufacturer: None,
        area: None,
        class: None,
        capabilities: Map::new(),
    }
}
