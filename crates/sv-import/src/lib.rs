//! Translates supervisord configs into iot2mqtt-sv TOML.
