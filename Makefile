# The two commands of the README: `make demo` (the main job) and `make test` (everything CI checks).
# Both install what they need first, so they work on a fresh machine.
PYTHON ?= python3
OUT ?= demo
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: install lock site-tools demo test test-long notebooks docs coverage

install:  ## exactly the versions of requirements.lock (torch 2.13.0's CPU build among them), then the package itself
	$(PYTHON) -m pip install -q --no-deps -r requirements.lock
	$(PYTHON) -m pip install -q --no-deps --no-build-isolation -e .

lock:  ## refresh requirements.lock from settings.ini's ranges, in a new virtual environment (scripts/lock.sh)
	PYTHON=$(PYTHON) bash scripts/lock.sh

site-tools: install  ## what the docs site's browser test needs beyond the lock: Debian's chromium
	command -v chromium >/dev/null || { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium; } \
	  || { echo "could not install Debian's chromium (apt-get install chromium): the docs site's browser test needs it" >&2; exit 1; }

demo: install  ## the main job
	rmsecrets demo --out $(OUT)

test: install site-tools  ## everything CI checks: notebooks and package in sync, notebooks run, no undefined names, then pytest
	bash scripts/test.sh

test-long: install site-tools  ## what CI leaves out: the lessons' slow cells (their assertions) and the `long` tests
	bash scripts/test.sh --long

coverage: install site-tools  ## line coverage of rmsecrets/ over the CI set (subprocesses and forks included), into _docs/coverage
	bash scripts/coverage.sh

docs: install site-tools  ## the course's website, offline, into _docs/site (scripts/docs.py); `make docs SERVE=1` serves it on 127.0.0.1:8000
	$(PYTHON) scripts/docs.py $(if $(SERVE),--serve)

notebooks: install  ## re-execute the lessons in place: fast cells; SLOW=1 adds the slow experiments, REAL=1 the real-model sections; NB="05_label_tricks ..." picks some
	$(PYTHON) scripts/notebooks.py $(if $(SLOW),--slow) $(if $(REAL),--real) $(NB)
