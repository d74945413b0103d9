# Two commands are all a reader needs: `make run` and `make test`.
# Both create .venv and install the pinned packages on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
CHROMIUM ?= /usr/bin/chromium

.PHONY: run test setup step01 step02 step02-gunicorn step03 lint clean

run: step03

test: setup
	@test -x $(CHROMIUM) || echo "NOTICE: no Chromium at $(CHROMIUM): the browser tests are SKIPPED (apt-get install chromium)."
	$(BIN)/pytest

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
step02-gunicorn: setup
	$(open_client)
	cd step02_ws_gevent && ../$(BIN)/gunicorn --worker-class handler.Worker --bind $(HOST):$(PORT) --graceful-timeout 3 app:app

step03: setup
	$(open_client)
	cd step03_ws_asgi && ../$(BIN)/python app.py --host $(HOST) --port $(PORT)

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) reports .pytest_cache
