//! Home Assistant MQTT discovery configs built from the instance file.
//!
//! The platform's own generator (`shared/discovery.py` on its `develop` branch) maps a device's
//! `class` to a Home Assistant component and its `capabilities` to entities; this module keeps
//! that mapping, its topics and its `unique_id`s (so entities a platform connector created stay
//! the same entities), and fixes what would make Home Assistant show something else than the
//! device does: templates that render Python booleans (`True`) against `state_on: "true"`, a
//! JSON-schema light that cannot read the state envelope, commands that are not the platform's
//! `{"values": {...}}` object, and an availability topic nothing published. Pure: no IO.

use serde_json::{Map, Value, json};

use crate::settings::DeviceInfo;
use crate::topics::valid_segment;

/// The platform's class → component table (components Home Assistant's MQTT integration has
/// and the platform generates; `security.lock` is mapped there but never generated, so it is
/// generated here).
const CLASSES: &[(&str, &str)] = &[
    ("light.switch", "light"),
    ("light.dimmable", "light"),
    ("light.color_temp", "light"),
    ("light.rgb", "light"),
    ("light.rgbw", "light"),
    ("climate.thermostat", "climate"),
    ("climate.ac", "climate"),
    ("climate.heater", "climate"),
    ("climate.air_purifier", "fan"),
    ("sensor.temperature", "sensor"),
    ("sensor.humidity", "sensor"),
    ("sensor.motion", "binary_sensor"),
    ("sensor.contact", "binary_sensor"),
    ("sensor.energy", "sensor"),
    ("sensor.air_quality", "sensor"),
    ("switch.outlet", "switch"),
    ("switch.relay", "switch"),
    ("switch.wall", "switch"),
    ("security.lock", "lock"),
    ("appliance.washer", "switch"),
    ("appliance.kettle", "switch"),
];

/// The platform's sensor capabilities: name → (device_class, unit).
const SENSORS: &[(&str, Option<&str>, &str)] = &[
    ("temperature", Some("temperature"), "°C"),
    ("humidity", Some("humidity"), "%"),
    ("pressure", Some("pressure"), "hPa"),
    ("illuminance", Some("illuminance"), "lx"),
    ("aqi", Some("aqi"), "AQI"),
    ("pm25", Some("pm25"), "µg/m³"),
    ("co2", Some("carbon_dioxide"), "ppm"),
    ("power", Some("power"), "W"),
    ("energy", Some("energy"), "kWh"),
    ("voltage", Some("voltage"), "V"),
    ("current", Some("current"), "A"),
];

/// Climate modes Home Assistant accepts.
const HVAC_MODES: &[&str] = &[
    "auto",
    "off",
    "cool",
    "heat",
    "dry",
    "fan_only",
    "heat_cool",
];

/// One retained discovery message.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `{prefix}/{component}/{object_id}/config`.
    pub topic: String,
    /// The device it belongs to.
    pub device_id: String,
    /// The config object.
    pub payload: Value,
}

/// What every config of one instance shares.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// Discovery prefix (`homeassistant`).
    pub prefix: &'a str,
    /// `{B}/v1/instances/{I}`.
    pub root: &'a str,
    /// `{I}`.
    pub instance: &'a str,
}

