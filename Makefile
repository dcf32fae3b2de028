# Everything a fresh Debian machine needs, from nothing but Python and apt.
# `make run ARGS="--port 9000"` passes options to `relay dev`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two stamps: relay and what it runs on, then the test tooling on top (Playwright, schemathesis,
# ruff, mypy, oxlint, the deploy checkers), so that `make run` starts without waiting for the
# second.
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed
VERSION = $(shell $(PYTHON) -c "import relay; print(relay.__version__)")
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# The JavaScript relay serves, held to .oxlintrc.json (undefined and unused names, and the like).
JSLINT = $(BIN)/oxlint --config .oxlintrc.json --deny-warnings relay/console/js relay/docs

.PHONY: run test test-fast lint lock bench celery batch adaptive fairness fanout large soak chaos capacity clean redis postgres chromium faketime promtool image

run: $(RUN_STAMP) redis postgres
	$(BIN)/relay dev $(ARGS)

# The suite runs in TEST_PROCESSES pytest processes side by side, each with a redis-server and
# a PostgreSQL of its own. Most tests wait (retry schedules, processes starting) rather than
# compute, so more processes than cores pay. A module whose tests share one expensive fixture
# names an xdist_group and runs whole in one process.
TEST_PROCESSES ?= 4
PYTEST := $(BIN)/pytest -n $(TEST_PROCESSES) --dist loadgroup

test: $(STAMP) redis postgres chromium faketime promtool
	$(BIN)/ruff check relay tests bench
	$(BIN)/ruff format --check relay tests bench
	$(BIN)/mypy
	$(JSLINT)
	$(PYTEST)

# The inner loop: every test but the system tests (marked `system`: relay processes, Chromium,
# schemathesis, client generation, the wheel build, deploy checkers, bench runs).
test-fast: $(STAMP) redis postgres
	$(PYTEST) -m "not system"

lint: $(STAMP)
	$(BIN)/ruff check relay tests bench
	$(BIN)/mypy
	$(JSLINT)

# Throughput and latency, what deliveries waiting behind a hanging endpoint cost, then relay
# against a Celery baseline.
bench: $(STAMP) redis postgres
	$(BIN)/python -m bench $(BENCH_ARGS)
	$(BIN)/python -m bench.waiting $(WAITING_ARGS)
	$(MAKE) celery

# relay's deliveries/s against a Celery task that signs and POSTs with httpx, at fan-out 1 and
# 10 (`CELERY_ARGS=--quick` for a short run). Celery runs in a virtualenv of its own, made on
# first use from bench/baseline/requirements.txt.
celery: $(STAMP) redis postgres
	$(BIN)/python -m bench.baseline $(CELERY_ARGS)

# POST /v1/events against POST /v1/events/batch at 32 clients: events/s of each and the ratio.
batch: $(STAMP) redis postgres
	$(BIN)/python -m bench.batch $(BATCH_ARGS)

# What adaptive endpoint concurrency gives a fast endpoint and spares one that degrades.
adaptive: $(STAMP) redis postgres
	$(BIN)/python -m bench.adaptive $(ADAPTIVE_ARGS)

# One tenant's hanging webhooks and backlog against another tenant's steady traffic: the
# other's latency, and the first one's healthy webhooks, while the backlog hangs.
fairness: $(STAMP) redis postgres
	$(BIN)/python -m bench.fairness $(FAIRNESS_ARGS)

# One event fanned out to 20,000 webhooks: how long Redis stalls for every other call meanwhile.
fanout: $(STAMP) redis postgres
	$(BIN)/python -m bench.fanout $(FANOUT_ARGS)

# One large event fanned out to 100 webhooks, delivered: how long Redis stalls for every other call.
large: $(STAMP) redis postgres
	$(BIN)/python -m bench.large $(LARGE_ARGS)

# Steady load with failing receivers; reports whether memory, files and queues stay bounded.
soak: $(STAMP) redis postgres
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

# Load while workers and Redis are killed, paused and clock-skewed; nothing may be lost or stuck.
chaos: $(STAMP) redis postgres faketime
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS)

# Redis memory under a million deliveries, Redis commands per delivery, lists on 10 M deliveries
# in PostgreSQL and dropping a day of a million.
capacity: $(STAMP) redis postgres
	$(BIN)/python -m bench.capacity $(CAPACITY_ARGS)

# Debian's redis-server, and redis-sentinel for the failover tests and `make chaos`, each
# installed only when it is not on PATH already.
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing redis-server with apt-get"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server >/dev/null; }
	@command -v redis-sentinel >/dev/null 2>&1 || { \
		echo "installing redis-sentinel with apt-get"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-sentinel >/dev/null; }

# Debian's PostgreSQL server, installed only when no initdb and postgres are found; Debian keeps
# them off PATH. relay runs its own cluster, so Debian is told not to create and start its own.
postgres:
	@{ ls /usr/lib/postgresql/*/bin/initdb /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || \
		{ command -v initdb && command -v postgres; } >/dev/null 2>&1; } || { \
		echo "installing postgresql with apt-get"; \
		[ -e /etc/postgresql-common/createcluster.conf ] || { \
			$(SUDO) mkdir -p /etc/postgresql-common && \
			echo "create_main_cluster = false" | \
				$(SUDO) tee /etc/postgresql-common/createcluster.conf >/dev/null; }; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive UCF_FORCE_CONFFOLD=1 \
			apt-get install -y -qq postgresql >/dev/null; }

# Debian's Chromium for the console's browser tests (Playwright drives it; it downloads nothing).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing chromium with apt-get"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

# Debian's faketime (libfaketime): the chaos run skews one worker's clock with it.
faketime:
	@command -v faketime >/dev/null 2>&1 || { \
		echo "installing faketime with apt-get"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq faketime >/dev/null; }

# promtool checks and unit-tests the alert rules; Debian ships it in the prometheus package.
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
		echo "installing promtool (Debian's prometheus package) with apt-get"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
			prometheus >/dev/null; }

# The container image (needs a Docker or Podman daemon and access to the base image's registry).
image:
	docker build -f deploy/Dockerfile --build-arg VERSION=$(VERSION) --build-arg REVISION=$$(git rev-parse HEAD) -t relay:$(VERSION) .

# Every release pinned by requirements.lock, the one tested: see README, "Development".
$(RUN_STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e .
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	$(BIN)/pip install -q -c requirements.lock -e '.[test]'
	touch $(STAMP)

# The newest releases pyproject.toml allows, pinned again; then `make test` before committing.
lock: $(STAMP)
	$(BIN)/pip install -q pip-tools
	$(BIN)/pip-compile -q --upgrade --extra test --strip-extras --no-emit-index-url \
		--no-emit-find-links --no-emit-trusted-host -o requirements.lock pyproject.toml

clean:
	rm -rf $(VENV) .relay .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
