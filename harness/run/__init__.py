"""Orchestration: one headless run (`execute`: servers, a Locust cluster, the sampler), the Locust
master and workers as processes (`cluster`), the live progress line (`progress`), the default
proof (`proof`), the fd-limit sweep (`sweep`), the web UI session (`ui`) and the self-check
(`check`). Nothing here imports locust: Locust runs in its own processes."""