impl Context<'_> {
    /// `{prefix}/{component}/{object_id}/config`.
    pub fn topic(&self, component: &str, object_id: &str) -> String {
        format!("{}/{component}/{object_id}/config", self.prefix)
    }

    /// `{I}_{device}`, the platform's global id.
    pub fn global_id(&self, device: &str) -> String {
        format!("{}_{device}", self.instance)
    }

    fn device_topic(&self, device: &str, leaf: &str) -> String {
        format!("{}/devices/{device}/{leaf}", self.root)
    }

    /// The instance status and the device's availability, both required (`availability_mode:
    /// all`): a crashed bridge's Last Will reaches `status` only.
    pub fn availability(&self, device: &str) -> Value {
        json!([
            {"topic": format!("{}/status", self.root)},
            {"topic": self.device_topic(device, "availability")},
        ])
    }

    /// The `device` block: the platform's fields (`via_device` is the instance id).
    pub fn device_block(&self, d: &DeviceInfo) -> Value {
        let name = d
            .friendly_name
            .clone()
            .or_else(|| d.name.clone())
            .unwrap_or_else(|| d.device_id.clone());
        let model = match &d.model {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => "Generic Device".to_string(),
            Some(other) => other.to_string(),
        };
        let mut block = json!({
            "identifiers": [self.global_id(&d.device_id)],
            "name": name,
            "model": model,
            "manufacturer": d.manufacturer.clone().unwrap_or_else(|| "Unknown".to_string()),
            "via_device": self.instance,
        });
        if let Some(area) = &d.area {
            block["suggested_area"] = json!(area);
        }
        block
    }

    /// Adds what every config needs and a program's may leave out: `device`, `availability`
    /// (unless it names its own), `unique_id` and `qos`.
    pub fn complete(&self, d: &DeviceInfo, unique_id: &str, config: &mut Map<String, Value>) {
        config
            .entry("unique_id")
            .or_insert_with(|| json!(unique_id));
        config
            .entry("device")
            .or_insert_with(|| self.device_block(d));
        if !config.contains_key("availability") && !config.contains_key("availability_topic") {
            config.insert("availability".into(), self.availability(&d.device_id));
            config.insert("availability_mode".into(), json!("all"));
        }
        config.entry("qos").or_insert(json!(1));
    }
}

/// The component for a class, as the platform maps it.
pub fn component(class: &str) -> Option<&'static str> {
    CLASSES.iter().find(|(c, _)| *c == class).map(|(_, p)| *p)
}

fn cap<'a>(d: &'a DeviceInfo, name: &str) -> Option<&'a Map<String, Value>> {
    d.capabilities.get(name).and_then(Value::as_object)
}

fn settable(d: &DeviceInfo, name: &str) -> bool {
    cap(d, name)
        .and_then(|c| c.get("settable"))
        .and_then(Value::as_bool)
        == Some(true)
}

fn number(d: &DeviceInfo, name: &str, key: &str) -> Option<f64> {
    cap(d, name)
        .and_then(|c| c.get(key))
        .and_then(Value::as_f64)
}

/// The on/off property: the platform's `power`, or `on` when the capabilities name that instead.
fn onoff_key(d: &DeviceInfo) -> &'static str {
    if d.capabilities.contains_key("on") && !d.capabilities.contains_key("power") {
        "on"
    } else {
        "power"
    }
}

/// `{"values": {key: VALUE}}` as a command template text.
fn values_template(key: &str, value: &str) -> String {
    format!("{{\"values\": {{\"{key}\": {value}}}}}")
}

/// Every config of the instance file's enabled devices that have a known `class`.
pub fn generate(ctx: &Context<'_>, devices: &[DeviceInfo]) -> Vec<Config> {
    devices
        .iter()
        .filter(|d| d.enabled && valid_segment(&d.device_id))
        .flat_map(|d| device_configs(ctx, d))
        .collect()
}

