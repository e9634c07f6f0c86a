# Two commands work on a fresh machine: `make demo` and `make test`.
# Both create .venv and install everything on first use (torch's CPU wheel first,
# so pip never resolves a multi-GB CUDA build).

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip --disable-pip-version-check -q
STAMP   = $(VENV)/.installed

.PHONY: setup system-packages test demo bench bench-full vllm-check vllm-speculative clean

$(STAMP): pyproject.toml requirements/constraints.txt requirements/data.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -c requirements/constraints.txt -e '.[dev]'
	$(PIP) install --no-deps -r requirements/data.txt
	touch $(STAMP)

setup: $(STAMP)

# Debian packages some parts need: Chromium (the serving page's browser test) and a font with Chinese
# characters (figures of the Chinese pages, `layerdrop report docs/lecture.zh-CN.md`). Installed as root
# where apt-get exists; otherwise it says what to install.
SYSTEM_PACKAGES = chromium fonts-noto-cjk
system-packages:
	@if command -v chromium >/dev/null && fc-list 2>/dev/null | grep -q "Noto Sans CJK"; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	else echo "install $(SYSTEM_PACKAGES) with your system's package manager (sudo apt-get install ...)"; fi

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

# vLLM's draft-model speculative decoding against `layerdrop generate --speculative`, same model, draft and prompts:
# a Llama trained on the KJV for its depths 6 and 3 (first layers), its 3-layer cut as the draft; both on core 0 alone
# (taskset), so vLLM's engine and front-end processes share it as the one torch thread of bench/generate.py does.
SPEC_OUT ?= out/vllm-speculative

vllm-speculative: $(STAMP) $(VLLM_VENV)/.installed
	test -f $(SPEC_OUT)/llama/model/config.json || $(VENV)/bin/layerdrop train clm llama-tiny --data kjv \
	  --depths 6,3 --strategy top --max-steps 500 --batch-size 16 --lr 1e-3 --lr-schedule cosine --warmup 0.05 \
	  --max-length 128 --vocab-size 4000 --resume --no-progress --out $(SPEC_OUT)/llama
	test -f $(SPEC_OUT)/llama-3/config.json || $(VENV)/bin/layerdrop prune $(SPEC_OUT)/llama/model --depth 3 \
	  --out $(SPEC_OUT)/llama-3
	taskset -c 0 $(PY) bench/generate.py --model $(SPEC_OUT)/llama/model --prompts 16 --depths 6 --speculative 3 \
	  --draft-tokens 3 --runs 3 --threads 1 --json $(SPEC_OUT)/layerdrop.json
	VLLM_CPU_OMP_THREADS_BIND=0 taskset -c 0 $(VLLM_VENV)/bin/python deploy/vllm_speculative.py $(SPEC_OUT)/llama/model \
	  $(SPEC_OUT)/llama-3 --prompts-from $(SPEC_OUT)/layerdrop.json --draft-tokens 3 --json $(SPEC_OUT)/vllm.json

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache
