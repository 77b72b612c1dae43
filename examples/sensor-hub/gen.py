"""One-shot configuration generator of the sensor hub (program `gen`).

Reads the platform's instance file, checks it, and writes the hub's runtime configuration
`$HUB_RUN_DIR/hub.json`: which program handles which device, the automation rules, and the topic
prefix of the instance. Every other program of the hub starts only after this one has exited 0
(`depends_on = { gen = "completed" }`), so none of them ever sees a missing or half-written file.

Exit codes: 0 written; 2 the instance file is missing or invalid (the supervisor then stops the
container with code 2, because a connector without a valid configuration must not run).
"""

import json
import os
import sys

KINDS = {"sensor": "radio", "fan": "actuators", "hub": "coordinator"}


def fail(message):
    print("gen: error: %s" % message, file=sys.stderr)
    sys.exit(2)


def dotenv(path):
    """`KEY=value` lines of the platform's .env (comments and blank lines skipped)."""
    values = {}
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#") and "=" in line:
                    key, value = line.split("=", 1)
                    values[key.strip()] = value.strip().strip('"').strip("'")
    except FileNotFoundError:
        pass
    return values


def main():
    base = os.environ.get("IOT2MQTT_PATH") or "/app"
    instance = os.environ.get("INSTANCE_NAME")
    if not instance:
        fail("INSTANCE_NAME is not set")
    # The same precedence as the bridge: environment, then $IOT2MQTT_PATH/.env, then default.
    env_file = dotenv(os.path.join(base, ".env"))
    base_topic = (os.environ.get("MQTT_BASE_TOPIC") or env_file.get("MQTT_BASE_TOPIC")
                  or "IoT2mqtt").rstrip("/")

    path = os.path.join(base, "instances", instance + ".json")
    try:
        with open(path) as f:
            config = json.load(f)
    except FileNotFoundError:
        fail("%s: no such file" % path)
    except ValueError as e:
        fail("%s: %s" % (path, e))

    handlers = {name: [] for name in KINDS.values()}
    seen = set()
    rules = []
    hub_limit = 70
    for i, dev in enumerate(config.get("devices", [])):
        device_id = dev.get("device_id")
        if not isinstance(device_id, str) or not device_id:
            fail("%s: devices[%d] has no device_id" % (path, i))
        if device_id in seen:
            fail("%s: device %r is listed twice" % (path, device_id))
        seen.add(device_id)
        kind = dev.get("kind")
        if kind not in KINDS:
            fail("%s: device %r: unknown kind %r (expected one of %s)"
                 % (path, device_id, kind, ", ".join(sorted(KINDS))))
        if not dev.get("enabled", True):
            print("gen: %s is disabled, nobody will handle it" % device_id)
            continue
        handlers[KINDS[kind]].append(device_id)
        if kind == "sensor" and dev.get("ventilated_by"):
            rules.append({"sensor": device_id, "fan": dev["ventilated_by"]})
        if kind == "hub":
            hub_limit = dev.get("humidity_limit", 70)

    for rule in rules:
        if rule["fan"] not in handlers["actuators"]:
            fail("%s: %s is ventilated by %r, which is not an enabled fan"
                 % (path, rule["sensor"], rule["fan"]))

    hub = {
        "instance": instance,
        "topic_prefix": "%s/v1/instances/%s" % (base_topic, instance),
        "handlers": handlers,
        "sensors": {d["device_id"]: d.get("measures", []) for d in config.get("devices", [])
                    if d.get("kind") == "sensor" and d.get("enabled", True)},
        "rules": rules,
        "humidity_limit": hub_limit,
    }
    run_dir = os.environ.get("HUB_RUN_DIR") or "/run/sensor-hub"
    os.makedirs(run_dir, exist_ok=True)
    target = os.path.join(run_dir, "hub.json")
    # Written aside and renamed: a reader sees the old file or the new one, never half of one.
    tmp = target + ".tmp"
    with open(tmp, "w") as f:
        json.dump(hub, f, indent=2, sort_keys=True)
    os.replace(tmp, target)
    print("gen: wrote %s: %s" % (target, ", ".join(
        "%s=%d devices" % (k, len(v)) for k, v in sorted(handlers.items()))))


main()