/// A device's configs: one entity for lights, switches, binary sensors, climates, fans and
/// locks, one per sensor capability for sensors.
pub fn device_configs(ctx: &Context<'_>, d: &DeviceInfo) -> Vec<Config> {
    let Some(class) = d.class.as_deref() else {
        return Vec::new();
    };
    let Some(component) = component(class) else {
        return Vec::new();
    };
    let gid = ctx.global_id(&d.device_id);
    let state = ctx.device_topic(&d.device_id, "state");
    let cmd = ctx.device_topic(&d.device_id, "cmd");
    let onoff = onoff_key(d);
    let on_template = format!("{{{{ 'ON' if value_json.state.{onoff} else 'OFF' }}}}");
    let mut out: Vec<(String, String, Map<String, Value>)> = Vec::new();
    // The platform's unique ids: `{I}_{d}_light`, `{I}_{d}_binary`, …
    let uid = |suffix: &str| format!("{gid}_{suffix}");
    match component {
        "light" => {
            let mut c = json!({
                "schema": "template",
                "state_topic": state,
                "command_topic": cmd,
                "state_template": format!("{{{{ 'on' if value_json.state.{onoff} else 'off' }}}}"),
                "command_off_template": values_template(onoff, "false"),
            });
            let mut on = format!("{{\"values\": {{\"{onoff}\": true");
            if settable(d, "brightness") {
                // Home Assistant's brightness is 0–255; the device's range is its capability's.
                let max = number(d, "brightness", "max").unwrap_or(255.0);
                c["brightness_template"] = json!(format!(
                    "{{{{ (value_json.state.brightness | float(0) * 255 / {max}) | round(0) | int }}}}"
                ));
                on.push_str(&format!(
                    "{{% if brightness is defined %}}, \"brightness\": {{{{ (brightness * {max} / 255) | round(0) | int }}}}{{% endif %}}"
                ));
            }
            if settable(d, "color_temp") {
                c["color_temp_template"] = json!("{{ value_json.state.color_temp }}");
                on.push_str(
                    "{% if color_temp is defined %}, \"color_temp\": {{ color_temp }}{% endif %}",
                );
            }
            on.push_str("}}");
            c["command_on_template"] = json!(on);
            out.push((gid.clone(), uid("light"), into_map(c)));
        }
        "switch" => {
            let c = json!({
                "state_topic": state,
                "command_topic": cmd,
                "value_template": on_template,
                "state_on": "ON",
                "state_off": "OFF",
                "payload_on": values_template(onoff, "true"),
                "payload_off": values_template(onoff, "false"),
            });
            out.push((gid.clone(), uid("switch"), into_map(c)));
        }
        "binary_sensor" => {
            let (prop, device_class) = if class.contains("motion") {
                ("motion", Some("motion"))
            } else if class.contains("contact") {
                ("contact", Some("door"))
            } else {
                ("state", None)
            };
            let mut c = json!({
                "state_topic": state,
                "value_template": format!("{{{{ 'ON' if value_json.state.{prop} else 'OFF' }}}}"),
                "payload_on": "ON",
                "payload_off": "OFF",
            });
            if let Some(dc) = device_class {
                c["device_class"] = json!(dc);
            }
            out.push((gid.clone(), uid("binary"), into_map(c)));
        }
        "sensor" => {
            let own = class.strip_prefix("sensor.").unwrap_or_default();
            for (name, device_class, unit) in SENSORS {
                // A settable capability is not a sensor; the class's own quantity counts even
                // when `capabilities` forgot it.
                let wanted = match d.capabilities.contains_key(*name) {
                    true => !settable(d, name),
                    false => *name == own,
                };
                if !wanted {
                    continue;
                }
                let title = capitalize(name);
                let mut c = json!({
                    "name": title,
                    "state_topic": state,
                    "value_template": format!("{{{{ value_json.state.{name} }}}}"),
                    "unit_of_measurement": unit,
                    // Home Assistant's statistics accept an energy meter only as a total.
                    "state_class": if *name == "energy" { "total_increasing" } else { "measurement" },
                });
                if let Some(dc) = device_class {
                    c["device_class"] = json!(dc);
                }
                let id = format!("{gid}_{name}");
                out.push((id.clone(), id, into_map(c)));
            }
        }
        "climate" => {
            let modes: Vec<&str> = cap(d, "mode")
                .and_then(|m| m.get("options"))
                .and_then(Value::as_array)
                .map(|o| {
                    o.iter()
                        .filter_map(Value::as_str)
                        .filter(|m| HVAC_MODES.contains(m))
                        .collect()
                })
                .unwrap_or_else(|| vec!["auto", "cool", "heat", "off"]);
            let range = if d.capabilities.contains_key("target_temperature") {
                "target_temperature"
            } else {
                "temperature"
            };
            let mut c = json!({
                "current_temperature_topic": state,
                "current_temperature_template": "{{ value_json.state.temperature }}",
                "mode_state_topic": state,
                "mode_state_template": "{{ value_json.state.mode }}",
                "mode_command_topic": cmd,
                "mode_command_template": values_template("mode", "\"{{ value }}\""),
                "modes": modes,
                "min_temp": number(d, range, "min").unwrap_or(16.0),
                "max_temp": number(d, range, "max").unwrap_or(30.0),
                "temp_step": number(d, range, "step").unwrap_or(1.0),
            });
            if settable(d, "target_temperature") {
                c["temperature_state_topic"] = json!(state);
                c["temperature_state_template"] =
                    json!("{{ value_json.state.target_temperature }}");
                c["temperature_command_topic"] = json!(cmd);
                c["temperature_command_template"] =
                    json!(values_template("target_temperature", "{{ value }}"));
            }
            out.push((gid.clone(), uid("climate"), into_map(c)));
        }
        "fan" => {
            let mut c = json!({
                "state_topic": state,
                "command_topic": cmd,
                "state_value_template": on_template,
                "command_template": values_template(onoff, "{{ 'true' if value == 'ON' else 'false' }}"),
            });
            if settable(d, "speed") {
                c["percentage_state_topic"] = json!(state);
                c["percentage_value_template"] = json!("{{ value_json.state.speed }}");
                c["percentage_command_topic"] = json!(cmd);
                c["percentage_command_template"] = json!(values_template("speed", "{{ value }}"));
                c["speed_range_min"] = json!(number(d, "speed", "min").unwrap_or(1.0) as i64);
                c["speed_range_max"] = json!(number(d, "speed", "max").unwrap_or(100.0) as i64);
            }
            out.push((gid.clone(), uid("fan"), into_map(c)));
        }
        "lock" => {
            let c = json!({
                "state_topic": state,
                "command_topic": cmd,
                "value_template": "{{ 'LOCKED' if value_json.state.locked else 'UNLOCKED' }}",
                "payload_lock": values_template("locked", "true"),
                "payload_unlock": values_template("locked", "false"),
            });
            out.push((gid.clone(), uid("lock"), into_map(c)));
        }
        _ => {}
    }
    out.into_iter()
        .map(|(object_id, unique_id, mut c)| {
            // The main entity takes the device's name (`name: null`); Home Assistant would
            // otherwise show "Desk lamp Desk lamp".
            c.entry("name").or_insert(Value::Null);
            if component != "sensor" && component != "binary_sensor" {
                c.insert("json_attributes_topic".into(), json!(state));
                c.insert(
                    "json_attributes_template".into(),
                    json!("{{ value_json.state | tojson }}"),
                );
            }
            ctx.complete(d, &unique_id, &mut c);
            Config {
                topic: ctx.topic(component, &object_id),
                device_id: d.device_id.clone(),
                payload: Value::Object(c),
            }
        })
        .collect()
}

