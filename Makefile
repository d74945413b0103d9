# Two commands are all a reader needs: `make run` and `make test`.
# Each creates .venv on first use and installs what it needs, pinned: running a step
# needs requirements.txt only; testing, linting and the tools need requirements-dev.txt.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The same bin, still right after a recipe has cd'ed into a step's folder.
STEP_BIN := $(abspath $(BIN))
HOST ?= 127.0.0.1
PORT ?= 8000

RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
PIP_INSTALL := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: run test test-matrix setup setup-dev lint clean \
	step01 step02-minimal step02 step02-gunicorn step03-minimal step03 step04

run: step03

# ---- Set-up ----------------------------------------------------------------

setup: $(RUN_STAMP)
setup-dev: $(DEV_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): requirements.txt | $(BIN)/python
	$(PIP_INSTALL) -r requirements.txt
	touch $@

# requirements-dev.txt includes requirements.txt: the run stamp is up to date too.
$(DEV_STAMP): requirements-dev.txt requirements.txt | $(BIN)/python
	$(PIP_INSTALL) -r requirements-dev.txt
	touch $@ $(RUN_STAMP)

# ---- Tests and tools -------------------------------------------------------

# One NOTICE per missing system part: the tests that need it are skipped, not failed.
test: $(DEV_STAMP)
	@chromium=$$($(BIN)/python tools/browser.py) || \
		echo "NOTICE: the browser tests are SKIPPED: $$chromium."
	@command -v redis-server >/dev/null || \
		echo "NOTICE: no redis-server: the step04-redis, step05 and step06 tests are SKIPPED (apt-get install redis-server)."
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || \
		echo "NOTICE: no nginx: step06's tests through nginx are SKIPPED (apt-get install nginx)."
	$(BIN)/pytest -m "not soak" --outcomes=reports/outcomes.json
	$(BIN)/python tools/protections_table.py --check reports/outcomes.json

# docs/protections.md: every behaviour x every server, from a run of the three suites.
.PHONY: protections
protections: $(DEV_STAMP)
	$(BIN)/pytest tests/test_contract.py tests/test_bad_input.py tests/test_faults.py \
		--outcomes=reports/outcomes.json
	$(BIN)/python tools/protections_table.py reports/outcomes.json

