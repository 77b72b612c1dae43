//! Resolution of the bridge's settings from the platform contract.
//!
//! Every value is looked up in this order, the first hit winning: the `[bridge]` table of the
//! config file, the real process environment, then `$IOT2MQTT_PATH/.env` (raw `KEY=value` lines
//! as the platform's web backend writes them, read by [`sv_core::envfile`]: no `$` expansion, no
//! escapes; a malformed line is an error only when a setting needs it). Credentials additionally come from
//! `$IOT2MQTT_SECRETS_DIR/{instance}_mqtt` (default `/run/secrets`, `username=` / `password=`
//! lines), which ranks below the real environment and above `.env`.
//!
//! Invariants: a [`Settings`] value is complete and valid (numbers in range, TLS files readable,
//! the instance file parsed); its `Debug` output never contains the password; every error names
//! the variable or the file and position at fault.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sv_core::config::BridgeSection;
use sv_core::envfile::EnvFile;

/// The socket path used when neither `[bridge] socket` nor anything else says otherwise.
pub fn default_socket_path() -> PathBuf {
    PathBuf::from("/run/iot2mqtt-sv/bridge.sock")
}

/// The bridge socket path for a `[bridge]` table: its `socket` key, else [`default_socket_path`].
/// The supervisor exports this as `IOT2MQTT_SV_BRIDGE_SOCKET` to every program.
pub fn socket_path(section: &BridgeSection) -> PathBuf {
    section.socket.clone().unwrap_or_else(default_socket_path)
}

/// A string that never appears in logs: `Debug` and `Display` print `"<redacted>"`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that needs it (the MQTT CONNECT packet).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// TLS material, loaded and validated at resolve time.
#[derive(Clone)]
pub struct TlsSettings {
    /// The rustls client configuration handed to the MQTT client.
    pub config: Arc<rustls::ClientConfig>,
    /// Where the CA bundle came from (`None` = the platform's certificate store was not used
    /// and no CA was given: the connection will fail verification; see docs).
    pub ca_file: Option<PathBuf>,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

/// One device of the instance file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DeviceInfo {
    /// `device_id`.
    pub device_id: String,
    /// `enabled` (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `name`.
    #[serde(default)]
    pub name: Option<String>,
    /// `model`.
    #[serde(default)]
    pub model: Option<serde_json::Value>,
    /// `friendly_name` (Home Assistant's device name, before `name`).
    #[serde(default)]
    pub friendly_name: Option<String>,
    /// `manufacturer`.
    #[serde(default)]
    pub manufacturer: Option<String>,
    /// `area` (Home Assistant's suggested area).
    #[serde(default)]
    pub area: Option<String>,
    /// `class`, e.g. `light.dimmable`, `sensor.temperature` (Home Assistant discovery).
    #[serde(default)]
    pub class: Option<String>,
    /// `capabilities`: property name → `{"settable", "min", "max", "step", "options", …}`.
    #[serde(default)]
    pub capabilities: serde_json::Map<String, serde_json::Value>,
}

fn yes() -> bool {
    true
}

/// One group of the instance file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct GroupInfo {
    /// `group_id`.
    pub group_id: String,
    /// Member `device_id`s.
    #[serde(default)]
    pub devices: Vec<String>,
}

/// What the bridge reads from `$IOT2MQTT_PATH/instances/$INSTANCE_NAME.json`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct InstanceFile {
    /// `instance_id`.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// `connector_type`.
    #[serde(default)]
    pub connector_type: Option<String>,
    /// `friendly_name`.
    #[serde(default)]
    pub friendly_name: Option<String>,
    /// `enabled`.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// `devices`.
    #[serde(default)]
    pub devices: Vec<DeviceInfo>,
    /// `groups`.
    #[serde(default)]
    pub groups: Vec<GroupInfo>,
    /// `mqtt`: `qos` and `retain_state`, as the platform's connectors read them.
    #[serde(default)]
    pub mqtt: InstanceMqtt,
    /// `ha_discovery_enabled` (the platform's setup forms write it per instance).
    #[serde(default, deserialize_with = "loose_bool")]
    pub ha_discovery_enabled: Option<bool>,
    /// `ha_discovery_prefix`.
    #[serde(default)]
    pub ha_discovery_prefix: Option<String>,
}

/// The instance file's `mqtt` object.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct InstanceMqtt {
    /// `qos` for device messages.
    #[serde(default)]
    pub qos: Option<u8>,
    /// `retain_state`: whether `state` and `state/{prop}` are retained.
    #[serde(default, deserialize_with = "loose_bool")]
    pub retain_state: Option<bool>,
}