fn into_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context<'static> {
        Context {
            prefix: "homeassistant",
            root: "IoT2mqtt/v1/instances/demo",
            instance: "demo",
        }
    }

    fn device(id: &str, class: &str, caps: Value) -> DeviceInfo {
        serde_json::from_value(json!({
            "device_id": id, "name": id, "class": class, "capabilities": caps
        }))
        .unwrap()
    }

    #[test]
    fn topics_and_unique_ids_are_the_platforms() {
        let devices = vec![
            device(
                "lamp",
                "light.dimmable",
                json!({"brightness": {"settable": true}}),
            ),
            device("plug", "switch.outlet", json!({})),
            device(
                "th",
                "sensor.temperature",
                json!({"temperature": {}, "humidity": {"settable": false}, "power": {"settable": true}}),
            ),
            device("door", "sensor.contact", json!({})),
            device(
                "ac",
                "climate.ac",
                json!({"target_temperature": {"settable": true}}),
            ),
            device(
                "fan",
                "climate.air_purifier",
                json!({"speed": {"settable": true}}),
            ),
            device("lock", "security.lock", json!({})),
            device("cam", "security.camera", json!({})),
        ];
        let got: Vec<(String, String)> = generate(&ctx(), &devices)
            .into_iter()
            .map(|c| {
                (
                    c.topic,
                    c.payload["unique_id"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let want = [
            ("homeassistant/light/demo_lamp/config", "demo_lamp_light"),
            ("homeassistant/switch/demo_plug/config", "demo_plug_switch"),
            (
                "homeassistant/sensor/demo_th_temperature/config",
                "demo_th_temperature",
            ),
            (
                "homeassistant/sensor/demo_th_humidity/config",
                "demo_th_humidity",
            ),
            (
                "homeassistant/binary_sensor/demo_door/config",
                "demo_door_binary",
            ),
            ("homeassistant/climate/demo_ac/config", "demo_ac_climate"),
            ("homeassistant/fan/demo_fan/config", "demo_fan_fan"),
            ("homeassistant/lock/demo_lock/config", "demo_lock_lock"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn every_config_names_its_device_and_both_availability_topics() {
        let mut d = device("lamp", "light.switch", json!({}));
        d.friendly_name = Some("Desk lamp".into());
        d.manufacturer = Some("Acme".into());
        let c = &device_configs(&ctx(), &d)[0].payload;
        assert_eq!(
            c["device"],
            json!({"identifiers": ["demo_lamp"], "name": "Desk lamp", "model": "Generic Device",
                   "manufacturer": "Acme", "via_device": "demo"})
        );
        assert_eq!(
            c["availability"],
            json!([{"topic": "IoT2mqtt/v1/instances/demo/status"},
                   {"topic": "IoT2mqtt/v1/instances/demo/devices/lamp/availability"}])
        );
        assert_eq!(c["availability_mode"], "all");
        assert_eq!(c["name"], Value::Null);
    }

    #[test]
    fn commands_are_the_platforms_values_objects() {
        let d = device("plug", "switch.relay", json!({"on": {"settable": true}}));
        let c = &device_configs(&ctx(), &d)[0].payload;
        let on: Value = serde_json::from_str(c["payload_on"].as_str().unwrap()).unwrap();
        assert_eq!(on, json!({"values": {"on": true}}));
        let off: Value = serde_json::from_str(c["payload_off"].as_str().unwrap()).unwrap();
        assert_eq!(off, json!({"values": {"on": false}}));
        assert_eq!(
            c["command_topic"],
            "IoT2mqtt/v1/instances/demo/devices/plug/cmd"
        );
    }

    #[test]
    fn an_energy_meter_is_a_total_and_other_sensors_are_measurements() {
        let d = device("m", "sensor.energy", json!({"power": {}}));
        let classes: Vec<(String, String)> = device_configs(&ctx(), &d)
            .into_iter()
            .map(|c| {
                let p = c.payload;
                (
                    p["device_class"].as_str().unwrap().to_string(),
                    p["state_class"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            classes,
            [
                ("power".into(), "measurement".into()),
                ("energy".into(), "total_increasing".into())
            ]
        );
    }

    #[test]
    fn devices_without_a_known_class_or_disabled_get_no_config() {
        let mut off = device("a", "light.switch", json!({}));
        off.enabled = false;
        let devices = vec![
            serde_json::from_value(json!({"device_id": "b"})).unwrap(),
            device("c", "media.tv", json!({})),
            off,
        ];
        assert!(generate(&ctx(), &devices).is_empty());
    }

    /// The keys Home Assistant's MQTT integration documents for each component (2024.1,
    /// https://www.home-assistant.io/integrations/{light,switch,sensor,binary_sensor,climate,
    /// fan,lock}.mqtt/), plus those every MQTT entity takes. A key outside these would be
    /// rejected by its discovery schema; a required one missing likewise.
    fn documented(component: &str) -> (&'static [&'static str], &'static [&'static str]) {
        match component {
            "light" => (
                &[
                    "schema",
                    "state_topic",
                    "command_topic",
                    "state_template",
                    "command_on_template",
                    "command_off_template",
                    "brightness_template",
                    "color_temp_template",
                ],
                &[
                    "command_topic",
                    "command_on_template",
                    "command_off_template",
                ],
            ),
            "switch" => (
                &[
                    "state_topic",
                    "command_topic",
                    "value_template",
                    "state_on",
                    "state_off",
                    "payload_on",
                    "payload_off",
                ],
                &[],
            ),
            "sensor" => (
                &[
                    "state_topic",
                    "value_template",
                    "unit_of_measurement",
                    "device_class",
                    "state_class",
                ],
                &["state_topic"],
            ),
            "binary_sensor" => (
                &[
                    "state_topic",
                    "value_template",
                    "payload_on",
                    "payload_off",
                    "device_class",
                ],
                &["state_topic"],
            ),
            "climate" => (
                &[
                    "current_temperature_topic",
                    "current_temperature_template",
                    "mode_state_topic",
                    "mode_state_template",
                    "mode_command_topic",
                    "mode_command_template",
                    "modes",
                    "min_temp",
                    "max_temp",
                    "temp_step",
                    "temperature_state_topic",
                    "temperature_state_template",
                    "temperature_command_topic",
                    "temperature_command_template",
                ],
                &[],
            ),
            "fan" => (
                &[
                    "state_topic",
                    "command_topic",
                    "state_value_template",
                    "command_template",
                    "percentage_state_topic",
                    "percentage_value_template",
                    "percentage_command_topic",
                    "percentage_command_template",
                    "speed_range_min",
                    "speed_range_max",
                ],
                &["command_topic"],
            ),
            "lock" => (
                &[
                    "state_topic",
                    "command_topic",
                    "value_template",
                    "payload_lock",
                    "payload_unlock",
                ],
                &["command_topic"],
            ),
            other => panic!("no documented keys for {other}"),
        }
    }

    const COMMON: &[&str] = &[
        "unique_id",
        "name",
        "device",
        "availability",
        "availability_mode",
        "qos",
        "json_attributes_topic",
        "json_attributes_template",
    ];
    const DEVICE_KEYS: &[&str] = &[
        "identifiers",
        "name",
        "model",
        "manufacturer",
        "via_device",
        "suggested_area",
    ];

    #[test]
    fn generated_configs_use_only_documented_keys_and_have_the_required_ones() {
        let all = [
            device(
                "l",
                "light.rgb",
                json!({"brightness": {"settable": true, "max": 100},
                                            "color_temp": {"settable": true}}),
            ),
            device("s", "switch.wall", json!({})),
            device(
                "t",
                "sensor.air_quality",
                json!({"aqi": {}, "pm25": {}, "co2": {}}),
            ),
            device("m", "sensor.motion", json!({})),
            device(
                "c",
                "climate.thermostat",
                json!({"mode": {"options": ["heat", "off", "eco"]},
                                                   "target_temperature": {"settable": true, "min": 5}}),
            ),
            device(
                "f",
                "climate.air_purifier",
                json!({"speed": {"settable": true, "max": 3}}),
            ),
            device("k", "security.lock", json!({})),
        ];
        let configs = generate(&ctx(), &all);
        assert_eq!(configs.len(), 9);
        for c in configs {
            let component = c.topic.split('/').nth(1).unwrap();
            let (keys, required) = documented(component);
            let obj = c.payload.as_object().unwrap();
            for k in obj.keys() {
                assert!(
                    keys.contains(&k.as_str()) || COMMON.contains(&k.as_str()),
                    "{}: undocumented key {k}",
                    c.topic
                );
            }
            for k in required {
                assert!(obj.contains_key(*k), "{}: missing {k}", c.topic);
            }
            for k in obj["device"].as_object().unwrap().keys() {
                assert!(DEVICE_KEYS.contains(&k.as_str()), "device key {k}");
            }
            if component == "climate" {
                // Home Assistant refuses modes it does not know ("eco").
                assert_eq!(obj["modes"], json!(["heat", "off"]));
            }
        }
    }
}
