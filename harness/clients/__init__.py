"""Lean clients that the benchmarks, the self-check and the tour use: the measuring instruments run
as their own processes (`instruments`), fill-to-cap probes (`probe`) and the tour's socket
experiments (`experiments`). No locust import: Locust (`scenarios/`) is the load engine of runs."""