/// A boolean, or the strings `"true"`/`"false"` a setup form's template renders.
fn loose_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Bool(b)) => Ok(Some(b)),
        Some(serde_json::Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(serde_json::Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected true or false, found {other}"
        ))),
    }
}

/// Resolved settings. Build with [`Settings::resolve`]; fields are public so tests and the
/// binary can adjust them afterwards.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Broker host (`MQTT_HOST`, empty = `localhost`).
    pub host: String,
    /// Broker port (`MQTT_PORT`, default 1883, or 8883 with TLS).
    pub port: u16,
    /// `MQTT_USERNAME` (empty = anonymous).
    pub username: Option<String>,
    /// `MQTT_PASSWORD`.
    pub password: Option<Secret>,
    /// `MQTT_BASE_TOPIC` (default `IoT2mqtt`).
    pub base_topic: String,
    /// The MQTT client id (`{MQTT_CLIENT_PREFIX}_{INSTANCE_NAME}` unless `[bridge] client_id`).
    pub client_id: String,
    /// Default QoS of device messages (`MQTT_QOS`, default 1).
    pub qos: u8,
    /// Whether device state is retained (`MQTT_RETAIN`, default true).
    pub retain: bool,
    /// `MQTT_KEEPALIVE` (default 60 s).
    pub keepalive: Duration,
    /// `LOG_LEVEL` as given (default `INFO`).
    pub log_level: String,
    /// `TZ` as given (`None` = the system zone).
    pub tz_name: Option<String>,
    /// The zone used for timestamps and for naive inbound timestamps.
    pub tz: jiff::tz::TimeZone,
    /// `INSTANCE_NAME`: the `{I}` of every topic.
    pub instance: String,
    /// `MODE` (default `production`).
    pub mode: String,
    /// `IOT2MQTT_PATH` (default `/app`).
    pub iot2mqtt_path: PathBuf,
    /// The instance file path.
    pub instance_file: PathBuf,
    /// The instance file's content (empty when the default path does not exist).
    pub instance_config: InstanceFile,
    /// The bridge's Unix socket.
    pub socket: PathBuf,
    /// Group owning the socket (then mode 0660 unless `socket_mode` says otherwise).
    pub socket_group: Option<String>,
    /// Socket permission bits.
    pub socket_mode: u32,
    /// Longest accepted protocol line.
    pub max_line_bytes: usize,
    /// Outbox bound in messages.
    pub outbox_max_messages: usize,
    /// Outbox bound in payload + topic bytes.
    pub outbox_max_bytes: usize,
    /// Device ids with a cached state, and device ids claimed by `hello`s (each bound).
    pub max_devices: usize,
    /// Raw subscriptions per connection.
    pub max_subscriptions: usize,
    /// Simultaneous connections on the bridge socket.
    pub max_connections: usize,
    /// Older commands are rejected.
    pub max_command_age: Duration,
    /// Timeout of a command that carries none.
    pub default_command_timeout: Duration,
    /// Publish `state/{prop}` topics.
    pub property_topics: bool,
    /// TLS, when enabled.
    pub tls: Option<TlsSettings>,
    /// Extra publish filters per program name (`[program.NAME] bridge_publish`).
    pub program_publish: HashMap<String, Vec<String>>,
    /// Home Assistant discovery prefix (`HA_DISCOVERY_PREFIX`, default `homeassistant`);
    /// `None` when discovery is off (`HA_DISCOVERY_ENABLED=false`).
    pub ha_discovery: Option<String>,
    /// `CONNECTOR_TYPE` from the environment, `meta/info`'s fallback for the instance file's.
    pub connector_type: Option<String>,
}

/// Why settings could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A variable has a value of the wrong form.
    #[error("{name}: invalid value {value:?}: {reason}")]
    Invalid {
        /// The variable (or `[bridge]` key).
        name: String,
        /// The offending value (never a secret).
        value: String,
        /// What was expected.
        reason: String,
    },
    /// A required variable is missing.
    #[error("{name} is not set (environment, {env_file} or [bridge] {key})")]
    Missing {
        /// The variable.
        name: &'static str,
        /// The `[bridge]` key of the same meaning.
        key: &'static str,
        /// The `.env` file consulted.
        env_file: String,
    },
    /// A file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The `.env` file does not parse.
    #[error("{path}: {message}")]
    EnvFile {
        /// The file.
        path: PathBuf,
        /// Position and cause.
        message: String,
    },
    /// The instance file does not parse.
    #[error("{path}: line {line}, column {column}: {message}")]
    InstanceFile {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The cause, lower-case.
        message: String,
    },
    /// TLS material is unusable.
    #[error("tls: {0}")]
    Tls(String),
}

/// Lookups in the three sources, in precedence order after the `[bridge]` table.
struct Sources<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    dotenv: EnvFile,
    dotenv_path: PathBuf,
    secrets: HashMap<String, String>,
    /// The first malformed `.env` line a lookup needed; it outranks any later error because it
    /// is their cause (a missing `INSTANCE_NAME` because its line did not parse).
    bad_line: RefCell<Option<SettingsError>>,
}

impl Sources<'_> {
    fn get(&self, name: &str) -> Option<String> {
        (self.env)(name).or_else(|| self.dotenv_get(name))
    }

    /// `name` from `.env` only; a malformed line for it is remembered as the error to report.
    fn dotenv_get(&self, name: &str) -> Option<String> {
        match self.dotenv.get(name) {
            Ok(v) => v.map(str::to_string),
            Err(m) => {
                self.bad_line
                    .borrow_mut()
                    .get_or_insert_with(|| SettingsError::EnvFile {
                        path: self.dotenv_path.clone(),
                        message: format!("{m} (defining {name})"),
                    });
                None
            }
        }
    }

    fn env_only(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|v| !v.is_empty())
    }

    fn get_nonempty(&self, name: &str) -> Option<String> {
        self.get(name).filter(|v| !v.trim().is_empty())
    }
}

fn invalid(name: &str, value: &str, reason: &str) -> SettingsError {
    SettingsError::Invalid {
        name: name.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn parse_bool(name: &str, v: &str) -> Result<bool, SettingsError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(name, v, "expected true or false")),
    }
}

fn parse_num<T: std::str::FromStr>(name: &str, v: &str, what: &str) -> Result<T, SettingsError> {
    v.trim().parse().map_err(|_| invalid(name, v, what))
}

