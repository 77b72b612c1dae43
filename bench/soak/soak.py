"""Soak test: the real supervisor, bridge and broker under random kills for N minutes.

Started by ``scripts/soak [MINUTES]``. Sets up, in a temporary directory:

- a mosquitto broker on a free loopback port (persistence on, autosave every second);
- ``iot2mqtt-sv run`` with a ``[bridge]`` and ``--programs`` programs (``program.py``), each
  owning one device, publishing numbered events at ``--rate`` per second through the Python
  client helper and answering commands;
- a subscriber (``mosquitto_sub``, persistent session, QoS 1) counting every event and command
  response, and a commander publishing a command with an id every ``--cmd-interval`` seconds.

Meanwhile a random program is SIGKILLed every 1-4 s, and about one kill in seven SIGKILLs the
broker instead (restarted on the same port after 0.5-3 s). The supervisor's and the bridge's
resident memory is sampled every 5 s. At the end the kills stop, the outbox gets time to drain,
and the figures are printed and written into the ``## Soak`` section of docs/reliability.md.

Bounds checked (exit 1 when broken):
- memory flat: from the first sample after a quarter of the run to the end, the supervisor's
  VmRSS grows by at most 1 MiB and the bridge's by at most 4 MiB;
- nothing lost within bounds: events that a program logged as sent but nobody received are
  only possible for messages the broker held in memory when it was SIGKILLed (it saves once a
  second), so lost events <= broker kills x events per second; commands without any response
  likewise <= broker kills x commands per second (plus one).
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BASE = "SOAK"
INSTANCE = "soak"
# Longest wait for the last events after the kills stop: above the bridge's 30 s reconnect cap
# after a broker that dropped it right after accepting it.
DRAIN = 45


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def wait_for(what, timeout, cond, pause=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise SystemExit("soak: timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(pause)


class Broker:
    def __init__(self, workdir, port):
        self.port = port
        self.conf = os.path.join(workdir, "mosquitto.conf")
        data = os.path.join(workdir, "mosquitto-data")
        os.makedirs(data, exist_ok=True)
        with open(self.conf, "w") as f:
            f.write("listener %d 127.0.0.1\nallow_anonymous true\n"
                    "persistence true\npersistence_location %s/\nautosave_interval 1\n"
                    "max_queued_messages 100000\n" % (port, data))
            # Started as root, mosquitto drops to user `mosquitto`, which cannot write into
            # our private temporary directory: persistence would silently fail.
            if os.geteuid() == 0:
                f.write("user root\n")
        self.log = open(os.path.join(workdir, "mosquitto.log"), "ab")
        self.proc = None
        self.kills = 0
        self.kill_times = []

    def start(self):
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", self.conf], stdout=self.log, stderr=self.log)

        def listening():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False
        wait_for("mosquitto to listen", 20, listening)

    def kill(self):
        self.kills += 1
        self.kill_times.append(time.time())
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()


class Supervisor:
    def __init__(self, exe, config, workdir, socket_path):
        self.socket = socket_path
        self.out = open(os.path.join(workdir, "sv.log"), "ab")
        self.proc = subprocess.Popen([exe, "run", "-c", config], stdout=self.out,
                                     stderr=self.out, stdin=subprocess.DEVNULL)

    def request(self, req):
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(self.socket)
            s.sendall((json.dumps(req) + "\n").encode())
            line = s.makefile("rb").readline()
            s.close()
            return json.loads(line)
        except (OSError, ValueError):
            return None

    def programs(self):
        r = self.request({"op": "status"})
        if not r or not r.get("ok"):
            return {}
        return {p["name"]: p for p in r["status"]["programs"]}


class Subscriber:
    """mosquitto_sub in a persistent session, restarted whenever it exits."""

    def __init__(self, port, topics):
        self.port = port
        self.topics = topics
        self.lock = threading.Lock()
        self.events = {}          # (device, pid, seq) -> times received
        self.responses = {}       # cmd id -> status
        self.last_rx = time.monotonic()
        self.stopping = False
        self.proc = None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stopping:
            args = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(self.port), "-q", "1", "-c",
                    "-i", "soak-subscriber", "-k", "5", "-v"]
            for t in self.topics:
                args += ["-t", t]
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            for raw in self.proc.stdout:
                self.handle(raw.decode(errors="replace").rstrip("\n"))
            self.proc.wait()
            time.sleep(0.2)

    def handle(self, line):
        topic, _, payload = line.partition(" ")
        try:
            msg = json.loads(payload)
        except ValueError:
            return
        parts = topic.split("/")
        with self.lock:
            self.last_rx = time.monotonic()
            if topic.endswith("/events") and msg.get("event") == "tick":
                d = msg.get("data") or {}
                key = (parts[-2], d.get("pid"), d.get("seq"))
                self.events[key] = self.events.get(key, 0) + 1
            elif topic.endswith("/cmd/response"):
                self.responses.setdefault(msg.get("cmd_id"), msg.get("status"))

    def stop(self):
        self.stopping = True
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()


def replace_section(path, heading, body):
    """Replaces the `## heading` section of a Markdown file (or appends it), leaving the rest."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = "# Reliability\n"
    section = "## %s\n\n%s\n" % (heading, body.strip("\n"))
    pattern = re.compile(r"^## %s\n.*?(?=^## |\Z)" % re.escape(heading), re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section + "\n", text, count=1)
        text = text.rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(path, "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("minutes", nargs="?", type=float, default=5.0)
    ap.add_argument("--bin", required=True, help="the iot2mqtt-sv binary")
    ap.add_argument("--programs", type=int, default=4)
    ap.add_argument("--rate", type=float, default=20.0, help="events per second per program")
    ap.add_argument("--cmd-interval", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--docs", default=os.path.join(ROOT, "docs", "reliability.md"))
    ap.add_argument("--no-docs", action="store_true", help="print the figures only")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)

    work = tempfile.mkdtemp(prefix="iot2mqtt-sv-soak.")
    port = free_port()
    broker = Broker(work, port)
    broker.start()

    app = os.path.join(work, "app")
    os.makedirs(os.path.join(app, "instances"))
    devices = ["d%d" % i for i in range(args.programs)]
    with open(os.path.join(app, "instances", INSTANCE + ".json"), "w") as f:
        json.dump({"instance_id": INSTANCE, "connector_type": "soak", "friendly_name": "Soak",
                   "devices": [{"device_id": d, "model": "soak", "enabled": True}
                               for d in devices]}, f)
    run = os.path.join(work, "run")
    control = os.path.join(run, "control.sock")
    config = os.path.join(work, "iot2mqtt-sv.toml")
    lines = [
        "[supervisor]",
        'control_socket = "%s"' % control,
        "",
        "[bridge]",
        'socket = "%s"' % os.path.join(run, "bridge.sock"),
        'host = "127.0.0.1"',
        "port = %d" % port,
        'instance = "%s"' % INSTANCE,
        'base_topic = "%s"' % BASE,
        'iot2mqtt_path = "%s"' % app,
        "qos = 1",
        "keepalive = 5",
        "",
    ]
    for d in devices:
        lines += [
            "[program.p%s]" % d,
            "command = %s" % json.dumps([sys.executable, "-u", os.path.join(HERE, "program.py"),
                                         d, os.path.join(work, "sent-%s.log" % d),
                                         str(args.rate)]),
            "startsecs = 0",
            "autorestart = true",
            'backoff = { initial = "100ms", max = "2s" }',
            "environment = { PYTHONPATH = %s }" % json.dumps(os.path.join(ROOT, "clients",
                                                                          "python")),
            "",
        ]
    with open(config, "w") as f:
        f.write("\n".join(lines))

    sv = Supervisor(args.bin, config, work, control)
    names = ["p" + d for d in devices]
    wait_for("every program RUNNING", 60, lambda: all(
        sv.programs().get(n, {}).get("state") == "RUNNING" for n in names + ["bridge"]))

    root = "%s/v1/instances/%s" % (BASE, INSTANCE)
    sub = Subscriber(port, [root + "/devices/+/events", root + "/devices/+/cmd/response"])
    wait_for("the subscriber", 20, lambda: sub.proc is not None)
    time.sleep(1)  # the subscription must exist before counting starts (mosquitto_sub has no ack)

    stop = threading.Event()
    stats = {"program_kills": 0, "cmd_published": {}, "cmd_unpublished": 0}
    samples = []
    t0 = time.monotonic()
    duration = args.minutes * 60

    def chaos():
        while not stop.wait(rng.uniform(1, 4)):
            if rng.random() < 1 / 7:
                broker.kill()
                if stop.wait(rng.uniform(0.5, 3)):
                    broker.start()
                    return
                broker.start()
            else:
                p = sv.programs().get(rng.choice(names), {})
                if p.get("pid"):
                    try:
                        os.kill(p["pid"], signal.SIGKILL)
                        stats["program_kills"] += 1
                    except ProcessLookupError:
                        pass

    def commander():
        n = 0
        while not stop.wait(args.cmd_interval):
            n += 1
            d = rng.choice(devices)
            cid = "c-%d" % n
            payload = json.dumps({"id": cid, "values": {"n": n}, "timeout": 3000})
            r = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1",
                                "-t", "%s/devices/%s/cmd" % (root, d), "-m", payload],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if r.returncode == 0:
                stats["cmd_published"][cid] = d
            else:
                stats["cmd_unpublished"] += 1

    def sampler():
        while True:
            progs = sv.programs()
            bridge_pid = progs.get("bridge", {}).get("pid")
            samples.append((time.monotonic() - t0, rss_kib(sv.proc.pid),
                            rss_kib(bridge_pid) if bridge_pid else None))
            if stop.wait(5):
                return

    threads = [threading.Thread(target=f, daemon=True) for f in (chaos, commander, sampler)]
    for t in threads:
        t.start()
    print("soak: running %.1f min in %s (seed %d)" % (args.minutes, work, seed), flush=True)
    while time.monotonic() - t0 < duration:
        time.sleep(min(10, max(0.1, duration - (time.monotonic() - t0))))
        with sub.lock:
            got = len(sub.events)
        print("soak: %4.0fs events received %d, program kills %d, broker kills %d"
              % (time.monotonic() - t0, got, stats["program_kills"], broker.kills), flush=True)
    stop.set()
    for t in threads:
        t.join()
    # The broker is up again. Let every program come back, then stop them so "sent" is final.
    wait_for("every program RUNNING again", 90, lambda: all(
        sv.programs().get(n, {}).get("state") == "RUNNING" for n in names + ["bridge"]))
    sv.request({"op": "stop", "programs": names})
    # Drain: everything still in the bridge's outbox (it may be waiting out its reconnect
    # backoff) gets up to DRAIN seconds to arrive; what has not arrived by then is lost.
    def load_sent():
        sent, sent_at = set(), {}
        for d in devices:
            try:
                with open(os.path.join(work, "sent-%s.log" % d)) as f:
                    for line in f:
                        f3 = line.split()
                        if len(f3) == 3:
                            key = (d, int(f3[0]), int(f3[1]))
                            sent.add(key)
                            sent_at[key] = float(f3[2])
            except FileNotFoundError:
                pass
        return sent, sent_at

    t_drain = time.monotonic()
    while True:
        sent, sent_at = load_sent()
        with sub.lock:
            missing = len(sent - set(sub.events))
        if missing == 0 or time.monotonic() - t_drain > DRAIN:
            break
        time.sleep(0.5)
    drain_s = time.monotonic() - t_drain
    elapsed = time.monotonic() - t0
    progs = sv.programs()
    samples.append((elapsed, rss_kib(sv.proc.pid),
                    rss_kib(progs.get("bridge", {}).get("pid") or 0)))

    with sub.lock:
        received = dict(sub.events)
        responses = dict(sub.responses)
    got = set(received)
    lost = sent - got
    unlogged = got - sent
    dups = sum(n - 1 for n in received.values())
    # Where were the lost events? Near a broker kill (sent up to 2 s before it or while it was
    # down), or the last few of a program incarnation that was killed, or neither.
    last_seq = {}
    for (d, pid, seq) in sent:
        last_seq[(d, pid)] = max(seq, last_seq.get((d, pid), 0))
    near_broker = near_program = other = 0
    for key in lost:
        t = sent_at[key]
        if any(k - 2 <= t <= k + 4 for k in broker.kill_times):
            near_broker += 1
        elif last_seq[key[:2]] - key[2] < 5:
            near_program += 1
        else:
            other += 1
    published = stats["cmd_published"]
    answered_ok = sum(1 for c in published if responses.get(c) == "success")
    answered_err = sum(1 for c in published if responses.get(c) not in (None, "success"))
    unanswered = [c for c in published if c not in responses]
    restarts = {n: progs.get(n, {}).get("restarts", 0) for n in names + ["bridge"]}

    t_term = time.monotonic()
    sv.proc.send_signal(signal.SIGTERM)
    try:
        code = sv.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        sv.proc.kill()
        code = "did not exit within 20 s"
    shutdown_s = time.monotonic() - t_term
    sub.stop()
    broker.stop()

    quarter = [s for s in samples if s[0] >= duration / 4] or samples
    sup_vals = [s[1] for s in quarter if s[1]]
    br_vals = [s[2] for s in quarter if s[2]]
    sup_growth = (max(sup_vals) - sup_vals[0]) if sup_vals else 0
    br_growth = (max(br_vals) - br_vals[0]) if br_vals else 0
    rate_total = args.rate * args.programs
    lost_bound = int(broker.kills * rate_total)
    cmd_bound = int(broker.kills / args.cmd_interval) + 1
    checks = [
        ("supervisor VmRSS growth <= 1 MiB", sup_growth <= 1024),
        ("bridge VmRSS growth <= 4 MiB", br_growth <= 4096),
        ("lost events <= %d (broker kills x events/s)" % lost_bound, len(lost) <= lost_bound),
        ("unanswered commands <= %d" % cmd_bound, len(unanswered) <= cmd_bound),
        ("run exits 0 after SIGTERM", code == 0),
    ]

    mem_rows = []
    step = max(1, len(samples) // 12)
    picked = samples[::step]
    if picked[-1] is not samples[-1]:
        picked.append(samples[-1])
    for t, s_rss, b_rss in picked:
        mem_rows.append("| %d | %s | %s |" % (t, s_rss if s_rss else "—",
                                              b_rss if b_rss else "—"))
    body = """\
`scripts/soak %(minutes)g` on %(date)s (seed %(seed)d; release build): %(programs)d programs
publishing %(rate)g events/s each through the bridge (Python client helper) and answering a
command every %(cmdi)g s, while a random program was SIGKILLed every 1-4 s and the broker
(mosquitto, persistence with a 1 s autosave) was SIGKILLed and restarted now and then.

| figure | value |
| --- | --- |
| run time | %(elapsed).0f s |
| program kills / broker kills | %(pkills)d / %(bkills)d |
| restarts (per program) | %(restarts)s |
| events sent (logged by the programs) | %(sent)d |
| events received (distinct) | %(got)d |
| events lost (sent, never received) | %(lost)d (bound: %(lost_bound)d): %(lb)d around a broker kill, %(lp)d at the end of a killed program, %(lo)d other |
| events received but not logged (killed between send and log) | %(unlogged)d |
| duplicate deliveries (QoS 1 redelivery) | %(dups)d |
| commands published / success / error responses | %(cpub)d / %(cok)d / %(cerr)d |
| commands without any response | %(cmiss)d (bound: %(cmd_bound)d) |
| commands not published (broker down) | %(cunpub)d |
| supervisor VmRSS growth after the first quarter | %(sup_growth)d KiB |
| bridge VmRSS growth after the first quarter | %(br_growth)d KiB |
| time for the last events to arrive after the kills stopped | %(drain).1f s |
| SIGTERM to exit at the end | %(shutdown).2f s, exit code %(code)s |

Resident memory over time (KiB):

| t (s) | supervisor | bridge |
| --- | --- | --- |
%(mem)s

No event is expected to be lost (the "events lost" row says whether one was): what a program
handed to the bridge reaches the subscriber across program kills (the bridge reads what is
already in the socket) and broker kills (the outbox resends what was not acknowledged;
duplicates are QoS 1 redeliveries). Commands are different by design: the bridge's MQTT session
is clean (an old command must not run after a reconnect), so a command published while the
bridge is reconnecting to a restarted broker reaches nobody and gets no response; the caller's
timeout covers it. A command for a program that is being restarted gets an `error` response.

Checks: %(checks)s.
""" % {
        "minutes": args.minutes, "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "seed": seed, "programs": args.programs, "rate": args.rate, "cmdi": args.cmd_interval,
        "elapsed": elapsed, "pkills": stats["program_kills"], "bkills": broker.kills,
        "restarts": ", ".join("%s %d" % kv for kv in restarts.items()),
        "sent": len(sent), "got": len(got & sent), "lost": len(lost), "lost_bound": lost_bound,
        "lb": near_broker, "lp": near_program, "lo": other,
        "unlogged": len(unlogged), "dups": dups, "cpub": len(published), "cok": answered_ok,
        "cerr": answered_err, "cmiss": len(unanswered), "cmd_bound": cmd_bound,
        "cunpub": stats["cmd_unpublished"], "sup_growth": sup_growth, "br_growth": br_growth,
        "shutdown": shutdown_s, "drain": drain_s, "code": code, "mem": "\n".join(mem_rows),
        "checks": "; ".join("%s: %s" % (n, "ok" if ok else "FAILED") for n, ok in checks),
    }
    print()
    print(body)
    if not args.no_docs:
        replace_section(args.docs, "Soak", body)
        print("soak: figures written to %s (## Soak)" % args.docs)
    if args.keep:
        with open(os.path.join(work, "lost.txt"), "w") as f:
            f.write("broker kills at %s\n" % " ".join("%.3f" % k for k in broker.kill_times))
            for key in sorted(lost, key=lambda k: sent_at[k]):
                f.write("%.3f %s %d %d\n" % (sent_at[key], key[0], key[1], key[2]))
        print("soak: work directory kept: %s (lost events in lost.txt)" % work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
