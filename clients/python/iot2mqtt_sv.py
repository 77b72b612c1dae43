"""Client for the iot2mqtt-sv bridge socket (standard library only).

Connects to ``$IOT2MQTT_SV_BRIDGE_SOCKET`` (default ``/run/iot2mqtt-sv/bridge.sock``), speaks the
newline-delimited JSON protocol of ``docs/protocol.md``, reconnects with backoff when the bridge
restarts (re-sending ``hello`` and subscriptions), and calls your handlers for ``cmd``, ``get``,
``meta_request`` and ``message``.

    from iot2mqtt_sv import Client

    def on_command(cmd):                 # {"device_id", "cmd_id", "values", "timeout", "timestamp"}
        set_device(cmd["device_id"], cmd["values"])
        return {"applied": cmd["values"]}     # -> cmd_result success; raise -> cmd_result error

    client = Client(devices=["lamp1"], on_command=on_command)
    client.connect()
    client.state("lamp1", {"on": True, "online": True})
    client.ready()
    client.run_forever()                 # or client.start() for a background thread

Sending methods do not wait for the reply; a refused request is logged by ``on_error`` (default:
print to stderr). Methods are thread-safe.
"""

import json
import os
import socket
import sys
import threading
import time

DEFAULT_SOCKET = "/run/iot2mqtt-sv/bridge.sock"


class Client:
    def __init__(self, path=None, devices=None, meta=False, on_command=None, on_get=None,
                 on_meta_request=None, on_message=None, on_error=None):
        self.path = path or os.environ.get("IOT2MQTT_SV_BRIDGE_SOCKET", DEFAULT_SOCKET)
        self.devices = devices
        self.meta = meta
        self.on_command = on_command
        self.on_get = on_get
        self.on_meta_request = on_meta_request
        self.on_message = on_message
        self.on_error = on_error or (lambda reply: print("iot2mqtt_sv: %s" % reply, file=sys.stderr))
        self._sock = None
        self._lock = threading.Lock()
        self._subs = []
        self._next_id = 0
        self._closed = False

    # -- connection ---------------------------------------------------------------------------

    def connect(self, timeout=None):
        """Connects (retrying with backoff until ``timeout`` seconds, forever when None)."""
        delay = 0.1
        deadline = None if timeout is None else time.monotonic() + timeout
        hello = {"op": "hello", "meta": self.meta}
        if self.devices is not None:
            hello["devices"] = list(self.devices)
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.path)
                with self._lock:
                    self._sock = s
                    self._reader = s.makefile("rb")
                self._send(hello)
                for topic in self._subs:
                    self._send({"op": "subscribe", "topic": topic})
                return
            except OSError:
                # Refused while the bridge is away; or accepted and then reset: a bridge killed
                # just as we connected leaves us in its listener's queue, which the kernel
                # resets when that listener closes. Either way, try again.
                with self._lock:
                    if self._sock is s:
                        self._sock = self._reader = None
                s.close()
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def close(self):
        self._closed = True
        with self._lock:
            if self._sock is not None:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self._sock.close()
                self._sock = None

    def _send(self, msg):
        with self._lock:
            self._next_id += 1
            msg = dict(msg, id=self._next_id)
            data = (json.dumps(msg, separators=(",", ":")) + "\n").encode()
            if self._sock is None:
                raise ConnectionError("not connected to the bridge")
            self._sock.sendall(data)
            return self._next_id

    def _send_retrying(self, msg):
        try:
            return self._send(msg)
        except OSError:
            if self._closed:
                raise
            self.connect()
            return self._send(msg)

    # -- program -> bridge --------------------------------------------------------------------

    def state(self, device_id, state, replace=False):
        return self._send_retrying({"op": "state", "device_id": device_id, "state": state,
                                    "replace": replace})

    def event(self, device_id, event, data=None):
        return self._send_retrying({"op": "event", "device_id": device_id, "event": event,
                                    "data": data})

    def error(self, device_id, error_code, message, severity="error", retry_info=None):
        msg = {"op": "error", "device_id": device_id, "error_code": error_code,
               "message": message, "severity": severity}
        if retry_info is not None:
            msg["retry_info"] = retry_info
        return self._send_retrying(msg)

    def discovered(self, devices):
        return self._send_retrying({"op": "discovered", "devices": devices})

    def ha_discovery(self, device_id, component, config, entity=None):
        """Adds or replaces a Home Assistant discovery config; config=None removes it."""
        msg = {"op": "ha_discovery", "device_id": device_id, "component": component,
               "config": config}
        if entity is not None:
            msg["entity"] = entity
        return self._send_retrying(msg)

    def telemetry(self, device_id, metrics):
        return self._send_retrying({"op": "telemetry", "device_id": device_id, "metrics": metrics})

    def devices_list(self, devices):
        return self._send_retrying({"op": "devices_list", "devices": devices})

    def cmd_result(self, device_id, cmd_id, status, result=None, error=None):
        msg = {"op": "cmd_result", "device_id": device_id, "cmd_id": cmd_id, "status": status}
        if result is not None:
            msg["result"] = result
        if error is not None:
            msg["error"] = error
        return self._send_retrying(msg)

    def ready(self):
        return self._send_retrying({"op": "ready"})

    def publish(self, topic, payload, qos=None, retain=False):
        msg = {"op": "publish", "topic": topic, "payload": payload, "retain": retain}
        if qos is not None:
            msg["qos"] = qos
        return self._send_retrying(msg)

    def subscribe(self, topic):
        self._subs.append(topic)
        return self._send_retrying({"op": "subscribe", "topic": topic})

    # -- bridge -> program --------------------------------------------------------------------

    def _dispatch(self, msg):
        op = msg.get("op")
        if op == "cmd":
            if self.on_command is None:
                return
            try:
                result = self.on_command(msg)
                self.cmd_result(msg["device_id"], msg["cmd_id"], "success", result=result)
            except Exception as exc:  # the command failed: report it instead of dying
                self.cmd_result(msg["device_id"], msg["cmd_id"], "error", error=str(exc))
        elif op == "get" and self.on_get is not None:
            self.on_get(msg)
        elif op == "meta_request" and self.on_meta_request is not None:
            self.on_meta_request(msg)
        elif op == "message" and self.on_message is not None:
            self.on_message(msg)
        elif op == "error":
            self.on_error(msg)

    def run_forever(self):
        """Reads and dispatches messages, reconnecting when the bridge goes away."""
        while not self._closed:
            reader = self._reader
            try:
                line = reader.readline() if reader is not None else b""
            except OSError:
                # A bridge killed with unread data in its socket resets the connection
                # (ECONNRESET) instead of closing it: the same disconnect as EOF.
                line = b""
            if not line:
                if self._closed:
                    return
                self.connect()
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            self._dispatch(msg)

    def start(self):
        """Runs :meth:`run_forever` in a daemon thread and returns it."""
        t = threading.Thread(target=self.run_forever, daemon=True)
        t.start()
        return t
