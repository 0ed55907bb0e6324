"""The run's sampler: one point a second, and one as each phase begins, of what the kernel, the
servers (or the target's processes) and the Locust workers each count, with memory and CPU, into
`run.json`'s series."""

from __future__ import annotations

import json
import time
from pathlib import Path

from harness.core.records import MasterStatus, SeriesPoint, total_refusals
from harness.run.cluster import LocustCluster
from harness.run.outside import OutsideServer
from harness.run.watch import CostWatch
from harness.system import kernel, listeners, ss
from harness.system.limits import meminfo, memory_available
from harness.system.procfs import cpu_times, files_open
from servers.gauges import ROLE_ACCEPTOR
from servers.supervisor import ServerGroup

KERNEL_EVERY_S = 2.0  # at least this long between two kernel counts (ss)
KERNEL_CPU_SHARE = 0.1  # ...and long enough that ss takes at most this share of a core (~1 s a call at 1M)
# While ramping, ss competes with the load for the CPU (it walks and formats every socket on the
# machine); the servers' own gauges count every second, so the kernel is counted as each phase
# begins and, during the ramp, with this smaller share.
KERNEL_RAMP_CPU_SHARE = 0.02
TARGET_KERNEL_EVERY_S = 1.0  # a target's: its cost per connection is read at each count


