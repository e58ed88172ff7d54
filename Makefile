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

demo: venv
	$(PY) -m mobilekd.demo

test: venv
	$(PY) -m pytest -q

test-slow: venv
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs
