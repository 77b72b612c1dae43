#!/usr/bin/env python3
"""Side-by-side benchmarks of iot2mqtt-sv against supervisord, s6 and mosquitto's own clients.

Run through `scripts/bench` (which builds the release binary and checks the tools); see
docs/benchmarks.md for the method, the scenarios and the latest numbers.

Invariants of the method:
- Every subject is measured by the same compiled helper programs (bench/helper.c) with the same
  clock (CLOCK_MONOTONIC, stamped by the processes themselves into an O_APPEND "marks" file), so
  how often the harness looks never changes a number, and no subject is timed differently.
- Subjects of a scenario alternate round by round (A B C A B C ...), so drift of the machine
  (other load, thermal, caches) spreads over all of them instead of biasing one.
- Nothing is installed: a missing tool skips its subject with an install hint.
- Only the harness asserts on time; the test suite runs `--smoke` just to keep this file working.

Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- bench:results:begin -->"
END = "<!-- bench:results:end -->"

INSTALL = {
    "supervisord": "apt-get install supervisor   (or: pip install supervisor)",
    "s6-svscan": "apt-get install s6",
    "mosquitto": "apt-get install mosquitto",
    "mosquitto_pub": "apt-get install mosquitto-clients",
    "mosquitto_sub": "apt-get install mosquitto-clients",
    "cc": "apt-get install gcc",
}

NS = 1_000_000_000
MS = 1_000_000


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def which(prog: str) -> str | None:
    return shutil.which(prog) or next(
        (p for p in (f"/usr/sbin/{prog}", f"/sbin/{prog}") if os.access(p, os.X_OK)), None
    )


def now() -> int:
    return time.monotonic_ns()


class BenchError(Exception):
    """A measurement that could not be taken; recorded in its table cell, never fatal."""


# --------------------------------------------------------------------------------------------
# Marks, processes, /proc


@dataclass
class Mark:
    kind: str
    name: str
    a: int  # pid, or a count
    ns: int


class Marks:
    """The O_APPEND file every helper stamps into; read whole on each poll (it stays small)."""

    def __init__(self, path: Path):
        self.path = path

    def all(self) -> list[Mark]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            parts = line.split(" ")
            if len(parts) < 4:
                continue
            # `logresult` carries several numbers in its name field.
            out.append(Mark(parts[0], " ".join(parts[1:-2]), int(parts[-2]), int(parts[-1])))
        return out

    def find(self, kind: str, name: str | None = None) -> list[Mark]:
        return [m for m in self.all() if m.kind == kind and (name is None or m.name == name)]

    def wait(self, what: str, cond, timeout: float):
        """Polls `cond(marks)` until it returns a truthy value. The stamps carry the times, so
        the polling interval only bounds how soon the harness moves on."""
        deadline = time.monotonic() + timeout
        while True:
            v = cond(self.all())
            if v:
                return v
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(0.002)


def proc_children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def descendants(pid: int) -> list[int]:
    kids = proc_children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def evict_page_cache(paths: list[str]) -> None:
    """Drops these files' pages from the page cache (fsync, then POSIX_FADV_DONTNEED), so every
    subject's program text is read the way a started container reads it, by its own page faults.
    Why: a file the linker (or `docker pull`) has just written sits in the page cache as large
    folios, and the first touch of any page of one maps the whole folio: on this machine's
    kernel a 12 MB binary of which 10 functions ran showed 10 MB RSS, and 1.4 MB after this."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def code_kb(pid: int, names: tuple[str, ...] = ("iot2mqtt-sv", "iot2mqtt-sv-bridge")) -> int:
    """Resident kB of the mappings of an iot2mqtt-sv executable in this process (its code and
    read-only data). The one memory figure that means the same under qemu-user, which maps the
    guest binary from its file and reads the code it translates from there: a cross-built
    binary's figure is compared with the native one (docs/benchmarks.md, "Other architectures")."""
    total, counting = 0, False
    try:
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            head = line.split()
            if head and re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", head[0]):
                counting = len(head) >= 6 and Path(head[-1]).name in names
            elif counting and line.startswith("Rss:"):
                total += int(head[1])
    except OSError:
        pass
    return total


def memory_kb(pid: int) -> tuple[int, int, int]:
    """(VmRSS, Pss, RssAnon) in kB. RssAnon is the private heap and stacks: RSS minus the
    file-backed pages (program text, shared libraries) that other processes may share."""
    rss = pss = anon = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("RssAnon:"):
            anon = int(line.split()[1])
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pss = rss
    return rss, pss, anon