class Sampler:
    """One point a second and one as each phase begins: what the kernel, the servers and the
    workers each count."""

    def __init__(self, group: ServerGroup | OutsideServer, status_file: Path, t0: float, netns: str | None = None,
                 by_host: bool = False, cluster: LocustCluster | None = None) -> None:
        """`netns`: the server host's namespace, where the kernel's count is read; `by_host`: each
        point also counts what the workers of each test host hold; `cluster`: once it is started."""
        self.group, self.cluster, self.status_file, self.t0 = group, cluster, status_file, t0
        self.netns, self.by_host = netns, by_host
        self.target = group if isinstance(group, OutsideServer) else None
        # what counts connections every second: the servers' gauges, or (a target's) the workers'
        self.held_key = "server_open" if self.target is None else "locust_held"
        self.series: list[SeriesPoint] = []
        self.status = MasterStatus()
        self._kernel_least = KERNEL_EVERY_S if self.target is None else TARGET_KERNEL_EVERY_S
        self._kernel = (0, -self._kernel_least)  # (count, when)
        self._kernel_every = self._kernel_least
        self._phase = "starting"
        self._status_written: tuple = ()  # the status file's inode, mtime and size when last read
        self.watch: CostWatch | None = None  # the serving processes' costs, where the run watches them
        self._serving: list[dict] = []  # the harness's own servers, as /proc has them (a target's are its own)
        self.accept_queue: dict | None = None  # the port's accept queue at its fullest (queued, backlog, local, t)
        self._queued = 0  # connections in the port's accept queue at the last count

    def read_status(self) -> MasterStatus:
        try:
            self.status = MasterStatus.from_dict(json.loads(self.status_file.read_text()))
        except (OSError, ValueError):
            pass
        return self.status

    def begin_test(self, t0: float) -> None:
        """A new test on the same port (the web UI's next START): its own series from `t0`, its own
        accept queue and target processes' peaks, and its first sample counted afresh, whatever
        phase the last test ended in (a STOP in its hold and a START whose ramp is over before the
        next sample would otherwise keep the last count)."""
        self.series.clear()
        self.t0, self._phase = t0, "starting"
        self.accept_queue, self._queued = None, 0
        if self.target is not None:
            self.target.begin_test()

    @property
    def phase(self) -> str:
        """The master's phase at the last sample."""
        return self._phase

    def phase_began(self) -> bool:
        """Whether the master's status says a phase began since the last sample. The master writes
        the status each second and as a phase begins; it is re-read only when it was written."""
        try:
            st = self.status_file.stat()
        except OSError:
            return False
        written = (st.st_ino, st.st_mtime_ns, st.st_size)  # each write renames a new file over the last
        if written == self._status_written:
            return False
        self._status_written = written
        return self.read_status().phase != self._phase

    def kernel_count(self, fresh: bool, ramping: bool = False) -> tuple[int, bool]:
        """The kernel's count of established connections on the port, and whether it was taken
        now: when `fresh` is asked or when due (ss walks every socket on the machine, so it runs
        less often as they grow); otherwise the last count."""
        now = time.monotonic()
        if fresh or now - self._kernel[1] >= self._kernel_every:
            if self.target is None:
                count = ss.established_on_port(self.group.port, self.netns)
            else:  # our side of the connections: the target may be elsewhere, or hold other clients'
                count = ss.established_to(self.target.host, self.target.port)
                self.target.sample()
            if self.target is None or self.target.local:
                queues = kernel.listen_queue(self.group.port, self.netns)
                self._note_queue(queues)
                self._queued = sum(q["queued"] for q in queues)
            took = time.monotonic() - now
            self._kernel = (count, now)
            self._kernel_every = max(self._kernel_least, took / (KERNEL_RAMP_CPU_SHARE if ramping else KERNEL_CPU_SHARE))
            return count, True
        return self._kernel[0], False

    def _note_queue(self, queues: list[dict]) -> None:
        """The fullest the port's accept queue has been at a count: a server that stops accepting
        leaves it full while the ramp goes on, and empty again once the run closes its connections."""
        for queue in queues:
            if self.accept_queue is None or queue["queued"] > self.accept_queue["queued"]:
                self.accept_queue = {**queue, "t": round(time.monotonic() - self.t0, 2)}

    def sample(self, fresh: bool = False) -> SeriesPoint:
        status = self.read_status()
        rows = self.group.board.read_all() if self.group.board is not None else []
        for index in self.group.exited if rows else ():  # a dead process's slot keeps its last numbers
            rows[index]["open"] = 0
        servers = [r for r in rows if r["role"] != ROLE_ACCEPTOR]
        totals = status.totals
        refused = sum(total_refusals(rows).values())
        phase = status.phase
        changed, self._phase = phase != self._phase, phase  # counted afresh as each phase begins
        memory = meminfo()
        kernel, counted = self.kernel_count(fresh or changed, ramping=phase == "ramp")
        point = SeriesPoint(
            t=round(time.monotonic() - self.t0, 2), phase=phase, kernel_established=kernel, kernel_counted=counted,
            server_open=sum(r["open"] for r in servers), server_open_by_process=[r["open"] for r in servers],
            locust_open=totals.open, locust_held=totals.held, connects_ok=totals.connects_ok,
            connects_failed=sum(totals.connects_failed.values()), server_refused=refused,
            echoes_verified=totals.echoes_verified, server_rss_bytes=sum(r["rss_bytes"] for r in rows),
            locust_rss_bytes=totals.rss_bytes, slab_bytes=memory["SUnreclaim"],
            mem_available_bytes=memory_available(), files_open=files_open())
        # CPU by part, from /proc/PID/stat's utime and stime: userland and kernel, each side; each
        # process read once a sample, for the sides and for the hosts alike
        server_pids, locust_pids = [r["pid"] for r in rows], self.cluster.pids() if self.cluster else []
        times = cpu_times([*server_pids, *locust_pids])
        for side, pids in (("server", server_pids), ("locust", locust_pids)):
            user = sum(times.get(pid, (0.0, 0.0))[0] for pid in pids)
            system = sum(times.get(pid, (0.0, 0.0))[1] for pid in pids)
            point[f"{side}_cpu_s"] = round(user + system, 2)
            point[f"{side}_cpu_user_s"], point[f"{side}_cpu_system_s"] = round(user, 2), round(system, 2)
        if self.watch is not None:
            self._observe_serving(point, rows)
        if self.by_host:
            held: dict[str, int] = {}
            for w in status.workers:
                held[w.get("host", "")] = held.get(w.get("host", ""), 0) + w.get("held", 0)
            cpu: dict[str, float] = {self.netns or "": point["server_cpu_s"]}
            for pid, host in (self.cluster.host_of if self.cluster else {}).items():
                cpu[host] = round(cpu.get(host, 0.0) + sum(times.get(pid, (0.0, 0.0))), 2)
            point["held_by_host"], point["cpu_by_host"] = held, cpu
        self.series.append(point)
        return point

    def _observe_serving(self, point: SeriesPoint, rows: list[dict]) -> None:
        """The serving processes' totals into the point, and into the cost watch."""
        if self.target is not None:
            # While ramping, the workers report once a second, behind their handshakes: the kernel's
            # count, taken with the processes' own reading (kernel_count), less what waits in the
            # target's accept queue (established, not yet accepted), is what they held then. In the
            # hold the workers' count is settled.
            procs = self.target.processes
            if point["phase"] == "hold":
                held = point["locust_held"]
            else:
                held = max(0, point["kernel_established"] - self._queued) if point["kernel_counted"] else None
            if not point["kernel_counted"]:
                listeners.track(procs)
        else:
            pids = {r["pid"] for r in rows if r["pid"]}
            if {p["pid"] for p in self._serving} != pids:
                self._serving = listeners.tracked([d for d in (listeners.describe(pid) for pid in pids) if d])
            else:
                listeners.track(self._serving)
            procs, held = self._serving, point["server_open"]
        state = self.watch.observe(procs, held, point["phase"], point["t"], point["mem_available_bytes"])
        for key in ("threads", "rss_bytes", "vsz_bytes", "data_bytes", "cpu_s"):
            point[f"serving_{key}"] = state[key]
        point["serving_fds"] = state["held_fds"]
