# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint typecheck pytest pytest-fast install clean bench bench-detect bench-workers bench-smtp-ab check-bare-clone check-local-runs browser ui-screenshots

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/reinstate demo

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Tests run in parallel workers (pytest-xdist; each worker makes its own Prefect test
# server and database templates). Each file stays on one worker: a file's tests share
# module fixtures, and the role tests share a PostgreSQL role, which is cluster-wide.
# One worker more than the machine has cores: the slowest tests mostly wait on the
# processes they start (Prefect servers, `reinstate serve`, workers, a browser), so a third
# worker on two cores fills that wait (measured: 8 min 15 s against 10 min 9 s with two,
# the whole suite passing with each). PYTEST_WORKERS=0 runs everything in this process.
PYTEST_WORKERS ?= $(shell echo $$(( $$(nproc 2>/dev/null || echo 1) + 1 )))
PYTEST := $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

pytest: $(STAMP) browser
	$(PYTEST)

# The fast run tries 300 random conditions against both databases instead of 2,000 (the
# differential property test, tests/test_condition_sql.py); `make test` tries them all.
pytest-fast: $(STAMP)
	REINSTATE_DIFFERENTIAL_EXAMPLES=$${REINSTATE_DIFFERENTIAL_EXAMPLES:-300} $(PYTEST) -m "not slow"

# The browser test drives Debian's Chromium (Playwright cannot download browsers here):
# installed with apt-get when missing and this user may install packages.
browser:
	bash checks/debian_package.sh chromium chromium "the browser test"

# The operator guide's screenshots, taken again into docs/ui/ by the browser test.
ui-screenshots: $(STAMP) browser
	REINSTATE_SCREENSHOTS_DIR=$(CURDIR)/docs/ui $(BIN)/python -m pytest -p no:xdist tests/test_ui_browser.py -k postgresql

# `make test`: everything (ruff, mypy, the whole suite with the fault tests, both
# databases); `make test-fast`: the same without the slow fault and deployment tests.
test test-fast: $(STAMP)
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory lint typecheck $(if $(filter test-fast,$@),pytest-fast,pytest); \
	status=$$?; echo "make $@: $$(( $$(date +%s) - start )) s, exit status $$status"; \
	exit $$status

bench: $(STAMP)
	bash checks/debian_package.sh smtp-sink postfix "the benchmark's notices"
	$(BIN)/python -m bench.pipeline_bench --accounts $(or $(ACCOUNTS),100000) --batch-size $(or $(BATCH),5000)
	$(BIN)/python -m bench.pipeline_bench --accounts $(or $(ACCOUNTS),100000) --batch-size $(or $(BATCH),5000) --shape mixed --skip-notify

# Fault detection: a million bans on both databases, then where it stops finding faults
# (bench/detect_bench.py).
bench-detect: $(STAMP)
	$(BIN)/python -m bench.detect_bench speed --bans $(or $(BANS),1000000)
	$(BIN)/python -m bench.detect_bench sweep --seeds $(or $(SEEDS),10)
	$(BIN)/python -m bench.detect_bench healthy --seeds $(or $(HEALTHY),100)

# One process against two workers on the same incident (bench/workers_bench.py).
bench-workers: $(STAMP)
	bash checks/debian_package.sh smtp-sink postfix "the benchmark's notices"
	$(BIN)/python -m bench.workers_bench --accounts $(or $(ACCOUNTS),100000) --batch-size $(or $(BATCH),5000)

# SMTP pipelining on and off through a proxy adding latency (bench/smtp_pipelining_ab.py);
# into smtp-sink where Postfix is installed, else aiosmtpd. AB_DELAYS: one-way, in ms.
AB_NOTICES ?= 2000
AB_DELAYS ?= 0,1,5
AB_ROUNDS ?= 3
bench-smtp-ab: $(STAMP)
	bash checks/debian_package.sh smtp-sink postfix "the benchmark's notices"
	$(BIN)/python -m bench.smtp_pipelining_ab --notices $(AB_NOTICES) --delays $(AB_DELAYS) --rounds $(AB_ROUNDS)

# A new user's first steps in an empty folder: clone, `make test`, `make demo`.
check-bare-clone:
	bash checks/bare_clone.sh

# Ten back-to-back local dry runs beside a CPU-bound process, PREFECT_HOME unset.
check-local-runs: $(STAMP)
	$(BIN)/python -m checks.local_runs_under_load --runs $(or $(RUNS),10)

clean:
	rm -rf $(VENV) reinstatement.db* outbox build *.egg-info .prefect
