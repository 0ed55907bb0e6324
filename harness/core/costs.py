"""What each connection costs the server, measured as the ramp goes, and where those costs meet a
limit: fds, threads, memory and CPU per connection, each the slope of a least-squares line through
the samples (numpy), and the caps they predict against the limits the server runs under.

The slopes are read from the server's own processes (a target's, found behind its port in /proc;
or the harness's own servers), so a server that holds two fds per client (a TCP proxy), starts a
thread per client, or keeps 256 KiB of TLS buffer per client is predicted as it is, not as one fd
each. `prediction` is made once, early in the ramp, and recorded before the cap is met, so the run
can say how far off it was.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

# A prediction is made once this many samples span at least this many connections (and this share of
# the ramp's target): enough to fit a line through, early enough to be a prediction.
MIN_POINTS = 4
MIN_SPAN = 200
KB = 1024


@dataclass
class Costs:
    """Per connection, from the server's processes (None: not measured)."""

    fds: float | None = None
    threads: float | None = None
    rss_bytes: float | None = None
    vsz_bytes: float | None = None
    data_bytes: float | None = None
    cpu_s: float | None = None  # CPU seconds per connection made (a TLS server's: per handshake)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Prediction:
    """Where the costs meet each limit, made at `held` connections, `t` seconds into the run."""

    held: int
    t: float
    costs: Costs
    caps: dict[str, int] = field(default_factory=dict)  # limit name -> connections held when it binds
    binding: str | None = None

    @property
    def cap(self) -> int | None:
        return self.caps.get(self.binding) if self.binding else None

    def as_dict(self) -> dict:
        return {"held": self.held, "t": self.t, "costs": self.costs.as_dict(), "caps": self.caps,
                "binding": self.binding, "cap": self.cap}


def slope(xs: list[float], ys: list[float]) -> float | None:
    """The least-squares slope of ys over xs, or None where xs do not spread."""
    if len(xs) < 2 or max(xs) - min(xs) <= 0:
        return None
    return float(np.polyfit(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float), 1)[0])


def fit(points: list[dict]) -> Costs:
    """Costs from samples of the server's totals: each point has `held` and, where read, `fds`,
    `threads`, `rss_bytes`, `vsz_bytes`, `data_bytes`, `cpu_s`."""
    costs = Costs()
    xs = [p["held"] for p in points]
    for name in ("fds", "threads", "rss_bytes", "vsz_bytes", "data_bytes", "cpu_s"):
        have = [p for p in points if p.get(name) is not None]
        if len(have) >= 2:
            value = slope([p["held"] for p in have], [p[name] for p in have])
            setattr(costs, name, None if value is None else max(0.0, value))
    return costs if len(xs) >= 2 else Costs()


def between(start: dict, end: dict) -> Costs:
    """Costs as what grew from `start` to `end`, over the connections that came between them."""
    made = end["held"] - start["held"]
    if made <= 0:
        return Costs()
    return Costs(**{name: max(0.0, (end[name] - start[name]) / made) for name in
                    ("fds", "threads", "rss_bytes", "vsz_bytes", "data_bytes", "cpu_s")
                    if end.get(name) is not None and start.get(name) is not None})


def whole(per: float | None, within: float = 0.15) -> float | None:
    """A count per connection (fds, threads) as the whole number it is near: a slope of 0.93 or
    2.04 (a sample taken as a gauge lagged, a log file opened) is 1 or 2."""
    if per is None or per < 0.5:
        return per
    return float(round(per)) if abs(per - round(per)) <= within else per


def ready_to_predict(points: list[dict], target: int, fitted: Costs) -> bool:
    """Whether the samples say enough to predict from: enough of them over a wide enough span, and
    fds per connection near a whole number (a proxy's backend sockets, or a gauge read while the
    server lagged behind its accepts, make the first few samples' slope a fraction; more samples
    settle it). After three times the samples needed the prediction is made as the slope stands."""
    held = [p["held"] for p in points]
    if len(points) < MIN_POINTS or max(held) - min(held) < max(MIN_SPAN, target // 20):
        return False
    # a connection costs its server one fd or more: a slope below one is the lag, not the cost
    if fitted.fds is not None and fitted.fds < 0.85:
        return False
    return fitted.fds is None or whole(fitted.fds) == round(fitted.fds) or len(points) >= 3 * MIN_POINTS


def predict(costs: Costs, base: dict, limits: dict, client_bytes: int, held: int, t: float) -> Prediction:
    """The caps the costs meet, from the server's room before the load (`base`: its processes' fd
    room under their fd limits, room under their cgroup's memory.max and pids.max, RLIMIT_AS and
    RLIMIT_DATA, and the machine's threads) and the machine's (`limits["mem_available"]`: MemAvailable
    then, less the reserve kept free); `client_bytes`: what each connection costs this machine
    besides the server (the load and the kernel, both ends here). Each cap is that room over the
    cost per connection, so it does not lean on a count of what is held now (a target's accept queue
    holds connections the kernel counts and the target never took). `held` and `t` say when the
    prediction was made."""
    caps: dict[str, int] = {}

    def room(name: str, left: float | None, per: float | None) -> None:
        if left is not None and per and per > 1e-9:
            caps[name] = max(0, int(left / per))

    room("fd limit", base.get("fd_room"), whole(costs.fds))
    room("memory (MemAvailable)", limits.get("mem_available"),
         (costs.rss_bytes or 0) + client_bytes if costs.rss_bytes is not None else None)
    room("memory (cgroup memory.max)", base.get("cgroup_room"), costs.rss_bytes)
    room("memory (RLIMIT_AS)", base.get("as_room"), costs.vsz_bytes)
    room("memory (RLIMIT_DATA)", base.get("data_room"), costs.data_bytes)
    room("threads (pid_max, threads-max)", base.get("thread_room"), costs.threads)
    room("threads (cgroup pids.max)", base.get("pids_room"), costs.threads)
    binding = min(caps, key=caps.get) if caps else None
    return Prediction(held=held, t=t, costs=costs, caps=caps, binding=binding)


def describe(costs: Costs) -> str:
    """The costs as a person reads them: '2.0 fds, 284 KB, 0.01 threads per connection'."""
    parts = []
    if costs.fds is not None:
        parts.append(f"{costs.fds:.2f} fds")
    if costs.rss_bytes is not None:
        parts.append(f"{costs.rss_bytes / KB:,.1f} KB of RSS")
    if costs.threads is not None and costs.threads >= 0.01:
        parts.append(f"{costs.threads:.2f} threads")
    if costs.cpu_s is not None:
        parts.append(f"{costs.cpu_s * 1000:.2f} ms of CPU")
    return ", ".join(parts) + " per connection" if parts else "no cost measured"
