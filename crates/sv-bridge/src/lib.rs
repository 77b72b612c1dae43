//! The IoT2MQTT MQTT bridge.
