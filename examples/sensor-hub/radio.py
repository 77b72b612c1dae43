"""The sensor hub's radio receiver (program `radio`): 433 MHz temperature/humidity sensors.

A stand-in for a process that owns a serial radio dongle: it decodes sensor frames (simulated
here) and publishes each reading as device state through the bridge. It handles exactly the
sensors `gen` assigned to it in `$HUB_RUN_DIR/hub.json`.

Readiness is sd_notify, sent as a plain datagram (no systemd library needed): `READY=1` once the
dongle is open and every sensor has a first reading out, then `WATCHDOG=1` at least every third of
`$WATCHDOG_USEC`, so a decoder stuck in a read is restarted by the supervisor.

Sensors are read-only: a command to one is answered with an error on `cmd/response`.
"""

import json
import os
import random
import socket
import sys
import time

from iot2mqtt_sv import Client


def sd_notify(message):
    """Sends one sd_notify datagram to $NOTIFY_SOCKET (`@` = abstract namespace); no-op without."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), path)


with open(os.path.join(os.environ.get("HUB_RUN_DIR") or "/run/sensor-hub", "hub.json")) as f:
    hub = json.load(f)
sensors = hub["sensors"]
interval = float(os.environ.get("RADIO_INTERVAL") or 5)
watchdog = int(os.environ.get("WATCHDOG_USEC") or 0) / 1e6
tick = min(interval, watchdog / 3) if watchdog else interval


def decode_frame(device_id):
    """One decoded radio frame: plausible indoor values, kept well inside the hub's limits."""
    reading = {"online": True, "rssi": random.randint(-90, -55)}
    if "temperature" in sensors[device_id]:
        reading["temperature"] = round(random.uniform(19.0, 23.0), 1)
    if "humidity" in sensors[device_id]:
        reading["humidity"] = random.randint(40, 60)
    return reading


def on_command(cmd):
    raise ValueError("%s is a read-only sensor" % cmd["device_id"])


client = Client(devices=list(sensors), on_command=on_command)
client.connect()
client.start()
for device_id in sensors:
    client.state(device_id, decode_frame(device_id))
sd_notify("READY=1\nSTATUS=receiving %d sensors" % len(sensors))
print("radio: receiving %s" % ", ".join(sensors), file=sys.stderr, flush=True)

next_reading = time.monotonic() + interval
while True:
    # The radio's own pace (frame period and watchdog period), not a wait for another program.
    time.sleep(max(0.0, min(tick, next_reading - time.monotonic())))
    sd_notify("WATCHDOG=1")
    if time.monotonic() >= next_reading:
        next_reading += interval
        for device_id in sensors:
            client.state(device_id, decode_frame(device_id))