def cpu_ns(pid: int) -> int:
    """Nanoseconds on a CPU so far, every thread of the process (scheduler statistics)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def cost(pid: int) -> tuple[int, int]:
    """(context switches over every thread, CPU clock ticks utime+stime of the process)."""
    switches = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                    switches += int(line.split()[1])
        except OSError:
            pass
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return switches, int(fields[11]) + int(fields[12])


def wait_exit(pids: list[int], timeout: float) -> int:
    """Waits until every pid has exited; returns the monotonic time it saw the last one go.
    pidfd readiness is signalled by the kernel at exit, so the time is exact, not polled."""
    fds = []
    for p in pids:
        try:
            fds.append(os.pidfd_open(p))
        except OSError:
            pass  # already gone
    last = now()
    deadline = time.monotonic() + timeout
    try:
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        left = len(fds)
        while left:
            ms = int((deadline - time.monotonic()) * 1000)
            if ms <= 0:
                raise BenchError(f"{left} process(es) still running after {timeout:g}s")
            for fd, _ in poller.poll(ms):
                poller.unregister(fd)
                left -= 1
                last = now()
    finally:
        for fd in fds:
            os.close(fd)
    return last


class Procs:
    """Everything the harness started, killed (whole session) when a run ends."""

    def __init__(self):
        self.items: list[subprocess.Popen] = []
        self.extra_pids: set[int] = set()

    def start(self, argv, **kw) -> subprocess.Popen:
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("start_new_session", True)
        p = subprocess.Popen([str(a) for a in argv], **kw)
        self.items.append(p)
        return p

    def cleanup(self):
        for p in self.items:
            if p.poll() is None:
                for pid in descendants(p.pid):
                    self.extra_pids.add(pid)
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
        for pid in self.extra_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for p in self.items:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.items.clear()
        self.extra_pids.clear()


# --------------------------------------------------------------------------------------------
# Subjects


@dataclass
class Prog:
    name: str
    argv: list[str]
    ignore_term: bool = False
    autorestart: bool = True


@dataclass
class Bridge:
    port: int
    qos: int = 0


class Subject:
    key = ""
    label = ""
    needs: list[str] = []

    def missing(self) -> list[str]:
        return [t for t in self.needs if not which(t)]

    def version(self) -> str:
        return "?"

    def prepare(self, d: Path, progs: list[Prog], ctx: "Ctx", bridge: Bridge | None = None) -> list[str]:
        raise NotImplementedError

    def env(self, d: Path) -> dict:
        return {}

    def supervisor_pids(self, root: int) -> list[int]:
        return [root]

    def bridge_pid(self, root: int) -> int | None:
        return None

    def respawn_delay_ms(self) -> float:
        return 0.0

    def executables(self) -> list[str]:
        """The files whose code the memory scenario measures (see `evict_page_cache`)."""
        return [p for p in map(which, self.needs) if p]


class IotSv(Subject):
    key = "iot2mqtt-sv"
    label = "iot2mqtt-sv"

    def __init__(self, binary: str):
        self.binary = binary

    def missing(self):
        return [] if os.access(self.binary, os.X_OK) else [self.binary]

    def executables(self):
        return [self.binary, str(Path(self.binary).with_name("iot2mqtt-sv-bridge"))]

    def version(self):
        try:
            out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, timeout=10)
            return out.stdout.strip() or out.stderr.strip().splitlines()[0]
        except Exception as e:  # noqa: BLE001 - any failure just means "unknown"
            return f"? ({e})"

    def prepare(self, d, progs, ctx, bridge=None):
        def q(s: str) -> str:
            return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

        lines = [
            "[supervisor]",
            f"control_socket = {q(str(d / 'control.sock'))}",
            'shutdown_timeout = "8s"',
            "",
        ]
        if bridge:
            lines += [
                "[bridge]",
                'host = "127.0.0.1"',
                f"port = {bridge.port}",
                'instance = "bench"',
                'base_topic = "bench"',
                f"socket = {q(str(d / 'bridge.sock'))}",
                f"qos = {bridge.qos}",
                "retain = false",
                "property_topics = false",
                "",
            ]
        for p in progs:
            lines += [
                f"[program.{p.name}]",
                "command = [" + ", ".join(q(a) for a in p.argv) + "]",
                "startsecs = 0",
                f"autorestart = {'true' if p.autorestart else 'false'}",
                'stopwaitsecs = "1s"',
                "critical = false",
                "",
                f"[program.{p.name}.backoff]",
                'initial = "1ms"',
                "jitter = 0.0",
                'reset_after = "1s"',
                "",
            ]
        (d / "iot2mqtt-sv.toml").write_text("\n".join(lines))
        return [self.binary, "run", "-c", str(d / "iot2mqtt-sv.toml")]

    def env(self, d):
        return {"IOT2MQTT_SV_SOCKET": str(d / "control.sock"), "IOT2MQTT_PATH": str(d)}

    def bridge_pid(self, root):
        for pid in descendants(root):
            argv = cmdline(pid)
            # `iot2mqtt-sv-bridge -c ...` (under qemu-user, after the emulator's own name), or,
            # from an older build, `iot2mqtt-sv bridge -c ...`.
            if any(Path(a).name == "iot2mqtt-sv-bridge" for a in argv[:2]) or argv[1:2] == ["bridge"]:
                return pid
        return None

    def respawn_delay_ms(self):
        return 1.0


class Supervisord(Subject):
    key = "supervisord"
    label = "supervisord"
    needs = ["supervisord"]

    def version(self):
        try:
            return "supervisord " + subprocess.run(
                ["supervisord", "--version"], capture_output=True, text=True, timeout=20
            ).stdout.strip()
        except Exception as e:  # noqa: BLE001
            return f"supervisord ? ({e})"

    def prepare(self, d, progs, ctx, bridge=None):
        # A typical container setup: children to the container's stdout (maxbytes 0 avoids the
        # "Illegal seek" rotation failure), plus the control socket supervisorctl needs.
        conf = [
            "[unix_http_server]",
            f"file={d}/supervisor.sock",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "[supervisorctl]",
            f"serverurl=unix://{d}/supervisor.sock",
            "[supervisord]",
            "nodaemon=true",
            "user=root",
            f"logfile={d}/supervisord.log",
            f"pidfile={d}/supervisord.pid",
            f"childlogdir={d}",
            "",
        ]
        for p in progs:
            conf += [
                f"[program:{p.name}]",
                "command=" + " ".join(p.argv),
                "startsecs=0",
                f"autorestart={'true' if p.autorestart else 'false'}",
                "stopwaitsecs=1",
                "redirect_stderr=true",
                "stdout_logfile=/dev/stdout",
                "stdout_logfile_maxbytes=0",
                "",
            ]
        (d / "supervisord.conf").write_text("\n".join(conf))
        return [which("supervisord"), "-n", "-c", str(d / "supervisord.conf")]


class S6(Subject):
    key = "s6"
    label = "s6 (s6-svscan)"
    needs = ["s6-svscan", "s6-supervise"]

    def version(self):
        try:
            out = subprocess.run(
                ["dpkg-query", "-W", "-f=${Version}", "s6"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            return f"s6 {out}" if out else "s6 (version unknown)"
        except Exception:  # noqa: BLE001
            return "s6 (version unknown)"

    def prepare(self, d, progs, ctx, bridge=None):
        scan = d / "scan"
        scan.mkdir()
        for p in progs:
            sd = scan / p.name
            sd.mkdir()
            # s6-supervise runs ./run without arguments: the helper reads its name from the
            # directory, so no shell sits between the supervisor and the measured program.
            if p.argv[1] == "prog":
                (sd / "run").symlink_to(p.argv[0])
                if p.ignore_term:
                    (sd / "ignore-term").touch()
            else:
                (sd / "run").write_text("#!/bin/sh\nexec " + " ".join(p.argv) + "\n")
                (sd / "run").chmod(0o755)
            (sd / "timeout-kill").write_text("1000\n")
            if not p.autorestart:
                (sd / "finish").write_text("#!/bin/sh\nexec s6-svc -O .\n")
                (sd / "finish").chmod(0o755)
        return [which("s6-svscan"), str(scan)]

    def env(self, d):
        return {"BENCH_MARKS": str(d / "marks")}

    def supervisor_pids(self, root):
        return [root] + [p for p in descendants(root) if comm(p) == "s6-supervise"]


# --------------------------------------------------------------------------------------------
# Statistics and results


@dataclass
class Row:
    scenario: str
    metric: str
    subject: str  # subject key
    unit: str
    values: list[float] = field(default_factory=list)
    error: str | None = None
    higher_is_better: bool = False
    note: str = ""

    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "—"
    if v == int(v) and abs(v) < 1e6:
        return f"{int(v):,}"
    if unit == "msg/s":
        return f"{v:,.0f}"
    if unit == "MB/s":
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


class Results:
    def __init__(self):
        self.rows: dict[tuple[str, str, str], Row] = {}
        self.order: list[tuple[str, str, str]] = []
        self.targets: list[tuple[str, str, str, bool | None]] = []  # target, measured, verdict

    def row(self, scenario, metric, subject, unit, higher=False, note="") -> Row:
        k = (scenario, metric, subject)
        if k not in self.rows:
            self.rows[k] = Row(scenario, metric, subject, unit, higher_is_better=higher, note=note)
            self.order.append(k)
        return self.rows[k]

    def add(self, scenario, metric, subject, unit, value, higher=False):
        self.row(scenario, metric, subject, unit, higher).values.append(value)

    def fail(self, scenario, metric, subject, unit, err: str):
        r = self.row(scenario, metric, subject, unit)
        r.error = (r.error + "; " if r.error else "") + err

    def med(self, scenario, metric, subject) -> float | None:
        r = self.rows.get((scenario, metric, subject))
        return r.median() if r else None

    def table(self, labels: dict[str, str]) -> str:
        out = [
            "| Scenario | Metric | Subject | Median | Min–max | Ratio to iot2mqtt-sv | Rounds |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        for k in self.order:
            r = self.rows[k]
            base = self.med(r.scenario, r.metric, "iot2mqtt-sv")
            m = r.median()
            if r.values:
                mm = f"{fmt(min(r.values), r.unit)}–{fmt(max(r.values), r.unit)}"
            else:
                mm = "—"
            ratio = "—"
            if m is not None and base:
                ratio = "1" if r.subject == "iot2mqtt-sv" else f"{m / base:.3g}×"
            med = f"{fmt(m, r.unit)} {r.unit}" if m is not None else "—"
            if r.error:
                med = (med + " " if m is not None else "") + f"(error: {r.error[:120]})"
            out.append(
                f"| {r.scenario} | {r.metric} | {labels.get(r.subject, r.subject)} | {med} | {mm} | {ratio} | {len(r.values)} |"
            )
        return "\n".join(out)

    def target(self, text: str, measured: str, ok: bool | None):
        self.targets.append((text, measured, "met" if ok else ("missed" if ok is False else "not measured")))

    def target_table(self) -> str:
        out = ["| Target | Measured (medians) | Verdict |", "|---|---|---|"]
        for t, m, v in self.targets:
            out.append(f"| {t} | {m} | {v} |")
        return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Context


@dataclass
class Ctx:
    args: argparse.Namespace
    helper: str
    work: Path
    subjects: list[Subject]
    res: Results
    broker_ok: bool
    seq: int = 0
    load_start: str = field(default_factory=lambda: " ".join(Path("/proc/loadavg").read_text().split()[:3]))

    def fresh_dir(self, tag: str) -> Path:
        self.seq += 1
        d = self.work / f"{self.seq:03d}-{tag}"
        d.mkdir()
        return d

    def launch(self, procs: Procs, subj: Subject, d: Path, argv: list[str], **kw) -> subprocess.Popen:
        env = dict(os.environ)
        env.update(subj.env(d))
        env["BENCH_MARKS"] = str(d / "marks")
        kw.setdefault("stdout", open(d / "stdout.log", "wb"))
        kw.setdefault("stderr", open(d / "stderr.log", "wb"))
        return procs.start([self.helper, "exec", d / "marks", *argv], env=env, cwd=d, **kw)

    def prog(self, d: Path, name: str, ignore_term=False) -> Prog:
        argv = [self.helper, "prog", name, str(d / "marks")]
        if ignore_term:
            argv.append("ignore-term")
        return Prog(name, argv, ignore_term)


def latest_starts(ms: list[Mark]) -> dict[str, Mark]:
    out = {}
    for m in ms:
        if m.kind == "start":
            out[m.name] = m
    return out


def tail(path: Path, n=5) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
        return " / ".join(lines[-n:])
    except OSError:
        return ""


def run_rounds(ctx: Ctx, subjects: list, body, rounds: int):
    """A B C A B C …: every subject once per round, in the same order, so slow drift of the
    machine is shared; a failed run is recorded and the others go on."""
    for r in range(rounds):
        for s in subjects:
            procs = Procs()
            try:
                body(s, procs, r)
            except BenchError as e:
                log(f"{getattr(s, 'key', s)} round {r + 1}: {e}")
                on_fail = getattr(body, "fail", None)
                if on_fail:
                    on_fail(s, str(e))
            finally:
                procs.cleanup()


# --------------------------------------------------------------------------------------------
# Scenarios 2, 3, 4: start, respawn, shutdown


def sc_lifecycle(ctx: Ctx):
    a = ctx.args
    names = ["p1", "p2", "p3", "p4"]

    def body(s: Subject, procs: Procs, r: int):
        d = ctx.fresh_dir(f"life-{s.key}")
        marks = Marks(d / "marks")
        argv = s.prepare(d, [ctx.prog(d, n) for n in names], ctx)
        p = ctx.launch(procs, s, d, argv)
        try:
            got = marks.wait(
                "all 4 programs to start", lambda ms: (len(latest_starts(ms)) == 4 and ms) or None, 15
            )
        except BenchError as e:
            raise BenchError(f"{e}; stderr: {tail(d / 'stderr.log')}") from None
        ex = next(m for m in got if m.kind == "exec")
        starts = latest_starts(got)
        ctx.res.add("2 start", "exec → all 4 running", s.key, "ms", (max(m.ns for m in starts.values()) - ex.ns) / MS)

        # Stable for longer than every subject's "reset" window (iot2mqtt-sv reset_after = 1 s,
        # s6's 1 s minimum spacing between starts), so each respawns with its smallest delay.
        time.sleep(a.stable)
        victim = starts["p2"]
        t_kill = now()
        os.kill(victim.a, signal.SIGKILL)
        new = marks.wait(
            "p2 to be respawned",
            lambda ms: next((m for m in ms if m.kind == "start" and m.name == "p2" and m.a != victim.a), None),
            15,
        )
        ctx.res.add("3 respawn", "SIGKILL → running again", s.key, "ms", (new.ns - t_kill) / MS)

        time.sleep(a.settle_after_respawn)
        starts = latest_starts(marks.all())
        watch = [p.pid] + [m.a for m in starts.values()] + [x for x in s.supervisor_pids(p.pid) if x != p.pid]
        t_term = now()
        p.send_signal(signal.SIGTERM)
        end = wait_exit(watch, 15)
        terms = [m for m in marks.find("term") if m.a in {x.a for x in starts.values()}]
        ctx.res.add("4 shutdown", "SIGTERM → exit (4 prompt)", s.key, "ms", (end - t_term) / MS)
        if len(terms) == 4:
            ctx.res.add(
                "4 shutdown", "overhead over slowest program (4 prompt)", s.key, "ms", (end - max(m.ns for m in terms)) / MS
            )
        else:
            ctx.res.fail("4 shutdown", "overhead over slowest program (4 prompt)", s.key, "ms", f"only {len(terms)} programs got SIGTERM")

    def fail(s, err):
        ctx.res.fail("2 start", "exec → all 4 running", s.key, "ms", err)

    body.fail = fail
    run_rounds(ctx, ctx.subjects, body, a.rounds)


def sc_shutdown_stubborn(ctx: Ctx):
    a = ctx.args

    def body(s: Subject, procs: Procs, r: int):
        d = ctx.fresh_dir(f"stub-{s.key}")
        marks = Marks(d / "marks")
        progs = [ctx.prog(d, n) for n in ("p1", "p2", "p3")] + [ctx.prog(d, "p4", ignore_term=True)]
        p = ctx.launch(procs, s, d, s.prepare(d, progs, ctx))
        starts = marks.wait("all 4 programs to start", lambda ms: (len(latest_starts(ms)) == 4 and latest_starts(ms)) or None, 15)
        time.sleep(a.settle_after_respawn)
        watch = [p.pid] + [m.a for m in starts.values()] + [x for x in s.supervisor_pids(p.pid) if x != p.pid]
        t_term = now()
        p.send_signal(signal.SIGTERM)
        end = wait_exit(watch, 20)
        ctx.res.add("4 shutdown", "SIGTERM → exit (1 ignores TERM, stopwait 1 s)", s.key, "ms", (end - t_term) / MS)
        term = [m for m in marks.find("term", "p4") if m.a == starts["p4"].a]
        if term:
            ctx.res.add(
                "4 shutdown", "overhead over TERM + 1 s (1 ignores TERM)", s.key, "ms", (end - term[0].ns - NS) / MS
            )
        else:
            ctx.res.fail("4 shutdown", "overhead over TERM + 1 s (1 ignores TERM)", s.key, "ms", "p4 never got SIGTERM")

    def fail(s, err):
        ctx.res.fail("4 shutdown", "SIGTERM → exit (1 ignores TERM, stopwait 1 s)", s.key, "ms", err)

    body.fail = fail
    run_rounds(ctx, ctx.subjects, body, a.rounds)


# --------------------------------------------------------------------------------------------
# Broker helpers


class Broker:
    def __init__(self, ctx: Ctx, procs: Procs):
        self.port = free_port()
        d = ctx.fresh_dir("broker")
        # Unbounded queues: a QoS 1 subscriber that lags for a moment must not lose messages,
        # or the throughput of a lossy run would be compared with a lossless one.
        (d / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 0\nmax_queued_bytes 0\nmax_inflight_messages 0\n"
        )
        self.proc = procs.start(
            [which("mosquitto"), "-c", d / "mosquitto.conf"], stdout=subprocess.DEVNULL, stderr=open(d / "log", "wb")
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise BenchError(f"mosquitto did not start: {tail(d / 'log')}") from None
                time.sleep(0.01)

    def sub_args(self, topic: str, qos: int, fmt_: str) -> list[str]:
        return [which("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(self.port), "-t", topic, "-q", str(qos), "-F", fmt_]

    def pub_args(self, topic: str, qos: int) -> list[str]:
        return [which("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(self.port), "-t", topic, "-q", str(qos)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STATE_TOPIC = "bench/v1/instances/bench/devices/d1/state"
CMD_TOPIC = "bench/v1/instances/bench/devices/d1/cmd"
STATUS_TOPIC = "bench/v1/instances/bench/status"


def wait_bridge_online(broker: Broker, procs: Procs, d: Path, timeout: float):
    """The bridge publishes its retained status, `offline` then `online` once connected; the
    subscriber may see either first, so wait for an `online` line."""
    out = d / "status.txt"
    sub = procs.start(broker.sub_args(STATUS_TOPIC, 1, "%p"), stdout=open(out, "wb"), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while "online" not in out.read_text(errors="replace").split():
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the bridge did not report online on {STATUS_TOPIC} within {timeout:g}s; stderr: {tail(d / 'stderr.log')}"
                )
            time.sleep(0.01)
    finally:
        sub.kill()
        sub.wait()


# --------------------------------------------------------------------------------------------
# Scenarios 1 and 5: memory and idle cost


def sc_memory_idle(ctx: Ctx):
    """All subjects side by side at once: they are idle, so they do not disturb each other, and
    a 10 s settle plus a 30 s idle window per subject and round would otherwise dominate."""
    a = ctx.args
    for r in range(a.rounds):
        procs = Procs()
        try:
            broker = Broker(ctx, procs) if ctx.broker_ok else None
            runs = []
            order = ctx.subjects[r % len(ctx.subjects) :] + ctx.subjects[: r % len(ctx.subjects)]
            for s in order:
                evict_page_cache(s.executables())
                d = ctx.fresh_dir(f"idle-{s.key}")
                progs = [ctx.prog(d, n) for n in ("p1", "p2", "p3", "p4")]
                bridge = Bridge(broker.port) if (broker and isinstance(s, IotSv)) else None
                try:
                    p = ctx.launch(procs, s, d, s.prepare(d, progs, ctx, bridge))
                    runs.append((s, d, p, bridge, now()))
                except OSError as e:
                    ctx.res.fail("1 memory", "supervisor RSS", s.key, "MB", str(e))
            live = []
            for s, d, p, bridge, t0 in runs:
                try:
                    Marks(d / "marks").wait("all 4 programs to start", lambda ms: len(latest_starts(ms)) == 4, 15)
                    if bridge:
                        wait_bridge_online(broker, procs, d, 15)
                    live.append((s, d, p, bridge, t0))
                except BenchError as e:
                    ctx.res.fail("1 memory", "supervisor RSS", s.key, "MB", str(e))
            settle_until = max([t0 for *_, t0 in live], default=now()) + int(a.mem_settle * NS)
            time.sleep(max(0, (settle_until - now()) / NS))
            before = {}
            for s, d, p, bridge, _ in live:
                sup = s.supervisor_pids(p.pid)
                rss = pss = anon = 0
                for pid in sup:
                    x, y, z = memory_kb(pid)
                    rss, pss, anon = rss + x, pss + y, anon + z
                ctx.res.add("1 memory", "supervisor RSS", s.key, "MB", rss / 1024)
                ctx.res.add("1 memory", "supervisor PSS", s.key, "MB", pss / 1024)
                ctx.res.add("1 memory", "supervisor anonymous RSS", s.key, "MB", anon / 1024)
                if isinstance(s, IotSv):
                    ctx.res.add("1 memory", "supervisor code RSS", s.key, "MB", sum(map(code_kb, sup)) / 1024)
                ctx.res.add("1 memory", "supervisor processes", s.key, "", len(sup))
                bpid = s.bridge_pid(p.pid) if bridge else None
                if bridge and not bpid:
                    ctx.res.fail("1 memory", "bridge RSS", s.key, "MB", "no bridge process found")
                if bpid:
                    x, y, z = memory_kb(bpid)
                    ctx.res.add("1 memory", "bridge RSS", s.key, "MB", x / 1024)
                    ctx.res.add("1 memory", "bridge PSS", s.key, "MB", y / 1024)
                    ctx.res.add("1 memory", "bridge anonymous RSS", s.key, "MB", z / 1024)
                    ctx.res.add("1 memory", "bridge code RSS", s.key, "MB", code_kb(bpid) / 1024)
                before[s.key] = (sup, bpid, [cost(x) for x in sup], cost(bpid) if bpid else None)
            t0 = now()
            time.sleep(a.idle)
            secs = (now() - t0) / NS
            hz = os.sysconf("SC_CLK_TCK")
            for s, d, p, bridge, _ in live:
                sup, bpid, c0, b0 = before[s.key]
                c1 = [cost(x) for x in sup]
                sw = sum(x[0] for x in c1) - sum(x[0] for x in c0)
                cpu = sum(x[1] for x in c1) - sum(x[1] for x in c0)
                ctx.res.add("5 idle", "supervisor context switches / min", s.key, "", sw * 60 / secs)
                ctx.res.add("5 idle", "supervisor CPU ms / min", s.key, "ms", cpu * 1000 / hz * 60 / secs)
                if bpid and b0:
                    b1 = cost(bpid)
                    ctx.res.add("5 idle", "bridge context switches / min", s.key, "", (b1[0] - b0[0]) * 60 / secs)
                    ctx.res.add("5 idle", "bridge CPU ms / min", s.key, "ms", (b1[1] - b0[1]) * 1000 / hz * 60 / secs)
        except (BenchError, OSError) as e:
            log(f"memory/idle round {r + 1}: {e}")
            for s in ctx.subjects:
                ctx.res.fail("1 memory", "supervisor RSS", s.key, "MB", str(e))
        finally:
            procs.cleanup()


# --------------------------------------------------------------------------------------------
# Scenario 6: bridge throughput


def sc_throughput(ctx: Ctx, iot: IotSv):
    a = ctx.args
    n = a.messages
    procs0 = Procs()
    try:
        broker = Broker(ctx, procs0)
        # Calibrate the pad so the bridge's published state envelope is `payload` bytes, then
        # give mosquitto_pub byte-for-byte the same size of message.
        pad = calibrate_pad(ctx, iot, broker, a.payload)
        for qos in ctx.args.qos:
            for r in range(a.rounds):
                for kind in ("iot2mqtt-sv", "mosquitto_pub"):
                    procs = Procs()
                    try:
                        rate, lost, cpu = throughput_run(ctx, iot, broker, procs, kind, qos, n, pad)
                        if lost:
                            ctx.res.fail(f"6 throughput QoS {qos}", "messages/s received", kind, "msg/s", f"{lost} of {n} lost")
                        if rate:
                            ctx.res.add(f"6 throughput QoS {qos}", "messages/s received", kind, "msg/s", rate, higher=True)
                        if cpu is not None:
                            ctx.res.add(f"6 throughput QoS {qos}", "publisher CPU per message", kind, "µs", cpu)
                    except BenchError as e:
                        log(f"throughput {kind} QoS {qos} round {r + 1}: {e}")
                        ctx.res.fail(f"6 throughput QoS {qos}", "messages/s received", kind, "msg/s", str(e))
                    finally:
                        procs.cleanup()
    except BenchError as e:
        log(f"throughput: {e}")
        for qos in ctx.args.qos:
            ctx.res.fail(f"6 throughput QoS {qos}", "messages/s received", "iot2mqtt-sv", "msg/s", str(e))
    finally:
        procs0.cleanup()


def direct_payload(size: int) -> bytes:
    """A state envelope shaped like the bridge's, padded to `size` bytes, plus its newline."""
    head = b'{"timestamp":"2026-01-01T00:00:00.000+00:00","device_id":"d1","state":{"seq":"0000000","pad":"'
    return head + b"p" * max(0, size - len(head) - 3) + b'"}}\n'


