# One command for the main job, one for the tests; both install what they need: .venv, and the
# Debian packages below (as root, with apt-get; elsewhere it says which are missing).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# package:binary. Chromium drives the web UI and report tests (Playwright's own browser download
# does not work here); tcpdump is the tour's capture step; redis-server and redis-tools are the C
# reference (`harness bench reference`) and a real server to load; nginx is another real server.
PACKAGES := chromium:/usr/bin/chromium tcpdump:/usr/bin/tcpdump redis-server:/usr/bin/redis-server \
            redis-tools:/usr/bin/redis-benchmark nginx:/usr/sbin/nginx

.PHONY: run test bench reference debian clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Installs only what is missing. policy-rc.d answers 101 while apt runs, so the packages' services
# (redis on 6379, nginx on 80) are not started: the tests start their own on free ports.
debian:
	@missing=""; for pair in $(PACKAGES); do [ -x "$${pair#*:}" ] || missing="$$missing $${pair%%:*}"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
		echo "missing Debian packages:$$missing (install them as root: apt-get install$$missing)"; exit 1; fi; \
	echo "installing Debian packages:$$missing"; \
	if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; \
		chmod +x /usr/sbin/policy-rc.d; made=1; fi; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; status=$$?; \
	if [ -n "$$made" ]; then rm -f /usr/sbin/policy-rc.d; fi; exit $$status

run: $(STAMP) debian
	$(VENV)/bin/harness proof

# A skipped test fails the run (tests/conftest.py): nothing may skip on this machine or in CI.
test: $(STAMP) debian
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m pytest -q -n 0 -m bench --benchmark-enable tests/

reference: $(STAMP) debian
	$(VENV)/bin/harness bench reference

clean:
	rm -rf $(VENV) build *.egg-info
