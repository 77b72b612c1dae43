"""The quickstart's Python program: a dimmable desk lamp.

It talks to MQTT only through the bridge (clients/python/iot2mqtt_sv.py): it claims the device
`lamp`, reports its state, says `ready` once that state is out (the supervisor then counts it as
READY, and the bridge may publish `online`), and answers commands. A command with an unknown key or
a bad value is refused, and the refusal comes back on `.../devices/lamp/cmd/response`.
"""

import sys

from iot2mqtt_sv import Client

DEVICE = "lamp"
state = {"on": False, "brightness": 60, "online": True}


def check(values):
    for key, value in values.items():
        if key == "on" and isinstance(value, bool):
            continue
        if key == "brightness" and isinstance(value, int) and not isinstance(value, bool) \
                and 0 <= value <= 100:
            continue
        raise ValueError("lamp: unsupported value %s=%r (on: bool, brightness: 0-100)"
                         % (key, value))


def on_command(cmd):
    check(cmd["values"])
    state.update(cmd["values"])
    client.state(DEVICE, state)
    print("lamp: applied %s" % cmd["values"], flush=True)
    return dict(state)


def on_get(_msg):
    client.state(DEVICE, state)


client = Client(devices=[DEVICE], on_command=on_command, on_get=on_get)
client.connect()
client.state(DEVICE, state)
client.ready()
print("lamp: ready, waiting for commands", file=sys.stderr, flush=True)
client.run_forever()