def calibrate_pad(ctx, iot, broker, want: int) -> int:
    procs = Procs()
    try:
        fifo_holder = {}

        def argv(d):
            fifo = d / "go.fifo"
            os.mkfifo(fifo)
            fifo_holder["fifo"] = fifo
            return [ctx.helper, "sockpub", str(d / "bridge.sock"), str(fifo), str(d / "marks"), "d1", "10"]

        d = ctx.fresh_dir("calibrate")
        start_bridge_program_in(ctx, iot, broker, procs, d, 0, argv)
        Marks(d / "marks").wait("the publisher to connect", lambda ms: any(m.kind == "connected" for m in ms), 15)
        out = d / "sample.txt"
        sub = procs.start(broker.sub_args(STATE_TOPIC, 0, "%l") + ["-C", "1", "-W", "10"], stdout=open(out, "wb"), stderr=subprocess.DEVNULL)
        time.sleep(0.3)  # mosquitto_sub has no "subscribed" signal; one message is re-sent below
        for _ in range(20):
            with open(fifo_holder["fifo"], "w") as f:
                f.write("1\n")
            try:
                sub.wait(0.5)
                break
            except subprocess.TimeoutExpired:
                continue
        got = out.read_text().strip()
        if not got:
            raise BenchError(f"no state message from the bridge on {STATE_TOPIC}; stderr: {tail(d / 'stderr.log')}")
        return max(0, want - int(got) + 10)
    finally:
        procs.cleanup()


