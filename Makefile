# One command for the main job, one for the tests; both install what they need: .venv, and the
# Debian packages below (as root, with apt-get; elsewhere it says which are missing).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# package:binary (a file the package installs). python3-venv gives `python3 -m venv` its pip;
# Chromium drives the web UI and report tests (Playwright's own browser download does not work
# here); tcpdump is the tour's capture step; redis-server and redis-tools are the C reference
# (`harness bench reference`) and a real server to load; nginx is another real server to load;
# iproute2 (ip, tc, ss) makes the test hosts and counts connections, nftables drops packets for --loss;
# gcc builds `harness bench connect`'s C helper (the kernel's own cost of a connection); mosquitto
# (MQTT), Node.js with the `ws` package (WebSocket; node-ws lives in /usr/share/nodejs) and HAProxy
# (a TCP proxy: two fds a connection) are more real servers to load; prometheus scrapes --metrics.
PACKAGES := chromium:/usr/bin/chromium tcpdump:/usr/bin/tcpdump redis-server:/usr/bin/redis-server \
            redis-tools:/usr/bin/redis-benchmark nginx:/usr/sbin/nginx iproute2:/usr/sbin/ip \
            nftables:/usr/sbin/nft gcc:/usr/bin/gcc mosquitto:/usr/sbin/mosquitto \
            node-ws:/usr/share/nodejs/ws/package.json haproxy:/usr/sbin/haproxy prometheus:/usr/bin/prometheus

.PHONY: run test bench reference debian clean

$(STAMP): pyproject.toml | debian
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Installs only what is missing. While apt runs, policy-rc.d answers 101 so the packages' services
# (redis on 6379, nginx on 80, mosquitto on 1883, prometheus on 9090) are not started, and they are disabled where systemd would start
# them at boot: the tests start their own, on free ports. Without root (or apt) it says what is
# missing and fails, unless HARNESS_ALLOW_SKIPS=1 lets the tests that need them skip.
debian:
	@missing=""; $(PYTHON) -c 'import ensurepip' 2>/dev/null || missing=" python3-venv"; \
	for pair in $(PACKAGES); do [ -e "$${pair#*:}" ] || missing="$$missing $${pair%%:*}"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
		echo "missing Debian packages:$$missing (as root: apt-get install$$missing)"; \
		[ -n "$$HARNESS_ALLOW_SKIPS" ]; exit $$?; fi; \
	echo "installing Debian packages:$$missing"; \
	if [ ! -e /usr/sbin/policy-rc.d ]; then trap 'rm -f /usr/sbin/policy-rc.d' EXIT INT TERM; \
		printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; fi; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
	if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then \
		systemctl disable --now redis-server nginx mosquitto haproxy prometheus prometheus-node-exporter \
			>/dev/null 2>&1 || true; fi

run: debian $(STAMP)
	$(VENV)/bin/harness proof

# A skipped test fails the run (tests/conftest.py): nothing may skip on this machine or in CI.
test: debian $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m pytest -q -n 0 -m bench --benchmark-enable tests/

reference: debian $(STAMP)
	$(VENV)/bin/harness bench reference

clean:
	rm -rf $(VENV) build *.egg-info
