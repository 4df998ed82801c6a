# The two commands of the README's quick start. Each does its own set-up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A local CPU wheel of torch lies on this machine's disk; an unpinned torch would fetch a CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: install test demo bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[all,test]"
	# --gan dcgan-faces: a trained DCGAN whose wheel carries its weights; its own dependencies
	# (wandb, matplotlib, torchvision, requests) are for training it, not needed here
	$(BIN)/pip install -q --no-deps gan-face-generate==1.1.1
	rm -f $(VENV)/.installed-*; touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/python -m experiments.demo

# every benchmark that has a quick form; each prints a table (drop --quick for the full sizes). The
# dcgan_* scripts draw the pictures of a finished DCGAN run (docs/dcgan-faces.md) and have none.
bench: install
	for b in $$(grep -l -e '"--quick"' benchmarks/*.py); do $(BIN)/python $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache

# The paper's scale on one CUDA GPU: one table and bench-gpu.json in under 8 minutes
# (benchmarks/bench_gpu.py); without a GPU, its tiny CPU form. Runs .venv's python when there is
# one (make install), else $(PY) as it is: a GPU machine may bring its own CUDA build of torch.
.PHONY: bench-gpu
bench-gpu:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PY)) benchmarks/bench_gpu.py $(BENCH_GPU_ARGS)