/// Reads `.env` the platform's way ([`EnvFile`]); a missing file defines nothing.
fn read_dotenv(path: &Path) -> Result<EnvFile, SettingsError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(EnvFile::parse(&bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(EnvFile::default()),
        Err(e) => Err(SettingsError::Read {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Reads `username=` / `password=` lines; a missing file is no error.
fn read_secrets(path: &Path) -> Result<HashMap<String, String>, SettingsError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => {
            return Err(SettingsError::Read {
                path: path.to_path_buf(),
                source: e,
            });
        }
    };
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect())
}

/// Parses the instance file, turning serde_json's position into the error.
pub fn parse_instance_file(path: &Path, text: &str) -> Result<InstanceFile, SettingsError> {
    serde_json::from_str(text).map_err(|e| SettingsError::InstanceFile {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        message: {
            // serde_json appends " at line L column C"; the position is reported separately.
            let m = e.to_string();
            match m.rfind(" at line ") {
                Some(i) => m[..i].to_string(),
                None => m,
            }
        },
    })
}

fn resolve_tz(name: Option<&str>) -> Result<jiff::tz::TimeZone, SettingsError> {
    let Some(raw) = name else {
        return Ok(jiff::tz::TimeZone::system());
    };
    // glibc accepts a leading ':' meaning "a file name"; it names the same zone.
    let n = raw.trim().trim_start_matches(':');
    if n.is_empty() {
        return Ok(jiff::tz::TimeZone::system());
    }
    if n == "UTC" || n == "Etc/UTC" {
        return Ok(jiff::tz::TimeZone::UTC);
    }
    jiff::tz::TimeZone::get(n)
        .or_else(|_| jiff::tz::TimeZone::posix(n))
        .map_err(|e| invalid("TZ", raw, &format!("unknown time zone: {e}")))
}

fn load_tls(
    ca_file: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<TlsSettings, SettingsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca_file {
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| SettingsError::Tls(format!("{}: {e}", ca.display())))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SettingsError::Tls(format!("{}: {e}", ca.display())))?;
        if certs.is_empty() {
            return Err(SettingsError::Tls(format!(
                "{}: no certificate found",
                ca.display()
            )));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| SettingsError::Tls(format!("{}: {e}", ca.display())))?;
        }
    } else {
        // The platform images ship the Debian CA bundle; a broker with a public certificate
        // then works without configuration.
        let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
        if let Ok(iter) = CertificateDer::pem_file_iter(bundle) {
            for c in iter.flatten() {
                let _ = roots.add(c);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SettingsError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (cert, key) {
        (Some(c), Some(k)) => {
            let chain = CertificateDer::pem_file_iter(c)
                .map_err(|e| SettingsError::Tls(format!("{}: {e}", c.display())))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SettingsError::Tls(format!("{}: {e}", c.display())))?;
            let key = PrivateKeyDer::from_pem_file(k)
                .map_err(|e| SettingsError::Tls(format!("{}: {e}", k.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| SettingsError::Tls(e.to_string()))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(SettingsError::Tls(
                "client_cert and client_key must be given together".into(),
            ));
        }
    };
    Ok(TlsSettings {
        config: Arc::new(config),
        ca_file: ca_file.map(Path::to_path_buf),
    })
}

/// The instance file: `[bridge] instance_file`, else `$IOT2MQTT_PATH/instances/{I}.json`
/// (whose absence only logs a warning).
fn read_instance_file(
    section: &BridgeSection,
    iot2mqtt_path: &Path,
    instance: &str,
) -> Result<(PathBuf, InstanceFile), SettingsError> {
    let (instance_file, explicit_file) = match &section.instance_file {
        Some(f) => (f.clone(), true),
        None => (
            iot2mqtt_path
                .join("instances")
                .join(format!("{instance}.json")),
            false,
        ),
    };
    let config = match std::fs::read_to_string(&instance_file) {
        Ok(text) => parse_instance_file(&instance_file, &text)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit_file => {
            tracing::warn!(path = %instance_file.display(), "instance file not found; no devices or groups known");
            InstanceFile::default()
        }
        Err(e) => {
            return Err(SettingsError::Read {
                path: instance_file,
                source: e,
            });
        }
    };

    Ok((instance_file, config))
}

/// Home Assistant discovery: the instance file's `ha_discovery_enabled`/`ha_discovery_prefix`
/// (written per instance by the platform's setup forms) win over `HA_DISCOVERY_ENABLED` /
/// `HA_DISCOVERY_PREFIX` (written into `.env` by the web UI); on by default.
fn ha_discovery(src: &Sources, ic: &InstanceFile) -> Result<Option<String>, SettingsError> {
    let enabled = match ic.ha_discovery_enabled {
        Some(e) => e,
        None => match src.get_nonempty("HA_DISCOVERY_ENABLED") {
            Some(v) => parse_bool("HA_DISCOVERY_ENABLED", &v)?,
            None => true,
        },
    };
    if !enabled {
        return Ok(None);
    }
    let prefix = ic
        .ha_discovery_prefix
        .clone()
        .filter(|p| !p.trim().is_empty())
        .or_else(|| src.get_nonempty("HA_DISCOVERY_PREFIX"))
        .unwrap_or_else(|| "homeassistant".to_string());
    let prefix = prefix.trim().trim_end_matches('/').to_string();
    if prefix.is_empty() || prefix.contains(['+', '#']) {
        return Err(invalid(
            "HA_DISCOVERY_PREFIX",
            &prefix,
            "must be non-empty and contain no '+' or '#'",
        ));
    }
    Ok(Some(prefix))
}

impl Settings {
    /// Resolves every setting (see the module doc for the precedence) and loads the instance
    /// file and TLS material. `env` is the real environment (tests pass a map).
    pub fn resolve(
        section: &BridgeSection,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, SettingsError> {
        let iot2mqtt_path = section
            .iot2mqtt_path
            .clone()
            .or_else(|| {
                env("IOT2MQTT_PATH")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from("/app"));
        let dotenv_path = iot2mqtt_path.join(".env");
        let dotenv = read_dotenv(&dotenv_path)?;
        let mut src = Sources {
            env,
            dotenv,
            dotenv_path,
            secrets: HashMap::new(),
            bad_line: RefCell::new(None),
        };
        let resolved = Self::resolve_from(section, &mut src, iot2mqtt_path);
        match src.bad_line.take() {
            Some(e) => Err(e),
            None => resolved,
        }
    }

    fn resolve_from(
        section: &BridgeSection,
        src: &mut Sources<'_>,
        iot2mqtt_path: PathBuf,
    ) -> Result<Settings, SettingsError> {
        let env = src.env;

        let instance = match section.instance.clone() {
            Some(i) => i,
            None => src
                .get_nonempty("INSTANCE_NAME")
                .ok_or_else(|| SettingsError::Missing {
                    name: "INSTANCE_NAME",
                    key: "instance",
                    env_file: src.dotenv_path.display().to_string(),
                })?,
        };
        let instance = instance.trim().to_string();
        if instance.contains(['/', '+', '#']) {
            return Err(invalid(
                "INSTANCE_NAME",
                &instance,
                "must not contain '/', '+' or '#'",
            ));
        }
        let secrets_dir = env("IOT2MQTT_SECRETS_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/run/secrets"));
        src.secrets = read_secrets(&secrets_dir.join(format!("{instance}_mqtt")))?;

        let host = section
            .host
            .clone()
            .or_else(|| src.get("MQTT_HOST"))
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_string());

        let ca_file = section.ca_file.clone();
        let explicit_port = match section.port {
            Some(p) => Some(p),
            None => match src.get_nonempty("MQTT_PORT") {
                Some(v) => Some(parse_num::<u16>("MQTT_PORT", &v, "expected a port number")?),
                None => None,
            },
        };
        let tls_on = section.tls.unwrap_or(false)
            || ca_file.is_some()
            || explicit_port == Some(8883)
            || section.client_cert.is_some();
        if section.tls == Some(false) && ca_file.is_some() {
            return Err(invalid(
                "tls",
                "false",
                "ca_file is set but tls is disabled",
            ));
        }
        let port = explicit_port.unwrap_or(if tls_on { 8883 } else { 1883 });
        if port == 0 {
            return Err(invalid("MQTT_PORT", "0", "expected a port number"));
        }

        let username = section
            .username
            .clone()
            .or_else(|| env("MQTT_USERNAME"))
            .or_else(|| src.secrets.get("username").cloned())
            .or_else(|| src.dotenv_get("MQTT_USERNAME"))
            .filter(|u| !u.is_empty());
        let password = match (&section.password, &section.password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| SettingsError::Read {
                        path: f.clone(),
                        source: e,
                    })?
                    .trim()
                    .to_string(),
            ),
            (None, None) => env("MQTT_PASSWORD")
                .or_else(|| src.secrets.get("password").cloned())
                .or_else(|| src.dotenv_get("MQTT_PASSWORD")),
        }
        .filter(|p| !p.is_empty())
        .map(Secret::new);

        let base_topic = section
            .base_topic
            .clone()
            .or_else(|| src.get_nonempty("MQTT_BASE_TOPIC"))
            .unwrap_or_else(|| "IoT2mqtt".to_string());
        let base_topic = base_topic.trim().trim_end_matches('/').to_string();
        if base_topic.is_empty() || base_topic.contains(['+', '#']) {
            return Err(invalid(
                "MQTT_BASE_TOPIC",
                &base_topic,
                "must be non-empty and contain no '+' or '#'",
            ));
        }
        let client_prefix = section
            .client_prefix
            .clone()
            .or_else(|| src.get_nonempty("MQTT_CLIENT_PREFIX"))
            .unwrap_or_else(|| "iot2mqtt".to_string());
        let client_id = section
            .client_id
            .clone()
            .unwrap_or_else(|| format!("{client_prefix}_{instance}"));

        let (instance_file, instance_config) =
            read_instance_file(section, &iot2mqtt_path, &instance)?;
        // The platform's connectors take qos and retain_state from the instance file only; an
        // explicit `[bridge]` value still wins, and MQTT_QOS/MQTT_RETAIN fill in when it has none.
        let qos = match section.qos.or(instance_config.mqtt.qos) {
            Some(q) => q,
            None => match src.get_nonempty("MQTT_QOS") {
                Some(v) => parse_num::<u8>("MQTT_QOS", &v, "expected 0, 1 or 2")?,
                None => 1,
            },
        };
        if qos > 2 {
            return Err(invalid("MQTT_QOS", &qos.to_string(), "expected 0, 1 or 2"));
        }
        let retain = match section.retain.or(instance_config.mqtt.retain_state) {
            Some(r) => r,
            None => match src.get_nonempty("MQTT_RETAIN") {
                Some(v) => parse_bool("MQTT_RETAIN", &v)?,
                None => true,
            },
        };
        let keepalive = match section.keepalive {
            Some(k) => k,
            None => match src.get_nonempty("MQTT_KEEPALIVE") {
                Some(v) => Duration::from_secs(parse_num::<u64>(
                    "MQTT_KEEPALIVE",
                    &v,
                    "expected whole seconds",
                )?),
                None => Duration::from_secs(60),
            },
        };
        // rumqttc asserts on sub-second keepalives; refuse them here instead of panicking there.
        if !keepalive.is_zero() && keepalive < Duration::from_secs(1) {
            return Err(invalid(
                "MQTT_KEEPALIVE",
                &format!("{keepalive:?}"),
                "must be 0 or at least 1 second",
            ));
        }
        let keepalive = Duration::from_secs(keepalive.as_secs().min(u64::from(u16::MAX)));

        let log_level = src
            .get_nonempty("LOG_LEVEL")
            .unwrap_or_else(|| "INFO".to_string());
        let tz_name = section.tz.clone().or_else(|| src.get_nonempty("TZ"));
        let tz = resolve_tz(tz_name.as_deref())?;
        let mode = src
            .get_nonempty("MODE")
            .unwrap_or_else(|| "production".to_string());

        let ha_discovery = ha_discovery(src, &instance_config)?;

        let tls = if tls_on {
            Some(load_tls(
                ca_file.as_deref(),
                section.client_cert.as_deref(),
                section.client_key.as_deref(),
            )?)
        } else {
            None
        };

        let socket_group = section.socket_group.clone();
        let socket_mode =
            section
                .socket_mode
                .unwrap_or(if socket_group.is_some() { 0o660 } else { 0o600 });
        if socket_mode > 0o777 {
            return Err(invalid(
                "socket_mode",
                &format!("{socket_mode:o}"),
                "expected permission bits such as 0o600",
            ));
        }

        let max_line_bytes = section.max_line_bytes.unwrap_or(64 * 1024);
        if max_line_bytes < 256 {
            return Err(invalid(
                "max_line_bytes",
                &max_line_bytes.to_string(),
                "must be at least 256",
            ));
        }

        Ok(Settings {
            host,
            port,
            username,
            password,
            base_topic,
            client_id,
            qos,
            retain,
            keepalive,
            log_level,
            tz_name,
            tz,
            instance,
            mode,
            iot2mqtt_path,
            instance_file,
            instance_config,
            // The supervisor exports the path it chose to every program, the bridge included;
            // following it keeps both sides on one path even when the control socket moved.
            socket: section.socket.clone().unwrap_or_else(|| {
                src.env_only("IOT2MQTT_SV_BRIDGE_SOCKET")
                    .map(PathBuf::from)
                    .unwrap_or_else(default_socket_path)
            }),
            socket_group,
            socket_mode,
            max_line_bytes,
            outbox_max_messages: section.outbox_max_messages.unwrap_or(10_000).max(1),
            outbox_max_bytes: section
                .outbox_max_bytes
                .unwrap_or(16 * 1024 * 1024)
                .max(1024),
            max_devices: section.max_devices.unwrap_or(10_000),
            max_subscriptions: section.max_subscriptions.unwrap_or(256),
            max_connections: section.max_connections.unwrap_or(256),
            max_command_age: section.max_command_age.unwrap_or(Duration::from_secs(30)),
            default_command_timeout: Duration::from_millis(5000),
            property_topics: section.property_topics.unwrap_or(true),
            tls,
            program_publish: HashMap::new(),
            ha_discovery,
            connector_type: src.get_nonempty("CONNECTOR_TYPE"),
        })
    }

    /// The bridge socket path for a `[bridge]` table (same as the free [`socket_path`]).
    pub fn socket_path(section: &BridgeSection) -> PathBuf {
        socket_path(section)
    }

    /// `{B}/v1/instances/{I}`, the root of everything this instance owns.
    pub fn instance_root(&self) -> String {
        format!("{}/v1/instances/{}", self.base_topic, self.instance)
    }

    /// Adds each program's `bridge_publish` filters from a whole config.
    pub fn with_programs(mut self, config: &sv_core::config::Config) -> Settings {
        for p in &config.programs {
            if !p.bridge_publish.is_empty() {
                self.program_publish
                    .insert(p.name.clone(), p.bridge_publish.clone());
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn app() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("instances")).unwrap();
        d
    }

    #[test]
    fn env_wins_over_dotenv_and_section_wins_over_both() {
        let d = app();
        std::fs::write(
            d.path().join(".env"),
            "# comment\nMQTT_HOST=\nMQTT_PORT=1884\nMQTT_BASE_TOPIC=Base\nMQTT_QOS=2\nTZ=Europe/Berlin\n",
        )
        .unwrap();
        let path = d.path().to_str().unwrap().to_string();
        let env = env_of(&[
            ("IOT2MQTT_PATH", &path),
            ("INSTANCE_NAME", "inst1"),
            ("MQTT_PORT", "1999"),
            ("IOT2MQTT_SECRETS_DIR", &path),
        ]);
        let s = Settings::resolve(&BridgeSection::default(), &env).unwrap();
        assert_eq!(s.host, "localhost");
        assert_eq!(s.port, 1999);
        assert_eq!(s.base_topic, "Base");
        assert_eq!(s.qos, 2);
        assert_eq!(s.client_id, "iot2mqtt_inst1");
        assert!(s.tls.is_none());
        assert_eq!(s.socket, default_socket_path());
        let section = BridgeSection {
            port: Some(2000),
            qos: Some(0),
            ..Default::default()
        };
        let s = Settings::resolve(&section, &env).unwrap();
        assert_eq!((s.port, s.qos), (2000, 0));
    }

    #[test]
    fn socket_follows_section_then_the_supervisor_export() {
        let d = app();
        let path = d.path().to_str().unwrap().to_string();
        let env = env_of(&[
            ("IOT2MQTT_PATH", &path),
            ("INSTANCE_NAME", "i"),
            ("IOT2MQTT_SV_BRIDGE_SOCKET", "/tmp/x/bridge.sock"),
        ]);
        let s = Settings::resolve(&BridgeSection::default(), &env).unwrap();
        assert_eq!(s.socket, PathBuf::from("/tmp/x/bridge.sock"));
        let section = BridgeSection {
            socket: Some("/tmp/y.sock".into()),
            ..Default::default()
        };
        assert_eq!(
            Settings::resolve(&section, &env).unwrap().socket,
            PathBuf::from("/tmp/y.sock")
        );
        assert_eq!(
            Settings::socket_path(&section),
            PathBuf::from("/tmp/y.sock")
        );
    }

    #[test]
    fn secrets_file_supplies_credentials_and_debug_redacts_them() {
        let d = app();
        let path = d.path().to_str().unwrap().to_string();
        std::fs::write(
            d.path().join("inst1_mqtt"),
            "username=alice\npassword=hunter2-very-secret\n",
        )
        .unwrap();
        let env = env_of(&[
            ("IOT2MQTT_PATH", &path),
            ("INSTANCE_NAME", "inst1"),
            ("IOT2MQTT_SECRETS_DIR", &path),
        ]);
        let s = Settings::resolve(&BridgeSection::default(), &env).unwrap();
        assert_eq!(s.username.as_deref(), Some("alice"));
        assert_eq!(
            s.password.as_ref().map(Secret::expose),
            Some("hunter2-very-secret")
        );
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("redacted"));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let d = app();
        let path = d.path().to_str().unwrap().to_string();
        for (k, v) in [
            ("MQTT_PORT", "eighty"),
            ("MQTT_QOS", "3"),
            ("MQTT_RETAIN", "maybe"),
            ("TZ", "Mars/Olympus"),
        ] {
            let env = env_of(&[("IOT2MQTT_PATH", &path), ("INSTANCE_NAME", "i"), (k, v)]);
            let e = Settings::resolve(&BridgeSection::default(), &env)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(k), "{e}");
        }
        let env = env_of(&[("IOT2MQTT_PATH", &path)]);
        let e = Settings::resolve(&BridgeSection::default(), &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("INSTANCE_NAME is not set"), "{e}");
    }

    #[test]
    fn malformed_instance_file_reports_line_and_column() {
        let d = app();
        let path = d.path().to_str().unwrap().to_string();
        std::fs::write(
            d.path().join("instances/i.json"),
            "{\n  \"devices\": [\n    {\"device_id\": 5}\n  ]\n}\n",
        )
        .unwrap();
        let env = env_of(&[("IOT2MQTT_PATH", &path), ("INSTANCE_NAME", "i")]);
        let e = Settings::resolve(&BridgeSection::default(), &env).unwrap_err();
        match &e {
            SettingsError::InstanceFile { line, .. } => assert_eq!(*line, 3),
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("i.json: line 3, column"), "{e}");
    }

    #[test]
    fn instance_file_devices_and_groups_are_loaded() {
        let d = app();
        let path = d.path().to_str().unwrap().to_string();
        std::fs::write(
            d.path().join("instances/i.json"),
            r#"{"instance_id":"i","connector_type":"demo","devices":[{"device_id":"a","model":"m1"},{"device_id":"b","enabled":false}],"groups":[{"group_id":"g","devices":["a","b"]}],"extra":1}"#,
        )
        .unwrap();
        let env = env_of(&[("IOT2MQTT_PATH", &path), ("INSTANCE_NAME", "i")]);
        let s = Settings::resolve(&BridgeSection::default(), &env).unwrap();
        assert_eq!(s.instance_config.devices.len(), 2);
        assert!(!s.instance_config.devices[1].enabled);
        assert_eq!(s.instance_config.groups[0].devices, ["a", "b"]);
    }

    /// Issue 13.6: the instance file's `mqtt.qos` / `mqtt.retain_state` (what the platform's
    /// connectors read) win over MQTT_QOS / MQTT_RETAIN; an explicit `[bridge]` value wins
    /// over both. Its `ha_discovery_*` keys win over HA_DISCOVERY_*.
    #[test]
    fn instance_file_mqtt_and_discovery_keys_rank_between_bridge_and_environment() {
        let d = app();
        let path = d.path().to_str().unwrap().to_string();
        std::fs::write(
            d.path().join("instances/i.json"),
            r#"{"mqtt":{"qos":0,"retain_state":false},"ha_discovery_enabled":"true","ha_discovery_prefix":"hass"}"#,
        )
        .unwrap();
        let env = env_of(&[
            ("IOT2MQTT_PATH", &path),
            ("INSTANCE_NAME", "i"),
            ("MQTT_QOS", "2"),
            ("MQTT_RETAIN", "true"),
            ("HA_DISCOVERY_ENABLED", "false"),
            ("HA_DISCOVERY_PREFIX", "other"),
        ]);
        let s = Settings::resolve(&BridgeSection::default(), &env).unwrap();
        assert_eq!((s.qos, s.retain), (0, false));
        assert_eq!(s.ha_discovery.as_deref(), Some("hass"));
        let section = BridgeSection {
            qos: Some(1),
            retain: Some(true),
            ..BridgeSection::default()
        };
        let s = Settings::resolve(&section, &env).unwrap();
        assert_eq!((s.qos, s.retain), (1, true));

        // Without the instance file's keys the environment applies.
        std::fs::write(d.path().join("instances/i.json"), "{}").unwrap();
        let s = Settings::resolve(&BridgeSection::default(), &env).unwrap();
        assert_eq!((s.qos, s.retain), (2, true));
        assert_eq!(s.ha_discovery, None);
    }

    #[test]
    fn malformed_dotenv_lines_fail_only_settings_that_need_them() {
        let d = app();
        let path = d.path().to_str().unwrap().to_string();
        let env = env_of(&[("IOT2MQTT_PATH", &path), ("INSTANCE_NAME", "i")]);
        std::fs::write(
            d.path().join(".env"),
            "GOOD=1\nBAD LINE 'unterminated\nMQTT_PASSWORD=pa$s w0rd#1\n",
        )
        .unwrap();
        let s = Settings::resolve(&BridgeSection::default(), &env).unwrap();
        assert_eq!(s.password.as_ref().map(Secret::expose), Some("pa$s w0rd#1"));

        let error_for = |text: &str, env: &dyn Fn(&str) -> Option<String>| {
            std::fs::write(d.path().join(".env"), text).unwrap();
            Settings::resolve(&BridgeSection::default(), env)
                .unwrap_err()
                .to_string()
        };
        let e = error_for("# c\nMQTT_PORT 1883\n", &env);
        assert!(
            e.contains(".env: line 2: expected KEY=value (defining MQTT_PORT)"),
            "{e}"
        );
        // A needed key whose line is malformed is the cause, not "INSTANCE_NAME is not set".
        let e = error_for("INSTANCE_NAME inst\n", &env_of(&[("IOT2MQTT_PATH", &path)]));
        assert!(
            e.contains(".env: line 1: expected KEY=value (defining INSTANCE_NAME)"),
            "{e}"
        );
    }

    #[test]
    fn the_real_environment_hides_a_malformed_dotenv_line() {
        let d = app();
        let path = d.path().to_str().unwrap().to_string();
        std::fs::write(d.path().join(".env"), "MQTT_PASSWORD secret\n").unwrap();
        let env = env_of(&[
            ("IOT2MQTT_PATH", &path),
            ("INSTANCE_NAME", "i"),
            ("MQTT_PASSWORD", "from-env"),
        ]);
        let s = Settings::resolve(&BridgeSection::default(), &env).unwrap();
        assert_eq!(s.password.as_ref().map(Secret::expose), Some("from-env"));
    }

    #[test]
    fn tls_is_implied_by_port_8883_and_needs_a_readable_ca() {
        let d = app();
        let path = d.path().to_str().unwrap().to_string();
        let env = env_of(&[
            ("IOT2MQTT_PATH", &path),
            ("INSTANCE_NAME", "i"),
            ("MQTT_PORT", "8883"),
        ]);
        let s = Settings::resolve(&BridgeSection::default(), &env).unwrap();
        assert!(s.tls.is_some());
        let section = BridgeSection {
            ca_file: Some(d.path().join("missing.pem")),
            ..Default::default()
        };
        let e = Settings::resolve(&section, &env).unwrap_err().to_string();
        assert!(e.starts_with("tls: ") && e.contains("missing.pem"), "{e}");
    }
}
