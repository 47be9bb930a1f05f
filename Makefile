# The two commands a new user runs: `make demo` and `make test`. Each sets up what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench lock clean up down

$(STAMP): pyproject.toml requirements-dev.lock
	@ops/bootstrap.sh "$(PYTHON)" "$(VENV)"
	@touch $(STAMP)

demo: $(STAMP)
	@[ -n "$$SMSQ_REDIS_URL" ] || ops/require-redis.sh
	@$(BIN)/python -m ops.demo

# Three test processes for most tests (pytest-xdist: the integration tests wait on real time
# more than they compute), stealing work so that the longest tests (the container stack, the
# outage) do not leave the others waiting behind them: 7 minutes here against 17 with xdist's
# default distribution; then the tests that assert timing or the rate at the simulator alone:
# beside another stack on 2 cores, CPU contention alone can delay a request by more than the
# rate window allows.
test: $(STAMP)
	@ops/require-redis.sh
	@$(BIN)/ruff check .
	@$(BIN)/python -m pytest -n 3 --dist worksteal -m "not serial" --durations=12
	@$(BIN)/python -m pytest -m serial

# The benchmark against the simulator (about 16 minutes on 2 cores; ARGS="--only enqueue"
# picks scenarios); see docs/performance.md.
bench: $(STAMP)
	@ops/require-redis.sh
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	@$(BIN)/python -m ops.bench $(ARGS)

# Pin every dependency with its hashes again after pyproject.toml's lists change.
lock: $(STAMP)
	@$(BIN)/python -m ops.lock

lint: $(STAMP)
	@$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

# A local stack that keeps running for trying the README's commands: a private redis-server,
# the DIDWW simulator, a worker, the ingester and the HTTP API on free ports, with their logs,
# pids and settings in $(UP_DIR) (load them with `source $(UP_DIR)/env`). `make down` stops it.
UP_DIR ?= .smsq

up: $(STAMP)
	@ops/require-redis.sh
	@$(BIN)/python -m ops.up --state-dir "$(UP_DIR)" up

down: $(STAMP)
	@$(BIN)/python -m ops.up --state-dir "$(UP_DIR)" down
