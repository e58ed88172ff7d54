# Two commands do all the set-up: `make demo` and `make test`. Both create or refresh .venv.
PYTHON ?= python3
VENV   ?= .venv
# A user with a GPU picks their own torch:  make test TORCH_SPEC="torch" TORCH_CONSTRAINTS=/dev/null
TORCH_SPEC        ?= torch==2.13.0
TORCH_CONSTRAINTS ?= constraints.txt
PIP := $(VENV)/bin/pip
PY  := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv demo test test-slow clean

# Re-installs only when pyproject.toml or constraints.txt change.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c $(TORCH_CONSTRAINTS) "$(TORCH_SPEC)"
	$(PIP) install -q -c $(TORCH_CONSTRAINTS) -e ".[all]"
	touch $@

venv: $(VENV)/.installed

# The demo trains (mobilekd.demo: its table), then ships its distilled student: TFLite int8 through its parity
# gates, latency, recall, the HTML report, android/ and the model card, in runs/demo/shipped (docs/ship.md).
demo: venv
	$(PY) -m mobilekd.demo
	$(PY) -m mobilekd ship --from runs/demo/distilled --out runs/demo/shipped --formats tflite --precisions int8 --latency-runs 10

# The default suite runs in TEST_WORKERS processes (pytest-xdist), one test file per worker at a time, so the
# session fixtures of a file (its shared exports) are built once per worker. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

test: venv
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-slow: venv
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs
