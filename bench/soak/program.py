"""A soak-test program: one device, a steady stream of numbered events, and command answers.

Run by the supervisor under ``scripts/soak``:

    program.py DEVICE SENT_LOG RATE

Every event carries ``{"pid", "seq"}``; after the client helper has written it to the bridge
socket, ``"PID SEQ UNIXTIME"`` is appended to SENT_LOG, so the soak driver can tell which messages were
lost (logged but never received) from messages sent just before a kill (received but not
logged). Commands are answered with their values.
"""

import os
import sys
import time

from iot2mqtt_sv import Client


def main():
    device, sent_log, rate = sys.argv[1], sys.argv[2], float(sys.argv[3])
    client = Client(devices=[device], on_command=lambda cmd: {"echo": cmd["values"]},
                    on_error=lambda reply: None)
    client.connect(timeout=60)
    client.state(device, {"online": True, "pid": os.getpid()})
    client.start()
    pid = os.getpid()
    period = 1.0 / rate
    seq = 0
    with open(sent_log, "a", buffering=1) as log:
        next_at = time.monotonic()
        while True:
            seq += 1
            client.event(device, "tick", {"pid": pid, "seq": seq})
            log.write("%d %d %.3f\n" % (pid, seq, time.time()))
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))


if __name__ == "__main__":
    main()