def throughput_run(ctx, iot, broker, procs, kind, qos, n, pad) -> tuple[float | None, int, float | None]:
    """(messages/s at the subscriber, messages lost, publisher CPU µs per message): the
    publisher is the bridge process (not the program feeding it) or mosquitto_pub."""
    d = ctx.fresh_dir(f"tp{qos}-{kind}")
    marks = Marks(d / "marks")
    bridge = None
    if kind == "iot2mqtt-sv":
        fifo = d / "go.fifo"

        def argv(dd):
            return [ctx.helper, "sockpub", str(dd / "bridge.sock"), str(fifo), str(dd / "marks"), "d1", str(pad)]

        os.mkfifo(fifo)
        _, sv = start_bridge_program_in(ctx, iot, broker, procs, d, qos, argv)
        bridge = iot.bridge_pid(sv.pid)
        marks.wait("the publisher to connect", lambda ms: any(m.kind == "connected" for m in ms), 15)
    sub = procs.start(
        broker.sub_args(STATE_TOPIC, qos, "%l"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    counter = procs.start([ctx.helper, "count", d / "marks", str(n)], stdin=sub.stdout, stdout=subprocess.DEVNULL)
    sub.stdout.close()
    # Warm-up: one message, repeated until the subscriber sees it (its subscription is live).
    for _ in range(100):
        if kind == "iot2mqtt-sv":
            with open(fifo, "w") as f:
                f.write("1\n")
        else:
            subprocess.run(broker.pub_args(STATE_TOPIC, qos) + ["-m", "warm"], check=False)
        try:
            marks.wait("the warm-up message", lambda ms: any(m.kind == "warm" for m in ms), 0.2)
            break
        except BenchError:
            continue
    else:
        raise BenchError("the subscriber never received the warm-up message")
    time.sleep(0.2)  # let any duplicate warm-up messages drain before the timed batch
    pub, cpu0 = None, cpu_ns(bridge) if bridge else 0
    if kind == "iot2mqtt-sv":
        with open(fifo, "w") as f:
            f.write(f"{n}\n")
    else:
        lines = d / "lines.txt"
        with open(lines, "wb") as f:
            f.write(direct_payload(ctx.args.payload) * n)
        pub = procs.start(
            broker.pub_args(STATE_TOPIC, qos) + ["-l"],
            stdin=open(lines, "rb"),
            stdout=subprocess.DEVNULL,
            stderr=open(d / "pub.err", "wb"),
        )
    timeout = 20 + n / 2000
    try:
        marks.wait("every message to arrive", lambda ms: any(m.kind == "done" for m in ms), timeout)
    except BenchError:
        pass
    cpu = (cpu_ns(bridge) - cpu0) / 1000 / n if bridge else None
    if pub:
        # mosquitto_pub exits once its last message is out (QoS 1: acknowledged); its rusage
        # is the CPU it used. Bounded: a publisher that does not exit is left to the cleanup.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                pid, _, ru = os.wait4(pub.pid, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                cpu = (ru.ru_utime + ru.ru_stime) * 1e6 / n
                break
            time.sleep(0.01)
    sub.terminate()
    counted = marks.wait("the subscriber's count", lambda ms: next((m for m in ms if m.kind == "counted"), None), 10)
    received = counted.a - 1
    lost = max(0, n - received)
    done = marks.find("done")
    first = marks.find("first")
    if done and first:
        return (n - 1) / ((done[0].ns - first[0].ns) / NS), lost, cpu
    return None, lost, cpu


def start_bridge_program_in(ctx, iot, broker, procs, d, qos, argv_fn):
    prog = Prog("client", argv_fn(d))
    p = ctx.launch(procs, iot, d, iot.prepare(d, [prog], ctx, Bridge(broker.port, qos)))
    wait_bridge_online(broker, procs, d, 15)
    return d, p


# --------------------------------------------------------------------------------------------
# Scenario 7: command latency


def sc_commands(ctx: Ctx, iot: IotSv):
    a = ctx.args
    procs0 = Procs()
    try:
        broker = Broker(ctx, procs0)
        for r in range(a.rounds):
            for kind in ("iot2mqtt-sv", "mosquitto_sub"):
                procs = Procs()
                try:
                    lat = command_run(ctx, iot, broker, procs, kind)
                    lat.sort()
                    p50 = lat[len(lat) // 2] / MS
                    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] / MS
                    ctx.res.add("7 commands", "latency p50", kind, "ms", p50)
                    ctx.res.add("7 commands", "latency p99", kind, "ms", p99)
                except BenchError as e:
                    log(f"commands {kind} round {r + 1}: {e}")
                    ctx.res.fail("7 commands", "latency p99", kind, "ms", str(e))
                finally:
                    procs.cleanup()
    except BenchError as e:
        ctx.res.fail("7 commands", "latency p99", "iot2mqtt-sv", "ms", str(e))
    finally:
        procs0.cleanup()


def command_run(ctx, iot, broker, procs, kind) -> list[int]:
    a = ctx.args
    d = ctx.fresh_dir(f"cmd-{kind}")
    out = d / "latency.txt"
    marks = Marks(d / "marks")
    if kind == "iot2mqtt-sv":

        def argv(dd):
            return [ctx.helper, "cmdrecv", str(dd / "bridge.sock"), str(dd / "marks"), "d1", str(out)]

        start_bridge_program_in(ctx, iot, broker, procs, d, 1, argv)
        marks.wait("the program's hello to be acknowledged", lambda ms: any(m.kind == "hello" for m in ms), 15)
    else:
        sub = procs.start(broker.sub_args(CMD_TOPIC, 1, "%p"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        procs.start([ctx.helper, "latency", out], stdin=sub.stdout)
        sub.stdout.close()
    # The same topic either way: the broker's work and the bytes on the wire are the same.
    pub = procs.start(broker.pub_args(CMD_TOPIC, 1) + ["-l"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=open(d / "pub.err", "wb"))
    w = pub.stdin

    def send(seq):
        w.write(f'{{"id":"{seq}-{now()}","values":{{"v":{seq}}}}}\n'.encode())
        w.flush()

    # Warm-up until the receiver sees commands (subscriptions live, connections warm); excluded.
    warm = 1_000_000
    for i in range(200):
        send(warm + i)
        time.sleep(0.01)
        if out.exists() and out.stat().st_size > 0:
            break
    else:
        raise BenchError(f"no command reached the receiver; stderr: {tail(d / 'stderr.log')}")
    time.sleep(0.1)
    count = a.commands
    period = NS // a.cmd_rate
    t0 = now()
    for i in range(count):
        target = t0 + i * period
        delay = (target - now()) / NS
        if delay > 0:
            time.sleep(delay)
        send(i)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lat = [int(line.split()[1]) for line in out.read_text().splitlines() if int(line.split()[0]) < warm]
        if len(lat) >= count:
            break
        time.sleep(0.05)
    w.close()
    if len(lat) < count * 0.99:
        raise BenchError(f"only {len(lat)} of {count} commands arrived")
    return lat


# --------------------------------------------------------------------------------------------
# Scenario 8: log throughput


def sc_logs(ctx: Ctx):
    a = ctx.args
    linelen = 100
    lines = a.log_bytes // linelen
    subjects = ["direct"] + [s for s in ctx.subjects if s.key in ("iot2mqtt-sv", "supervisord")]

    def body(s, procs: Procs, r: int):
        key = s if isinstance(s, str) else s.key
        d = ctx.fresh_dir(f"logs-{key}")
        marks = Marks(d / "marks")
        writer = [ctx.helper, "logwrite", str(d / "marks"), str(lines * linelen), str(linelen)]
        check = [ctx.helper, "logcheck", d / "marks", str(lines), str(linelen)]
        if key == "direct":
            w = procs.start(writer, stdout=subprocess.PIPE)
            procs.start(check, stdin=w.stdout)
            w.stdout.close()
        else:
            prog = Prog("logger", writer, autorestart=False)
            p = ctx.launch(procs, s, d, s.prepare(d, [prog], ctx), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            procs.start(check, stdin=p.stdout)
            p.stdout.close()
        res = marks.wait("the checker's result", lambda ms: next((m for m in ms if m.kind == "logresult"), None), a.log_timeout)
        good, bad, other, lost, nbytes = (int(x) for x in res.name.split())
        start = marks.find("logstart")[0].ns
        last = marks.find("loglast")
        if bad or lost:
            log(f"logs {key} round {r + 1}: {lost} lines lost, {bad} split or mangled")
        ctx.res.add("8 logs", "lines lost or split", key, "", lost + bad)
        if last:
            ctx.res.add("8 logs", "program bytes/s through the sink", key, "MB/s", lines * linelen / ((last[0].ns - start) / NS) / 1e6, higher=True)

    def fail(s, err):
        key = s if isinstance(s, str) else s.key
        ctx.res.fail("8 logs", "program bytes/s through the sink", key, "MB/s", err)

    body.fail = fail
    run_rounds(ctx, subjects, body, a.rounds)


# --------------------------------------------------------------------------------------------
# Targets and report


def judge(ctx: Ctx):
    R = ctx.res
    m = R.med
    iot = "iot2mqtt-sv"

    def show(v, unit):
        return "—" if v is None else f"{fmt(v, unit)} {unit}".strip()

    rss = m("1 memory", "supervisor RSS", iot)
    R.target("memory: supervisor ≤ 3 MB RSS", show(rss, "MB"), None if rss is None else rss <= 3)
    b = m("1 memory", "bridge RSS", iot)
    R.target("memory: bridge ≤ 4 MB RSS", show(b, "MB"), None if b is None else b <= 4)
    sd = m("1 memory", "supervisor RSS", "supervisord")
    if rss and sd:
        R.target("memory: ≥ 10× less than supervisord", f"{sd / rss:.1f}× less", sd / rss >= 10)
    s6 = m("1 memory", "supervisor RSS", "s6")
    if rss and s6:
        p_iot, p_s6 = m("1 memory", "supervisor PSS", iot), m("1 memory", "supervisor PSS", "s6")
        R.target(
            "memory: less than s6 for 4 programs (RSS)",
            f"{show(rss, 'MB')} vs {show(s6, 'MB')} (PSS {show(p_iot, 'MB')} vs {show(p_s6, 'MB')})",
            rss < s6,
        )
    st = m("2 start", "exec → all 4 running", iot)
    R.target("start ≤ 10 ms to all programs running", show(st, "ms"), None if st is None else st <= 10)
    rs = m("3 respawn", "SIGKILL → running again", iot)
    R.target("respawn ≤ 10 ms plus the configured delay (1 ms)", show(rs, "ms"), None if rs is None else rs <= 11)
    for metric in ("overhead over slowest program (4 prompt)", "overhead over TERM + 1 s (1 ignores TERM)"):
        v = m("4 shutdown", metric, iot)
        R.target(f"shutdown {metric} ≤ 10 ms", show(v, "ms"), None if v is None else v <= 10)
    for who in ("supervisor", "bridge"):
        v = m("5 idle", f"{who} context switches / min", iot)
        # The only periodic wake-ups allowed are MQTT keepalive (one ping per 60 s by default,
        # a few switches each) and configured probes (none here).
        R.target(f"idle: no periodic wake-ups ({who})", f"{show(v, '')} switches/min", None if v is None else v <= 10)
    for q in (0, 1):
        x = m(f"6 throughput QoS {q}", "messages/s received", iot)
        y = m(f"6 throughput QoS {q}", "messages/s received", "mosquitto_pub")
        R.target(
            f"bridge QoS {q} ≥ 0.8× mosquitto_pub",
            "—" if not (x and y) else f"{x:,.0f} vs {y:,.0f} msg/s = {x / y:.2f}×",
            None if not (x and y) else x / y >= 0.8,
        )
    p99 = m("7 commands", "latency p99", iot)
    R.target("command p99 ≤ 2 ms at 1,000 cmd/s", show(p99, "ms"), None if p99 is None else p99 <= 2)
    lx = m("8 logs", "program bytes/s through the sink", iot)
    ly = m("8 logs", "program bytes/s through the sink", "direct")
    lost = ctx.res.rows.get(("8 logs", "lines lost or split", iot))
    intact = lost is not None and lost.values and max(lost.values) == 0
    R.target(
        "logs ≥ 0.5× direct, no line lost or split",
        "—" if not (lx and ly) else f"{lx:,.0f} vs {ly:,.0f} MB/s = {lx / ly:.2f}×, {'intact' if intact else 'LINES LOST/SPLIT'}",
        None if not (lx and ly) else (lx / ly >= 0.5 and bool(intact)),
    )


def machine(ctx: Ctx) -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError):
        pass

    def ver(argv):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            text = (out.stdout + out.stderr).strip().splitlines()
            return text[0] if text else "?"
        except Exception:  # noqa: BLE001
            return "not installed"

    lines = [
        f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- CPU: {cpu}, {os.cpu_count()} cores (nproc); memory {mem}",
        f"- Kernel: {platform.system()} {platform.release()} ({platform.machine()})",
        f"- Python (harness): {platform.python_version()}; C compiler: {ver(['cc', '--version'])}",
        f"- Scheduling: every process ran at nice {os.nice(0)}; load average at start {ctx.load_start}, "
        f"at end {' '.join(Path('/proc/loadavg').read_text().split()[:3])} (other work on the machine)",
        f"- Rounds: {ctx.args.rounds}; memory settle {ctx.args.mem_settle:g} s; idle window {ctx.args.idle:g} s; "
        f"{ctx.args.messages:,} messages per throughput run; {ctx.args.commands:,} commands at {ctx.args.cmd_rate:,}/s; "
        f"{ctx.args.log_bytes / 1e9:g} GB of {100}-byte lines per log run",
    ]
    for s in ctx.subjects:
        lines.append(f"- {s.label}: {s.version()}")
    if ctx.broker_ok:
        lines.append(f"- mosquitto: {ver([which('mosquitto'), '-h'])}")
    return "\n".join(lines)


def write_doc(report: str):
    text = DOC.read_text() if DOC.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail_ = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{report}\n{END}{tail_}")


# --------------------------------------------------------------------------------------------


def parse_size(s: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kKmMgG]?)B?", s.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {s!r}")
    mult = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


SCENARIOS = ["memory", "start", "shutdown", "throughput", "commands", "logs"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sv-bin", default=os.environ.get("IOT2MQTT_SV_BIN"), help="the iot2mqtt-sv binary to measure")
    ap.add_argument("--smoke", action="store_true", help="tiny durations, one round: proves the harness works, measures nothing")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of: {', '.join(SCENARIOS)}")
    ap.add_argument("--subjects", default="iot2mqtt-sv,supervisord,s6", help="comma-separated subset of the supervisors")
    ap.add_argument("--mem-settle", type=float, default=10.0, help="seconds from start to the memory reading")
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of the idle-cost window")
    ap.add_argument("--stable", type=float, default=1.5, help="seconds a program runs before it is killed")
    # mosquitto_pub -l (2.0) stops at the first acknowledgement whose packet id equals the id of
    # its last message, so a batch must not wrap the 16-bit id: at most 65 535 messages.
    ap.add_argument("--messages", type=int, default=60_000, help="messages per throughput run (≤ 65535)")
    ap.add_argument("--qos", type=lambda v: [int(q) for q in v.split(",")], default=[0, 1], help="throughput QoS levels (0,1)")
    ap.add_argument("--payload", type=int, default=100, help="bytes per published state message")
    ap.add_argument("--commands", type=int, default=5_000, help="commands per latency run")
    ap.add_argument("--cmd-rate", type=int, default=1_000, help="commands per second")
    ap.add_argument("--log-bytes", type=parse_size, default=parse_size("1G"), help="bytes of log lines per run")
    ap.add_argument("--log-timeout", type=float, default=600.0)
    ap.add_argument("--write-doc", choices=["auto", "yes", "no"], default="auto", help="update docs/benchmarks.md (auto: only for full runs)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs, marks)")
    a = ap.parse_args()
    a.settle_after_respawn = 0.3
    if a.smoke:
        a.rounds, a.mem_settle, a.idle, a.stable = 1, 0.5, 0.5, 1.2
        a.messages, a.commands, a.log_bytes = 2_000, 200, 10_000_000
        a.settle_after_respawn = 0.1
    if not a.qos or not set(a.qos) <= {0, 1}:
        ap.error("--qos takes 0, 1 or 0,1")
    if not 2 <= a.messages <= 65_535:
        ap.error("--messages must be between 2 and 65535 (mosquitto_pub's 16-bit packet ids)")
    only = set(a.only.split(","))
    unknown = only - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")

    # SIGTERM (from a test's bound, or a user) unwinds through every `finally`, so whatever the
    # harness started is killed and nothing outlives it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cc = which("cc") or which("gcc")
    if not cc:
        log(f"a C compiler is needed for the measured helper programs: {INSTALL['cc']}")
        return 2
    wanted = set(a.subjects.split(","))
    if not a.sv_bin and "iot2mqtt-sv" in wanted:
        log("no iot2mqtt-sv binary: pass --sv-bin or IOT2MQTT_SV_BIN (scripts/bench builds it)")
        return 2

    work = Path(tempfile.mkdtemp(prefix="iot2mqtt-sv-bench."))
    helper = work / "bench-helper"
    subprocess.run([cc, "-O2", "-o", helper, ROOT / "bench" / "helper.c"], check=True)

    subjects: list[Subject] = []
    for s in (IotSv(os.path.abspath(a.sv_bin or "iot2mqtt-sv")), Supervisord(), S6()):
        if s.key not in wanted:
            continue
        miss = s.missing()
        if miss:
            hints = "; ".join(f"{t}: {INSTALL.get(t, 'build it: cargo build --release -p iot2mqtt-sv')}" for t in miss)
            log(f"skipping {s.label}: not found ({hints})")
            continue
        subjects.append(s)
    iot = next((s for s in subjects if isinstance(s, IotSv)), None)
    broker_tools = [t for t in ("mosquitto", "mosquitto_pub", "mosquitto_sub") if not which(t)]
    if broker_tools:
        log("skipping the bridge (memory of the bridge, throughput, commands): missing " + ", ".join(f"{t} ({INSTALL[t]})" for t in broker_tools))
        if os.environ.get("REQUIRE_MOSQUITTO") == "1":
            log("REQUIRE_MOSQUITTO=1 but mosquitto is missing")
            return 2

    ctx = Ctx(a, str(helper), work, subjects, Results(), broker_ok=not broker_tools)
    labels = {s.key: s.label for s in subjects}
    labels.update({"mosquitto_pub": "mosquitto_pub (direct)", "mosquitto_sub": "mosquitto_pub → mosquitto_sub (direct)", "direct": "direct write (no supervisor)"})
    t_start = time.monotonic()
    try:
        if "memory" in only:
            log("scenarios 1 and 5: memory and idle cost")
            sc_memory_idle(ctx)
        if "start" in only:
            log("scenarios 2, 3, 4: start, respawn, shutdown")
            sc_lifecycle(ctx)
        if "shutdown" in only:
            log("scenario 4: shutdown with a program that ignores SIGTERM")
            sc_shutdown_stubborn(ctx)
        if iot and ctx.broker_ok and "throughput" in only:
            log("scenario 6: bridge throughput")
            sc_throughput(ctx, iot)
        if iot and ctx.broker_ok and "commands" in only:
            log("scenario 7: command latency")
            sc_commands(ctx, iot)
        if "logs" in only:
            log("scenario 8: log throughput")
            sc_logs(ctx)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"work directory kept: {work}")

    judge(ctx)
    report = "\n".join(
        [
            "## Results" + (" (smoke run: not a measurement)" if a.smoke else ""),
            "",
            machine(ctx),
            "",
            ctx.res.table(labels),
            "",
            "### Targets",
            "",
            ctx.res.target_table(),
            "",
            f"Harness run time: {time.monotonic() - t_start:.0f} s.",
        ]
    )
    print(report)
    if a.write_doc == "yes" or (a.write_doc == "auto" and not a.smoke and a.only == ",".join(SCENARIOS)):
        write_doc(report)
        log(f"results written to {DOC.relative_to(ROOT)}")
    errors = [r for r in ctx.res.rows.values() if r.error]
    if errors:
        log(f"{len(errors)} measurement(s) failed: " + "; ".join(f"{r.scenario}/{r.metric}/{r.subject}: {r.error[:200]}" for r in errors))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
