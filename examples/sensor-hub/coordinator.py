"""The sensor hub's coordinator (program `coordinator`): the ventilation automation.

It owns the virtual device `hub` (`{"mode": "auto"|"manual", "humidity_limit": N}`) and watches
every device state of the instance through a raw subscription on the bridge. When a humidity
sensor with a rule (`ventilated_by` in the instance file) reads above the limit in `auto` mode, it
switches that fan on by publishing an ordinary IoT2MQTT command, the same message the web UI
sends; below the limit minus 5 points it switches the fan off again, if it switched it on.

It starts after `radio` and `actuators` are READY (`depends_on`), and reports READY itself over
the bridge once its subscription is in place.
"""

import json
import os
import sys

from iot2mqtt_sv import Client

with open(os.path.join(os.environ.get("HUB_RUN_DIR") or "/run/sensor-hub", "hub.json")) as f:
    hub = json.load(f)
prefix = hub["topic_prefix"]
rules = {r["sensor"]: r["fan"] for r in hub["rules"]}
settings = {"mode": "auto", "humidity_limit": hub["humidity_limit"], "online": True}
fans_on = {}          # fan -> last reported "on"
switched_by_us = set()


def log(message):
    print("coordinator: %s" % message, file=sys.stderr, flush=True)


def command_fan(fan, on):
    payload = {"values": {"on": on, "speed": 3 if on else 0}}
    client.publish("%s/devices/%s/cmd" % (prefix, fan), payload, qos=1)
    log("%s -> %s (humidity rule)" % (fan, "on" if on else "off"))


def on_message(msg):
    parts = msg["topic"][len(prefix) + 1:].split("/")
    if len(parts) != 3 or parts[0] != "devices" or parts[2] != "state":
        return
    device_id = parts[1]
    try:
        state = json.loads(msg["payload"]).get("state", {})
    except (ValueError, AttributeError):
        return
    if "on" in state:
        fans_on[device_id] = state["on"]
    fan = rules.get(device_id)
    humidity = state.get("humidity")
    if fan is None or not isinstance(humidity, (int, float)) or settings["mode"] != "auto":
        return
    if humidity > settings["humidity_limit"] and not fans_on.get(fan):
        switched_by_us.add(fan)
        fans_on[fan] = True
        command_fan(fan, True)
    elif humidity < settings["humidity_limit"] - 5 and fan in switched_by_us:
        switched_by_us.discard(fan)
        fans_on[fan] = False
        command_fan(fan, False)


def on_command(cmd):
    values = cmd["values"]
    for key, value in values.items():
        if key == "mode" and value in ("auto", "manual"):
            continue
        if key == "humidity_limit" and isinstance(value, int) and 0 <= value <= 100:
            continue
        raise ValueError("hub: unsupported value %s=%r (mode: auto|manual, humidity_limit: 0-100)"
                         % (key, value))
    settings.update(values)
    client.state("hub", settings)
    return dict(settings)


client = Client(devices=hub["handlers"]["coordinator"], on_command=on_command,
                on_message=on_message, on_get=lambda _msg: client.state("hub", settings))
client.connect()
client.subscribe("%s/devices/+/state" % prefix)
client.state("hub", settings)
client.ready()
log("watching %d rule(s): %s" % (len(rules), ", ".join("%s->%s" % r for r in rules.items())))
client.run_forever()
