"""The costs a connection puts on the processes serving the port, watched as the ramp goes: each
sample's totals (fds, threads, RSS, virtual and data size, CPU) beside the connections held, and
once the ramp has gone far enough, one prediction of the limit those costs meet first, recorded
before it is met (`harness.core.costs`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.core import costs
from harness.system import listeners


@dataclass
class CostWatch:
    target: int  # the connections the run ramps to
    client_bytes: int  # what a connection costs this machine besides the server (the load, the kernel)
    reserve: int  # MemAvailable the ramp keeps free
    limits: dict
    points: list[dict] = field(default_factory=list)  # the ramp's samples of the serving processes
    base: dict | None = None  # the first sample, before the load
    base_state: dict | None = None  # ...and the room the serving processes and the machine had then
    base_mem_available: int = 0
    held_point: dict | None = None  # the hold's last sample at its most held: settled, nothing in flight
    prediction: costs.Prediction | None = None
    lost: bool = False  # a serving process went away: later samples no longer measure what a connection costs

    def observe(self, procs: list[dict], held: int | None, phase: str, t: float, mem_available: int) -> dict:
        """One sample of the serving processes (already read again); returns its totals. `held`: the
        connections they hold now, or None where it was not counted with this sample (the sample
        then only reports the totals)."""
        state = listeners.server_state(procs, self.limits)
        if held is None:
            return state
        point = {"held": held, "fds": state["held_fds"], "threads": state["threads"], "rss_bytes": state["rss_bytes"],
                 "vsz_bytes": state["vsz_bytes"], "data_bytes": state["data_bytes"], "cpu_s": state["cpu_s"]}
        if self.base is None:
            self.base, self.base_state, self.base_mem_available = point, state, mem_available
        self.lost = self.lost or any(p.get("gone") for p in procs)
        if self.lost:
            return state
        if phase == "ramp":
            self.points.append(point)
            fitted = costs.fit(self.points) if self.prediction is None else None
            if fitted is not None and costs.ready_to_predict(self.points, self.target, fitted):
                # during a steady ramp the connections in flight are about as many at each sample, so
                # the slope leaves their cost (a TLS handshake's buffers) out
                limits = {**self.limits, "mem_available": max(0, self.base_mem_available - self.reserve)}
                self.prediction = costs.predict(fitted, self.base_state, limits, self.client_bytes, held, t)
        elif phase == "hold" and held and (self.held_point is None or held >= self.held_point["held"]):
            self.held_point = point  # the servers' gauges lag /proc while they are busy: the latest is settled
        return state

    def costs(self) -> costs.Costs | None:
        """The costs per connection: from the first sample to the hold's settled last (nothing in
        flight then), or the ramp's slope where the run never held."""
        if self.base is not None and self.held_point is not None:
            return costs.between(self.base, self.held_point)
        points = [self.base, *self.points] if self.base is not None else self.points
        return costs.fit(points) if len(points) >= 2 else None

    def as_dict(self) -> dict:
        fitted = self.costs()
        # while ramping, the CPU a connection costs is its handshake's and its first reply's alone
        ramp = costs.fit(self.points) if len(self.points) >= 3 else None
        return {"costs": fitted.as_dict() if fitted else None, "ramp_costs": ramp.as_dict() if ramp else None,
                "prediction": self.prediction.as_dict() if self.prediction else None}
