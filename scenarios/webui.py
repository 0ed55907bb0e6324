"""The web UI's Connections tab, through Locust's own extension points.

`extended_tabs` / `extended_tables` in the template args declare the tab and its columns; every
poll of /stats/requests gets an `extended_stats` entry with the rows, built from `BOARD`: each
server process's open connections against its cap, each worker's sockets and source addresses,
the kernel's count on the port, refusals by errno, and the limit predicted to stop the run next.
"""

from __future__ import annotations

import json
from pathlib import Path

from flask import Response, jsonify, request, send_from_directory

from scenarios.board import BOARD, SERIES
from scenarios.chart import SCRIPT

TAB = "connections"
COLUMNS = [("what", "What"), ("name", "Name"), ("open", "Open"), ("limit", "Limit"), ("detail", "Detail")]


def rows() -> list[dict]:
    status = BOARD.status()
    out = []
    for g in status.servers:
        out.append({"what": "server process", "name": f"p{g['index']} (pid {g['pid']})", "open": g["open"],
                    "limit": g["cap"], "detail": f"fd limit {g['fd_soft']:,} − {g['base_fds']} held; "
                    f"accepted {g['accepted']:,}; RSS {g['rss_bytes'] / 2**20:,.0f} MiB"})
    for w in status.workers:
        out.append({"what": "locust worker", "name": f"w{w['worker_index']} (pid {w['pid']})", "open": w["open"],
                    "limit": w["max_users"], "detail": f"sources {', '.join(w['sources'])}; "
                    f"connects ok {w['connects_ok']:,}; echoes verified {w['echoes_verified']:,}; "
                    f"RSS {w['rss_bytes'] / 2**20:,.0f} MiB; fds {w['fds']:,}"})
    t = status.totals
    out.append({"what": "kernel", "name": f"established on port {BOARD.port}", "open": status.kernel_established,
                "limit": "", "detail": f"peak {status.peak_kernel_established:,}"})
    for reason, n in status.server_refusals.items():
        out.append({"what": "refused by servers", "name": reason, "open": n, "limit": "", "detail": ""})
    for reason, n in t.connects_failed.items():
        out.append({"what": "failed connects", "name": reason, "open": n, "limit": "", "detail": ""})
    out.append({"what": "next limit", "name": status.phase, "open": t.open, "limit": "",
                "detail": status.next_limit + (f"; stopped by {status.stopped_by}" if status.stopped_by else "")})
    report = latest_report()
    if report:
        out.append({"what": "report", "name": report.split("/")[2], "open": "", "limit": "",
                    "detail": f"the last finished test's report: {report}"})
    diagnosis = live_diagnosis()
    if diagnosis:
        out.append({"what": "diagnosis", "name": diagnosis["limit"], "open": diagnosis["measured"],
                    "limit": diagnosis.get("predicted_cap") or "",
                    "detail": diagnosis["summary"] + (f"; fix: {diagnosis['fix']}" if diagnosis["fix"] else "")})
        out += [{"what": "evidence", "name": "", "open": "", "limit": "", "detail": line}
                for line in diagnosis["evidence"][:6]]
    return out


def latest_report() -> str | None:
    """The web UI's path to the report of the newest run `harness ui` wrote, if any."""
    if not BOARD.ui_results:
        return None
    try:
        runs = json.loads((Path(BOARD.ui_results) / "ui-runs.json").read_text())["runs"]
    except (OSError, ValueError, KeyError):
        return None
    return f"/runs/{runs[-1]}/report/report.html" if runs else None


def live_diagnosis() -> dict | None:
    """The diagnosis of the test in the UI once its ramp has ended; never an error in the page."""
    try:
        return BOARD.diagnosis()
    except Exception:  # noqa: BLE001 - a /proc read that raced a process's exit: no row this poll
        return None


