# Two commands are all a reader needs: `make run` and `make test`.
# Both create .venv and install the pinned packages on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
CHROMIUM ?= /usr/bin/chromium

.PHONY: run test test-matrix setup step01 step02 step02-gunicorn step03 lint clean

run: step03

test: setup
	@test -x $(CHROMIUM) || echo "NOTICE: no Chromium at $(CHROMIUM): the browser tests are SKIPPED (apt-get install chromium)."
	$(BIN)/pytest

# The suite on every Python 3.10-3.13 found, each in its own .venv-3.X.
test-matrix:
	tools/test_matrix.sh $(PYTHONS)

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

define open_client
	@echo "Open file://$(CURDIR)/client/index.html or http://$(HOST):$(PORT)/client/ in a browser."
endef

step01: setup
	@echo "Open file://$(CURDIR)/client/index.html: it will say this step has no WebSocket."
	cd step01_http && HOST=$(HOST) PORT=$(PORT) ../$(BIN)/python app.py

step02: setup
	$(open_client)
	cd step02_ws_gevent && ../$(BIN)/python wsgi.py --host $(HOST) --port $(PORT)

# The post's `gunicorn wsgi:app` serves no WebSocket: gunicorn needs a gevent-websocket worker.
# Each open WebSocket holds one of the worker's connections (1,000 by default).
step02-gunicorn: setup
	$(open_client)
	cd step02_ws_gevent && ../$(BIN)/gunicorn --worker-class handler.Worker --worker-connections 10000 \
		--bind $(HOST):$(PORT) --graceful-timeout 3 app:app

step03: setup
	$(open_client)
	cd step03_ws_asgi && ../$(BIN)/python app.py --host $(HOST) --port $(PORT)

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .venv-3.* reports .pytest_cache

# The Autobahn TestSuite cases 1.* to 7.* and 10.* against each server; reports in reports/.
.PHONY: conformance
conformance: setup
	$(BIN)/python tools/conformance.py

# docs/client.png: two chat tabs (file:// and /client/) talking through step03, in Chromium.
.PHONY: screenshot
screenshot: setup
	$(BIN)/python tools/screenshot.py

# step04: one chat across two processes (PORT and PORT2), through a throwaway Redis
# (nothing saved). Not 6379: that is where a system-wide Redis may already listen.
# Ctrl+C stops all three.
.PHONY: step04
PORT2 ?= 8001
REDIS_PORT ?= 6380
step04: setup
	@command -v redis-server >/dev/null || { echo "step04 needs redis-server: apt-get install redis-server"; exit 1; }
	@trap 'kill $$pids 2>/dev/null; wait' INT TERM EXIT; \
	redis-server --bind 127.0.0.1 --port $(REDIS_PORT) --save "" --appendonly no --loglevel warning & pids=$$!; \
	export REDIS_URL=redis://127.0.0.1:$(REDIS_PORT)/0; \
	cd step04_scale_out; \
	../$(BIN)/python app.py --host $(HOST) --port $(PORT) & pids="$$pids $$!"; \
	../$(BIN)/python app.py --host $(HOST) --port $(PORT2) & pids="$$pids $$!"; \
	sleep 1; \
	echo "One chat, two processes: open these two in a browser, or point any client at either port:"; \
	echo "  http://localhost:$(PORT)/client/?endpoint=chat"; \
	echo "  http://localhost:$(PORT2)/client/?endpoint=chat"; \
	echo "  or file://$(CURDIR)/client/index.html?url=ws://localhost:$(PORT2)/&endpoint=chat"; \
	echo "Ctrl+C stops both servers and Redis."; \
	wait

# gevent or ASGI? The same load on step02, step03 and two references: a table and docs/bench.png.
.PHONY: bench
bench: setup
	$(BIN)/python bench/run.py
