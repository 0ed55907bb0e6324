# One command for the main job, one for the tests; both install what they need into .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

CHROMIUM := /usr/bin/chromium

.PHONY: run test bench reference clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/harness run

# The web UI and report tests drive Debian's Chromium (Playwright's own browser download does not
# work here); the tour's optional capture step uses tcpdump.
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium tcpdump >/dev/null; \
	else echo "chromium is not installed and this user cannot apt-get it: the web UI test will be skipped"; fi

test: $(STAMP) $(CHROMIUM) $(REDIS_BENCHMARK)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m pytest -q -n 0 -m bench --benchmark-enable tests/

# The C reference for `harness bench reference`: Debian's redis-server, and redis-benchmark (redis-tools),
# which the tests also use to check the reference's method against an echo server.
REDIS_BENCHMARK := /usr/bin/redis-benchmark
REDIS_SERVER := /usr/bin/redis-server
$(REDIS_BENCHMARK) $(REDIS_SERVER):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			$(if $(filter $@,$(REDIS_SERVER)),redis-server,redis-tools) >/dev/null; \
	else echo "$@ is not installed and this user cannot apt-get it"; fi

reference: $(STAMP) $(REDIS_BENCHMARK) $(REDIS_SERVER)
	$(VENV)/bin/harness bench reference

clean:
	rm -rf $(VENV) build *.egg-info
