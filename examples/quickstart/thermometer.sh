#!/usr/bin/env bash
# The quickstart's shell program: a temperature sensor that also takes commands.
#
# No MQTT client and no socket code. `iot2mqtt-sv listen thermometer` claims the device and
# runs as a coprocess: every command the bridge routes to it arrives as one JSON line on the
# coprocess's output, and every line we write to its input goes to the bridge (state, results).
# Commands: {"values":{"unit":"F"}} or {"values":{"unit":"C"}} switch the unit; anything else is
# answered with an error on .../devices/thermometer/cmd/response.
set -euo pipefail

DEVICE=thermometer
INTERVAL=${SENSOR_INTERVAL:-10}
UNIT=C

reading() {
    awk -v unit="$UNIT" 'BEGIN { srand(); t = 19.5 + rand() * 3; if (unit == "F") t = t * 9 / 5 + 32; printf "%.1f", t }'
}

coproc BRIDGE { exec iot2mqtt-sv listen "$DEVICE"; }
send() { printf '%s\n' "$1" >&"${BRIDGE[1]}"; }

send "{\"op\":\"state\",\"device_id\":\"$DEVICE\",\"state\":{\"temperature\":$(reading),\"unit\":\"$UNIT\",\"online\":true}}"
send '{"op":"ready"}'
echo "thermometer: ready, reporting every ${INTERVAL}s" >&2

next=$((SECONDS + INTERVAL))
while :; do
    # Wait for a line from the bridge, but no longer than the next reading is due: the sensor's
    # sampling period, not a wait for another program.
    wait_s=$((next - SECONDS))
    if (( wait_s > 0 )) && read -r -t "$wait_s" line <&"${BRIDGE[0]}"; then
        [[ $line =~ \"op\":\"cmd\" ]] || continue
        [[ $line =~ \"cmd_id\":\"([^\"]*)\" ]] && cmd_id=${BASH_REMATCH[1]} || cmd_id=""
        if [[ $line =~ \"unit\":\"([CF])\" ]]; then
            UNIT=${BASH_REMATCH[1]}
            send "{\"op\":\"cmd_result\",\"device_id\":\"$DEVICE\",\"cmd_id\":\"$cmd_id\",\"status\":\"success\",\"result\":{\"unit\":\"$UNIT\"}}"
            send "{\"op\":\"state\",\"device_id\":\"$DEVICE\",\"state\":{\"temperature\":$(reading),\"unit\":\"$UNIT\"}}"
        else
            send "{\"op\":\"cmd_result\",\"device_id\":\"$DEVICE\",\"cmd_id\":\"$cmd_id\",\"status\":\"error\",\"error\":\"supported: {\\\"unit\\\": \\\"C\\\"|\\\"F\\\"}\"}"
        fi
        continue
    fi
    if (( SECONDS >= next )); then
        send "{\"op\":\"state\",\"device_id\":\"$DEVICE\",\"state\":{\"temperature\":$(reading),\"unit\":\"$UNIT\"}}"
        next=$((SECONDS + INTERVAL))
    fi
done
