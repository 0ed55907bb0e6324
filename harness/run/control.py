"""A headless run's loop, from the cluster's start to its last sample: it samples (once a second
and as each phase begins), shows progress, ticks the test hosts' faults, and notices what the run
did not plan: a Locust process or a server process that died, a target that closed held
connections, the time bound passed. What it saw is `faults`; why it ended is `stop`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from harness.core.records import Fault, MasterStatus
from harness.run.progress import RunProgress
from harness.run.sampler import Sampler
from harness.run.session import Session
from harness.system.oomlog import OomLog
from harness.system.procctl import describe_exit

WORKER_EXIT_GRACE_S = 3.0
DEATH_MATCH_S = 5.0  # a target's process gone and its connections' closes, one event within this long
# After a ramp stopped because the target shed held connections, the users already asked for (up to
# LEAD_STEPS steps) still arrive and it sheds for those too; worker reports come once a second.
SHED_SETTLE_S = 4.0
LOOP_S = 0.05
# Past the ramp's bound and the hold, this long for the master to stop its workers and exit.
END_GRACE_S = 90.0


@dataclass
class Control:
    session: Session
    sampler: Sampler
    stop: list[str]  # why the run stops early ("interrupted" from a signal, "time-bound", "error")
    progress: RunProgress | None = None
    faults: list[Fault] = field(default_factory=list)
    master_code: int | None = None
    error: str | None = None
    _reported: set[str] = field(default_factory=set)
    _drops: dict = field(default_factory=lambda: {"lost": 0, "failed": {}})
    _last_drop: "DropEvent | None" = None  # the latest target-drop fault, as a death may still claim it
    _hold_started: float | None = None
    _oom: OomLog | None = None  # the kernel's log of OOM kills, open while the run runs
    _deaths: list[Fault] = field(default_factory=list)  # a target's processes gone, before their closes came

    def run(self) -> None:
        """Until the master exits, a signal, or the deadline; then one fresh sample."""
        prepared = self.session.prepared
        deadline = self.sampler.t0 + prepared.max_seconds + prepared.config.hold + END_GRACE_S
        next_sample = time.monotonic()
        self._oom = OomLog()
        try:
            while not self.stop:
                if self._master_exited():
                    break
                self._reap_servers()
                if time.monotonic() > deadline:
                    self.stop.append("time-bound")
                    break
                now = time.monotonic()
                due = now >= next_sample
                # a sample each second, and one as each phase begins: the hold's first count is taken
                # then, not up to a second later (a fault may come in that second)
                if due or self.sampler.phase_began():
                    self._sample()
                    if due:  # on the second grid, and no burst of catch-up points after a wait
                        next_sample = max(next_sample + 1.0, now)
                self._tick_lab()
                time.sleep(LOOP_S)
            self.sampler.sample(fresh=True)
            if self.session.prepared.target is not None:
                # a target's process that died as the run ended, seen in that last sample (the
                # harness's own servers take a terminal's Ctrl-C with it: no fault then)
                self._reap_servers()
            self.faults += self._deaths  # gone with no connections seen closing
        except Exception as exc:  # noqa: BLE001 - whatever happened, stop everything and record it
            self.error = f"{type(exc).__name__}: {exc}"
            self.stop.append("error")
        finally:
            self._oom.close()
            if self.progress:
                self.progress.close()

    def _master_exited(self) -> bool:
        cluster = self.session.cluster
        dead = cluster.dead()
        if "master" in dead:
            self.master_code = dead["master"]
            return True
        new = dead.keys() - self._reported
        if new:
            # Workers quit just before the master at the end of a run; one that dies while its master
            # carries on with the others is a fault, and the result is marked. What the dead worker
            # held is read now, before the grace period ages its last report.
            self.sampler.read_status()
            self.master_code = cluster.wait_master(WORKER_EXIT_GRACE_S)
            if self.master_code is not None:
                return True
            for name in sorted(new):
                self._reported.add(name)
                self.faults.append(self._worker_fault(cluster.pid_of(name), dead[name]))
        return False

    def _reap_servers(self) -> None:
        """Server processes that died (the harness's own by their wait status; a target's when /proc
        no longer has them), and whether the kernel's OOM killer ended them."""
        group = self.session.group
        for index, status in group.reap().items():
            # its slot keeps the last numbers it published (every 0.25 s); a sample may be a second older
            row = group.board.read(index) if group.board is not None else None
            how = "killed by the OOM killer" if self._oom.killed(row["pid"] if row else index) else None
            kind = "oom-kill" if how else "process-died"
            if row is not None:
                self.faults.append(self._fault(f"server process {index} died ({how or describe_exit(status)})",
                                               row["open"], kind=kind))
                continue
            # a target's process (`index` is its pid): the connections it held close with it, and the
            # workers report them lost, before or after /proc shows it gone; one fault says both
            proc = next(p for p in group.processes if p["pid"] == index)
            death = f"target process {proc['name']} (pid {index}) died ({how or 'exited'})"
            fault = self._fault(death, 0, kind=kind)
            drop = self._last_drop
            if drop is not None and drop.death is None and drop.fault["t"] >= fault["t"] - DEATH_MATCH_S:
                drop.claim(death, kind, fault["t"])  # its closes came first
            else:
                self._deaths.append(fault)

    def _sample(self) -> None:
        point = self.sampler.sample()
        status = self.sampler.status
        if self.session.prepared.target is not None:
            self.faults += self._target_drops(status)
        if self.progress:
            key = self.sampler.held_key
            self.progress.update(point[key], rate(self.sampler.series, key), status.totals.connects_failed,
                                 status.phase)

    def _tick_lab(self) -> None:
        lab = self.session.lab
        if lab is None:
            return
        status = self.sampler.status
        if self._hold_started is None and status.phase == "hold":
            self._hold_started = time.monotonic()
        lab.tick(status.phase, self._hold_started, self.session.prepared.config.hold, status.totals,
                 time.monotonic() - self.sampler.t0)

    def _fault(self, what: str, lost: int, **more) -> Fault:
        return Fault(t=round(time.monotonic() - self.sampler.t0, 2), what=what, connections_lost=lost, **more)

    def _worker_fault(self, pid: int, code: int | None) -> Fault:
        """A dead Locust process, matched by pid to its last report (Locust numbers workers in the
        order they connect, not the order they were forked); the forker of the workers has none."""
        report = next((w for w in self.sampler.status.workers if w["pid"] == pid), None)
        who = f"Locust worker {report['worker_index']}" if report else "Locust's worker parent"
        how = f"exit {code}" if code is not None else "exit status not seen"
        return self._fault(f"{who} (pid {pid}) died ({how})", report["open"] if report else 0, kind="process-died")

    def _target_drops(self, status: MasterStatus) -> list[Fault]:
        """Held connections a target closed or reset since the last sample (it restarted, or shed
        load), as a fault: verified connections no longer held, by the failure names that came. The
        closes a target process's death causes come over several worker reports: those within
        DEATH_MATCH_S of it are added to its one fault."""
        if status.phase not in ("ramp", "hold"):
            return []  # at the end the users are stopped: that is not the target's doing
        seen, lost, failed = self._drops, status.totals.lost, status.totals.echo_failed
        if lost <= seen["lost"]:
            return []
        new = {k: v - seen["failed"].get(k, 0) for k, v in failed.items() if v > seen["failed"].get(k, 0)}
        count = lost - seen["lost"]
        seen.update(lost=lost, failed=dict(failed))
        t = round(time.monotonic() - self.sampler.t0, 2)
        last = self._last_drop
        if last is not None and last.death is not None and t - last.death_t <= DEATH_MATCH_S:
            last.add(count, new)
            return []
        fault = self._fault("", 0, kind="target-drop", phase=status.phase)
        self._last_drop = DropEvent(fault)
        self._last_drop.add(count, new)
        if self._deaths:  # the process whose end closed them, seen first
            death = self._deaths.pop(0)
            self._last_drop.claim(death["what"], death["kind"], death["t"])
        return [fault]

    def mark_shedding(self) -> None:
        """Where the shape stopped because the target closed connections it had answered (it sheds
        them to take new ones), those closes are the limit the run found, not an interruption: the
        ones seen while ramping and in the first SHED_SETTLE_S of the hold, while the users already
        asked for still arrive. Any other fault marks the run interrupted."""
        found = []
        if self.sampler.status.shed:
            hold_at = next((p["t"] for p in self.sampler.series if p["phase"] == "hold"), None)
            found = [f for f in self.faults if f.get("kind") == "target-drop"
                     and (f.get("phase") == "ramp" or (hold_at is not None and f["t"] <= hold_at + SHED_SETTLE_S))]
        for fault in found:
            fault["limit"] = True
        if any(f not in found for f in self.faults) and not self.stop:
            self.stop.append("interrupted")


@dataclass
class DropEvent:
    """One target-drop fault as it grows: the held connections a target closed, by failure name,
    and the death of the target process that closed them once it is seen."""

    fault: Fault
    lost: int = 0
    failed: dict = field(default_factory=dict)
    death: str | None = None
    death_t: float = 0.0

    def add(self, lost: int, failed: dict) -> None:
        self.lost += lost
        for name, n in failed.items():
            self.failed[name] = self.failed.get(name, 0) + n
        self._write()

    def claim(self, death: str, kind: str, t: float) -> None:
        """The target process whose end (seen at `t`) closed these connections."""
        self.death, self.death_t = death, t
        self.fault["kind"] = kind
        self._write()

    def _write(self) -> None:
        how = ", ".join(f"{k} {v:,}" for k, v in self.failed.items()) or "closed"
        what = f"the target closed {self.lost:,} held connection(s) ({how})"
        self.fault.update(what=f"{self.death}: {what}" if self.death else what, connections_lost=self.lost)


def rate(series: list[dict], key: str) -> float:
    if len(series) < 2:
        return 0.0
    a, b = series[-2], series[-1]
    return max(0.0, (b[key] - a[key]) / max(1e-6, b["t"] - a["t"]))
