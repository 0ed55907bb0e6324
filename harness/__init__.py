"""The harness: CLI, machine limits, orchestration, results and reports. It starts servers
(`servers/`) and Locust (`scenarios/`) as separate processes and never imports locust itself."""
