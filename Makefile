# Everything a fresh clone needs: `make demo` (the main job) and `make test`.
# The virtual environment, the Python packages (an exact torch/torchvision pair from
# constraints.txt) and the Debian packages are installed on demand.

PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
STORAGE  ?= sqlite:///results/tuner.db
TUNER    := $(BIN)/tuner
DEBIAN_PACKAGES := dataset-fashion-mnist chromium
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

NQM_SPECS := nqm_sgd nqm_momentum nqm_precond_p025 nqm_precond_p050 nqm_precond_p075 nqm_momentum_ema

.PHONY: help install debian demo test digits-mlp fashion-mnist-cnn fashion-mnist-mlp nqm \
        $(NQM_SPECS) bench-nqm dashboard clean

help:
	@echo "make demo               a real small scaling study on digits (CPU, < 10 min)"
	@echo "make test               the test suite"
	@echo "make digits-mlp         reproduce studies/digits_mlp.toml"
	@echo "make fashion-mnist-cnn  reproduce studies/fashion_mnist_cnn.toml (hours on CPU)"
	@echo "make fashion-mnist-mlp  reproduce studies/fashion_mnist_mlp.toml"
	@echo "make nqm                the six NQM studies + the two headline figures in results/"
	@echo "make bench-nqm          time one NQM trial's exact steps-to-target"
	@echo "make dashboard          optuna-dashboard on $(STORAGE)"
	@echo "STORAGE=<SQLAlchemy URL> selects the storage (default $(STORAGE))"

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/python -c "import torch, torchvision, lightning, optuna; print('installed torch', torch.__version__, 'torchvision', torchvision.__version__, 'lightning', lightning.__version__, 'optuna', optuna.__version__)"
	touch $@

# Debian packages: Fashion-MNIST's IDX files (/usr/share/datasets/fashion-mnist); Chromium, which
# the tests use to open `tuner report` pages headless.
debian:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: $(STAMP)
	$(TUNER) run studies/digits_mlp.toml --storage $(STORAGE)

test: $(STAMP) debian
	$(BIN)/python -m pytest -q

# One target per study spec.
digits-mlp: $(STAMP)
	$(TUNER) run studies/digits_mlp.toml --storage $(STORAGE)

fashion-mnist-cnn: $(STAMP) debian
	$(TUNER) run studies/fashion_mnist_cnn.toml --storage $(STORAGE)

fashion-mnist-mlp: $(STAMP) debian
	$(TUNER) run studies/fashion_mnist_mlp.toml --storage $(STORAGE)

# The noisy quadratic model (Zhang et al. 2019): five algorithms, then the paper's two figures.
$(NQM_SPECS): $(STAMP)
	$(TUNER) run studies/$@.toml --storage $(STORAGE) --quiet

nqm: $(NQM_SPECS)
	@mkdir -p results
	$(TUNER) curve $(addprefix studies/,$(addsuffix .toml,$(NQM_SPECS))) --storage $(STORAGE) \
	  --n-boot 200 --plot results/nqm_steps_vs_batch.png --lr-plot results/nqm_lr_vs_batch.png

bench-nqm: $(STAMP)
	$(BIN)/python benchmarks/nqm_speed.py

dashboard: $(STAMP)
	$(TUNER) dashboard --storage $(STORAGE)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
