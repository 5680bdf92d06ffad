# Two entry points: `make demo` and `make test`. Both create/update the venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FAIRSEQ_PIN := ve-fairseq==0.12.3
FAIRSCALE_PIN := fairscale==0.4.13
PYTEST_ARGS ?=

.PHONY: env demo test clean-demo gpu-check libretranslate-env libretranslate test-libretranslate

env: $(STAMP)

# Re-run when the pins or the package metadata change; idempotent otherwise.
$(STAMP): requirements.txt setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps $(FAIRSEQ_PIN)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation $(FAIRSCALE_PIN)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import fairseq, fairscale, fairseq_taskmoe; print('env ok: fairseq', fairseq.__version__)"
	touch $(STAMP)

# pytest exits 5 when it collected no tests: that is a failure, not a pass.
test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=20 $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; exit $$rc

# Knobs (make exports command-line variables to the script): MAX_UPDATE (800), EVAL_N (100 test
# sentences per direction; 0 = whole splits), DATA, OUT, LR, WARMUP, ENC_ROUTING, DEC_ROUTING, BEAM,
# NO_REPEAT_NGRAM (3; 0 = off).
# The full-size run (the old demo's 4.8M training tokens): make demo MAX_UPDATE=2400 EVAL_N=0 OUT=demo-full
demo: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH bash examples/demo.sh

# The one GPU check (scripts/gpu_check.py, under 8 minutes): gpu-marked tests, --amp and
# --memory-efficient-fp16 training killed and resumed, bf16 MoE layer benchmark. Needs a CUDA
# device (exit 2 without one); results in gpu-check/gpu_check.json.
gpu-check: $(STAMP)
	$(BIN)/python scripts/gpu_check.py --out gpu-check

clean-demo:
	rm -rf demo

# LibreTranslate in its own environment (it pins flask 2.2, packaging 23.1, numpy<2, ...): built from
# the package registry with the versions in requirements-libretranslate.txt. docs/DEPLOY.md.
LT_VENV := .venv-libretranslate
LT_STAMP := $(LT_VENV)/.installed
DEMO_CKPT ?= demo/ckpt/checkpoint_last.pt
DEMO_DATA ?= data/loc8
LT_PACKAGES ?= demo/argos
LT_PORT ?= 5000

libretranslate-env: $(LT_STAMP)

$(LT_STAMP): requirements-libretranslate.txt
	test -x $(LT_VENV)/bin/python || $(PYTHON) -m venv $(LT_VENV)
	$(LT_VENV)/bin/python -m pip install -q --upgrade pip
	$(LT_VENV)/bin/python -m pip install -q -r requirements-libretranslate.txt
	$(LT_VENV)/bin/python -c "import libretranslate, argostranslate, minisbd, ctranslate2; print('libretranslate env ok')"
	touch $(LT_STAMP)

# The demo model's Argos packages (all 16 directions), rebuilt when the checkpoint changes.
$(LT_PACKAGES)/extract.json: $(DEMO_CKPT) | $(STAMP)
	$(BIN)/fairseq-taskmoe-extract $(DEMO_CKPT) --tasks all --format argos --data $(DEMO_DATA) \
	  --out $(LT_PACKAGES) --force

$(DEMO_CKPT):
	@echo "make libretranslate: no $(DEMO_CKPT); run 'make demo' first (or pass DEMO_CKPT=... DEMO_DATA=...)" >&2; exit 1

# Serve them on http://127.0.0.1:$(LT_PORT) (web page and API) until interrupted.
libretranslate: $(STAMP) $(LT_STAMP) $(LT_PACKAGES)/extract.json
	$(BIN)/python -m fairseq_taskmoe.serve.libretranslate $(LT_PACKAGES) --lt-env $(LT_VENV) --port $(LT_PORT)

# The integration test (.ci/run runs it): toy model -> packages -> argostranslate and LibreTranslate.
test-libretranslate: $(STAMP) $(LT_STAMP)
	FAIRSEQ_TASKMOE_LT_ENV=$(CURDIR)/$(LT_VENV) $(BIN)/python -m pytest -q -rs tests/integration; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test-libretranslate: no tests were collected" >&2; exit 1; fi; exit $$rc