# The suite on every Python 3.10-3.13 found, each in its own .venv-3.X: every
# `make test` there installs requirements-dev.txt into its own virtual environment.
test-matrix:
	tools/test_matrix.sh $(PYTHONS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .venv-3.* reports .pytest_cache

# The Autobahn TestSuite cases 1.* to 7.* and 10.* against each server; reports in reports/.
.PHONY: conformance
conformance: $(DEV_STAMP)
	$(BIN)/python tools/conformance.py

# docs/client.png: two chat tabs (file:// and /client/) talking through step03, in Chromium.
.PHONY: screenshot
screenshot: $(DEV_STAMP)
	$(BIN)/python tools/screenshot.py

# gevent or ASGI? The same load on step02, step03 and two references: a table and docs/bench.png.
.PHONY: bench
bench: $(DEV_STAMP)
	$(BIN)/python bench/run.py

# ---- The steps -------------------------------------------------------------

# The client opened from file:// talks to ws://localhost:8000/ unless given ?url=.
define open_client
	@echo "Open file://$(CURDIR)/client/index.html?url=ws://$(HOST):$(PORT)/ or http://$(HOST):$(PORT)/client/ in a browser."
endef

step01: $(RUN_STAMP)
	@echo "Open file://$(CURDIR)/client/index.html?url=ws://$(HOST):$(PORT)/: it will say this step has no WebSocket."
	cd step01_http && HOST=$(HOST) PORT=$(PORT) $(STEP_BIN)/python app.py

# The first rungs serve only the echo on /: no /client/, no /chat.
step02-minimal: $(RUN_STAMP)
	@echo "Open file://$(CURDIR)/client/index.html?url=ws://$(HOST):$(PORT)/ in a browser (echo only)."
	cd step02_ws_gevent && HOST=$(HOST) PORT=$(PORT) $(STEP_BIN)/python minimal.py

step02: $(RUN_STAMP)
	$(open_client)
	cd step02_ws_gevent && $(STEP_BIN)/python wsgi.py --host $(HOST) --port $(PORT)

# The post's `gunicorn wsgi:app` serves no WebSocket: gunicorn needs a gevent-websocket worker.
# Each open WebSocket holds one of the worker's connections (1,000 by default).
step02-gunicorn: $(RUN_STAMP)
	$(open_client)
	cd step02_ws_gevent && $(STEP_BIN)/gunicorn --worker-class protections.Worker \
		--worker-connections 10000 --bind $(HOST):$(PORT) --graceful-timeout 3 app:app

# The same app on gevent through simple-websocket (maintained, wsproto) instead of gevent-websocket.
.PHONY: step02-simple
step02-simple: $(RUN_STAMP)
	$(open_client)
	cd step02_ws_gevent && $(STEP_BIN)/python wsgi_simple.py --host $(HOST) --port $(PORT)

step03-minimal: $(RUN_STAMP)
	@echo "Open file://$(CURDIR)/client/index.html?url=ws://$(HOST):$(PORT)/ in a browser (echo only)."
	cd step03_ws_asgi && HOST=$(HOST) PORT=$(PORT) $(STEP_BIN)/python minimal.py

step03: $(RUN_STAMP)
	$(open_client)
	cd step03_ws_asgi && $(STEP_BIN)/python server.py --host $(HOST) --port $(PORT)

# step04: one chat across two processes (PORT and PORT2), through a throwaway Redis
# (nothing saved). Not 6379: that is where a system-wide Redis may already listen.
# Ctrl+C stops all three.
PORT2 ?= 8001
REDIS_PORT ?= 6380
step04: $(RUN_STAMP)
	@command -v redis-server >/dev/null || { echo "step04 needs redis-server: apt-get install redis-server"; exit 1; }
	@trap 'kill $$pids 2>/dev/null; wait' INT TERM EXIT; \
	redis-server --bind 127.0.0.1 --port $(REDIS_PORT) --save "" --appendonly no --loglevel warning & pids=$$!; \
	export REDIS_URL=redis://127.0.0.1:$(REDIS_PORT)/0; \
	cd step04_scale_out; \
	$(STEP_BIN)/python server.py --host $(HOST) --port $(PORT) & pids="$$pids $$!"; \
	$(STEP_BIN)/python server.py --host $(HOST) --port $(PORT2) & pids="$$pids $$!"; \
	sleep 1; \
	echo "One chat, two processes: open these two in a browser, or point any client at either port:"; \
	echo "  http://localhost:$(PORT)/client/?endpoint=chat"; \
	echo "  http://localhost:$(PORT2)/client/?endpoint=chat"; \
	echo "  or file://$(CURDIR)/client/index.html?url=ws://localhost:$(PORT2)/&endpoint=chat"; \
	echo "Ctrl+C stops both servers and Redis."; \
	wait

# step04's first rung: two processes relaying one chat through a throwaway Redis.
.PHONY: step04-minimal
step04-minimal: $(RUN_STAMP)
	@command -v redis-server >/dev/null || { echo "step04 needs redis-server: apt-get install redis-server"; exit 1; }
	@trap 'kill $$pids 2>/dev/null; wait' INT TERM EXIT; \
	redis-server --bind 127.0.0.1 --port $(REDIS_PORT) --save "" --appendonly no --loglevel warning & pids=$$!; \
	export REDIS_URL=redis://127.0.0.1:$(REDIS_PORT)/0 HOST=$(HOST); \
	cd step04_scale_out; \
	PORT=$(PORT) $(STEP_BIN)/python minimal.py & pids="$$pids $$!"; \
	PORT=$(PORT2) $(STEP_BIN)/python minimal.py & pids="$$pids $$!"; \
	sleep 1; \
	echo "One chat relayed by two processes: point a client at each port:"; \
	echo "  file://$(CURDIR)/client/index.html?url=ws://localhost:$(PORT)/&endpoint=chat"; \
	echo "  file://$(CURDIR)/client/index.html?url=ws://localhost:$(PORT2)/&endpoint=chat"; \
	echo "Ctrl+C stops both servers and Redis."; \
	wait

# step05: step04's two processes, the chat on a Redis stream that clients resume from.
# This Redis appends every change to a file (AOF) in a temporary folder: kill it and
# start it again with the command printed, and nothing acknowledged is lost.
# Ctrl+C stops all three and removes the folder.
.PHONY: step05
step05: $(RUN_STAMP)
	@command -v redis-server >/dev/null || { echo "step05 needs redis-server: apt-get install redis-server"; exit 1; }
	@dir=$$(mktemp -d); trap 'kill $$pids 2>/dev/null; wait; rm -rf "$$dir"' INT TERM EXIT; \
	redis-server --bind 127.0.0.1 --port $(REDIS_PORT) --save "" --appendonly yes --dir "$$dir" --loglevel warning & pids=$$!; \
	export REDIS_URL=redis://127.0.0.1:$(REDIS_PORT)/0; \
	cd step05_resume; \
	$(STEP_BIN)/python server.py --host $(HOST) --port $(PORT) & pids="$$pids $$!"; \
	$(STEP_BIN)/python server.py --host $(HOST) --port $(PORT2) & pids="$$pids $$!"; \
	sleep 1; \
	echo "One chat, two processes, resumable: open these two in a browser, or point any client at either port:"; \
	echo "  http://localhost:$(PORT)/client/?endpoint=chat"; \
	echo "  http://localhost:$(PORT2)/client/?endpoint=chat"; \
	echo "Redis keeps its AOF in $$dir. To restart it: kill -9 $${pids%% *}, then in another terminal"; \
	echo "  redis-server --bind 127.0.0.1 --port $(REDIS_PORT) --save '' --appendonly yes --dir $$dir"; \
	echo "Ctrl+C stops both servers and Redis."; \
	wait

# step05's first rung: two processes on one Redis stream, each client reading it from its last id.
.PHONY: step05-minimal
step05-minimal: $(RUN_STAMP)
	@command -v redis-server >/dev/null || { echo "step05 needs redis-server: apt-get install redis-server"; exit 1; }
	@dir=$$(mktemp -d); trap 'kill $$pids 2>/dev/null; wait; rm -rf "$$dir"' INT TERM EXIT; \
	redis-server --bind 127.0.0.1 --port $(REDIS_PORT) --save "" --appendonly yes --dir "$$dir" --loglevel warning & pids=$$!; \
	export REDIS_URL=redis://127.0.0.1:$(REDIS_PORT)/0 HOST=$(HOST); \
	cd step05_resume; \
	PORT=$(PORT) $(STEP_BIN)/python minimal.py & pids="$$pids $$!"; \
	PORT=$(PORT2) $(STEP_BIN)/python minimal.py & pids="$$pids $$!"; \
	sleep 1; \
	echo "One chat on a Redis stream, two processes: point a client at each port:"; \
	echo "  file://$(CURDIR)/client/index.html?url=ws://localhost:$(PORT)/&endpoint=chat"; \
	echo "  file://$(CURDIR)/client/index.html?url=ws://localhost:$(PORT2)/&endpoint=chat"; \
	echo "Reconnect with ws://localhost:$(PORT2)/chat?last_id=<the last event_id you saw>."; \
	echo "Ctrl+C stops both servers and Redis."; \
	wait

# step06: the chat in production on this machine: a throwaway Redis, two app processes
# (PORT, PORT2) and nginx over TLS (HTTPS_PORT; HTTP_PORT redirects to it), with a
# certificate from a CA made now and a demo user with a random password, both printed.
# Ctrl+C stops all four and removes their temporary folder.
HTTPS_PORT ?= 8443
HTTP_PORT ?= 8080
.PHONY: step06
step06: $(RUN_STAMP)
	@command -v redis-server >/dev/null || { echo "step06 needs redis-server: apt-get install redis-server"; exit 1; }
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { echo "step06 needs nginx: apt-get install nginx"; exit 1; }
	cd step06_production && $(STEP_BIN)/python stack.py --port $(HTTPS_PORT) --http-port $(HTTP_PORT) \
		--app-ports $(PORT) $(PORT2) --redis-port $(REDIS_PORT)

# Many chat clients on every hardened server for minutes: nothing lost, duplicated or
# left open but deaf, memory back down. Options: make soak SOAK_ARGS="--quick".
.PHONY: soak
soak: $(DEV_STAMP)
	$(BIN)/python tools/soak.py $(SOAK_ARGS)
