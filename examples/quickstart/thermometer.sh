#!/bin/sh
# The quickstart's shell program: a read-only temperature sensor.
#
# No MQTT client and no socket code: `iot2mqtt-sv publish` sends one message to the bridge per
# call. The first state goes out before `ready`, so the instance is `online` only once every
# program has reported. A sensor takes no commands; one sent to it is answered by the bridge with
# a `no_handler` error on .../devices/thermometer/cmd/response.
set -eu

DEVICE=thermometer
INTERVAL=${SENSOR_INTERVAL:-10}

reading() {
    awk 'BEGIN { srand(); printf "%.1f", 19.5 + rand() * 3 }'
}

iot2mqtt-sv publish state "$DEVICE" "{\"temperature\":$(reading),\"unit\":\"C\",\"online\":true}" >/dev/null
iot2mqtt-sv publish ready >/dev/null
echo "thermometer: ready, reporting every ${INTERVAL}s" >&2

while :; do
    # The sampling period of the sensor, not a wait for another program.
    sleep "$INTERVAL"
    iot2mqtt-sv publish state "$DEVICE" "{\"temperature\":$(reading)}" >/dev/null \
        || echo "thermometer: bridge unavailable, reading dropped" >&2
done