# The start form's harness fields: (form key, type, lowest allowed, highest allowed).
FORM_RULES = (("user_count", int, 1, 10_000_000), ("spawn_rate", float, 1.0, 1_000_000.0),
              ("connections", int, 1, 10_000_000), ("echo_interval", float, 0.01, 3600.0),
              ("payload_size", int, 1, 65_536), ("ramp_rate", float, 1.0, 1_000_000.0),
              ("hold", float, 0.0, 86_400.0))


# What the servers were started with: the form may change what the clients speak, not the servers.
STARTED: dict = {"own_servers": False, "tls": False}


def form_error(form) -> str | None:
    """What is wrong with the start form's harness fields, said so a user can fix it; or None."""
    if STARTED["own_servers"] and form.get("protocol", "echo") not in ("echo", "hold"):
        return (f"protocol {form['protocol']}: the harness's own servers echo; choose echo or hold, or start "
                "harness ui --target HOST:PORT for a server that speaks it")
    if STARTED["own_servers"] and "tls" in form and (form["tls"] == "true") != STARTED["tls"]:
        return ("tls: the harness's own servers were started " + ("with" if STARTED["tls"] else "without")
                + " TLS (harness ui --tls); leave it " + ("on" if STARTED["tls"] else "off"))
    for key, kind, low, high in FORM_RULES:
        if key not in form or form[key] == "":
            continue
        try:
            value = kind(form[key])
        except ValueError:
            return f"{key.replace('_', ' ')} must be a{'n integer' if kind is int else ' number'}, not {form[key]!r}"
        if not low <= value <= high:
            return f"{key.replace('_', ' ')} {value:g} is out of range: use {low:g} to {high:g}"
    return None


def extend(web_ui) -> None:
    opts = web_ui.environment.parsed_options
    STARTED.update(own_servers=bool(getattr(opts, "server_gauges", "")), tls=bool(getattr(opts, "tls", False)))
    web_ui.template_args["extended_tabs"] = [{"title": "Connections", "key": TAB}]
    web_ui.template_args["extended_tables"] = [
        {"key": TAB, "structure": [{"key": k, "title": t} for k, t in COLUMNS]}]
    web_ui.template_args["extended_csv_files"] = [{"href": "/connections/json", "title": "Connections (JSON)"}]

    @web_ui.app.before_request
    def check_start_form():
        if request.path == "/swarm" and request.method == "POST":
            error = form_error(request.form)
            if error:
                return jsonify({"success": False, "message": error, "host": web_ui.environment.host})
        return None

    @web_ui.app.after_request
    def add_connections(response):
        if request.path == "/stats/requests" and response.is_json:
            response.set_data(json.dumps({**response.json, "extended_stats": [{"key": TAB, "data": rows()}]}))
        return response

    @web_ui.app.after_request
    def add_chart(response):
        # The Connections tab's picture: a small script of our own, added to Locust's page.
        if request.path == "/" and response.mimetype == "text/html" and not response.direct_passthrough:
            page = response.get_data(as_text=True)
            response.set_data(page.replace("</body>", '<script src="/connections/chart.js"></script></body>', 1))
        return response

    @web_ui.app.route("/connections/chart.js")
    def chart_script():
        return Response(SCRIPT.read_text(), mimetype="text/javascript")

    @web_ui.app.route("/runs/<name>/report/<path:file>")
    @web_ui.auth_required_if_enabled
    def run_report(name: str, file: str):
        # only the reports of runs this UI wrote: their names are in ui-runs.json
        try:
            runs = json.loads((Path(BOARD.ui_results) / "ui-runs.json").read_text())["runs"]
        except (OSError, ValueError, KeyError):
            runs = []
        if not BOARD.ui_results or name not in runs:
            return Response("no such run", status=404)
        return send_from_directory(Path(BOARD.ui_results) / name / "report", file)

    @web_ui.app.route("/connections/series")
    @web_ui.auth_required_if_enabled
    def connections_series():
        return SERIES.as_dict(BOARD)

    @web_ui.app.route("/connections/json")
    @web_ui.auth_required_if_enabled
    def connections_json():
        return {**BOARD.status().as_dict(), "diagnosis": live_diagnosis()}
