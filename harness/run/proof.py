"""The default proof (`harness proof`; `harness run` without --connections; `make run`).

1. More than 65,535 echo-verified connections to ONE port (100,000 where the machine allows),
   planned from the machine's limits.
2. A short fd-limit sweep of every backend: each stops at its limit minus the fds it holds.
3. A summary a newcomer understands, where the results are, and a report.
On a machine whose limits make 100,000 impractical (say a hard fd limit of 1,024), the target is
lowered to what PROOF_MAX_PROCESSES server and worker processes can hold, and the summary says why.
The narration goes to `out`; with `as_json` it goes to stderr and stdout gets one JSON document.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from harness.core.backends import BACKENDS
from harness.core.planning import PORT_NUMBERS, proof_target
from harness.core.rundoc import summary
from harness.report.page import build as build_report
from harness.run.config import RunConfig
from harness.run.execute import execute
from harness.run.prepare import RunError, prepare
from harness.run.sweep import sweep, table
from harness.system.limits import read_limits

SWEEP_LIMITS = [256, 1024]


def run_proof(base: RunConfig, out=print, as_json: bool = False, prog: str = "harness proof") -> int:
    if as_json:
        out = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    limits = read_limits()
    target, note = proof_target(limits, base.backend)
    try:
        prepared = prepare(replace(base, connections=target))
    except RunError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    out(f"The default proof ({prog}). Step 1: {target:,} connections to one port ({base.backend}, planned "
        "from this machine's limits)"
        + (f"; {note}" if note else ""))
    for reason in prepared.plan.reasons:
        out(f"  plan: {reason}")
    doc, run_dir = execute(prepared)
    out("  " + summary(doc, run_dir).replace("\n", "\n  "))
    if doc["stopped_by"] == "interrupted":
        return 130
    out(f"Step 2: fd-limit sweep, one server process per run, limits {', '.join(map(str, SWEEP_LIMITS))}")
    sweep_doc = sweep(list(BACKENDS), SWEEP_LIMITS, None, Path(base.out), progress=lambda line: out(line))
    out(table(sweep_doc))
    out("Step 3: what it shows")
    out(verdict(doc, sweep_doc))
    out(f"results: {run_dir} and {Path(sweep_doc['path']).parent}")
    report = build_report([run_dir, Path(sweep_doc["path"]).parent, *latest_benches(Path(base.out))],
                          run_dir / "report")
    out(f"report: {report}")
    if as_json:
        print(json.dumps({"run": doc, "run_dir": str(run_dir), "sweep": sweep_doc, "report": str(report)}, indent=2))
    return 0


def latest_benches(out: Path) -> list[Path]:
    """The newest echo and memory benchmark files under `out`, if any were recorded there."""
    found = []
    for kind in ("echo", "memory"):
        files = sorted(out.glob(f"bench-{kind}-*.json"))
        if files:
            found.append(files[-1])
    return found


def verdict(doc: dict, sweep_doc: dict) -> str:
    held, procs = doc["peak_connections"], doc["server_processes"]
    offsets = {b: f["offset"] for b, f in sweep_doc["fits"].items()}
    crossed = held > PORT_NUMBERS
    lines = [
        f"  held {held:,} concurrent, echo-verified connections on {doc['host']}:{doc['port']} with {procs} server "
        f"process(es) of {doc['server_fd_limit']:,} fds each ({doc['stopped_by']} reached)"
        + (f": more than the {PORT_NUMBERS:,} port numbers, all on one port." if crossed else "."),
        "  in the sweep each process stopped at its fd limit minus the fds it holds ("
        + ", ".join(f"{b} −{o:g}" for b, o in offsets.items()) + "), refusing the rest with EMFILE.",
        "  so the port number never capped anything: file descriptors (and memory) did.",
    ]
    if not crossed:
        lines.append(f"  ({PORT_NUMBERS:,} was not crossed here: this machine's limits allowed {held:,}.)")
    slopes = [f["slope"] for f in sweep_doc["fits"].values() if f["slope"] is not None]
    if slopes:
        lines.insert(2, f"  cap against fd limit has slope {min(slopes):.3f}-{max(slopes):.3f}: every extra fd "
                        "is one more connection.")
    return "\n".join(lines)
