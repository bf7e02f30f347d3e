# Everything a fresh clone needs: `make demo` (the main job) and `make test`.
# The virtual environment, the Python packages (an exact torch/torchvision pair from
# constraints.txt) and the Debian packages are installed on demand.

PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
STORAGE  ?= sqlite:///results/tuner.db
TUNER    := $(BIN)/tuner
DEBIAN_PACKAGES := dataset-fashion-mnist bible-kjv bible-kjv-text chromium postgresql
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

OPT_SMALL := $(addprefix studies/optimizers/fmnist_small_,$(addsuffix .toml,sgd momentum adamw lamb muon))
OPT_FULL  := $(addprefix studies/optimizers/fmnist_,$(addsuffix .toml,sgd momentum adamw lamb lars soap muon))
NQM_SPECS := nqm_sgd nqm_momentum nqm_precond_p025 nqm_precond_p050 nqm_precond_p075 nqm_momentum_ema

.PHONY: help install debian demo test digits-mlp fashion-mnist-cnn fashion-mnist-mlp nqm \
        charlm-kjv fashion-mnist-resnet8 optimizers optimizers-small \
        $(NQM_SPECS) bench-nqm batch-science report-controls postgres dashboard clean soak lint test-optuna-floor

help:
	@echo "make demo               a real small scaling study on digits (CPU, < 10 min)"
	@echo "make test               the test suite (without the soak test)"
	@echo "make lint               the layer contracts (import-linter) and the import-cycle check"
	@echo "make soak               6 workers on PostgreSQL killed at random for a few minutes"
	@echo "make digits-mlp         reproduce studies/digits_mlp.toml"
	@echo "make fashion-mnist-cnn  reproduce studies/fashion_mnist_cnn.toml (hours on CPU)"
	@echo "make fashion-mnist-mlp  reproduce studies/fashion_mnist_mlp.toml"
	@echo "make charlm-kjv         reproduce studies/charlm_kjv.toml: a char-level Transformer, Lightning (hours on CPU)"
	@echo "make fashion-mnist-resnet8  reproduce studies/fashion_mnist_resnet8.toml: ResNet-8 + augmentation (hours on CPU)"
	@echo "make nqm                the six NQM studies + the two headline figures in results/"
	@echo "make optimizers-small   SGD, momentum, AdamW, LAMB, Muon on one Fashion-MNIST MLP: curves, B_crit, profiles (~17 min)"
	@echo "make optimizers         the same comparison at full size with LARS and SOAP too (for a GPU)"
	@echo "make bench-nqm          time one NQM trial's exact steps-to-target"
	@echo "make report-controls    data-set-size series, fixed-epoch vs fixed-step quality, time to target, seed confirmation: one report (CPU)"
	@echo "make batch-science      import Google's published studies (BATCH_SCIENCE=DIR, downloaded first) and report on them"
	@echo "make postgres           a throwaway PostgreSQL server on 127.0.0.1 (prints its URL)"
	@echo "make bench              steps/s: raw PyTorch vs our trial loop vs Lightning Trainer"
	@echo "make bench-nqm-workers  tuner run nqm_sgd: --workers 1 vs 2 (time, identical results)"
	@echo "make bench-dataloader   steps/s over a DataLoader: raw PyTorch vs our LightningModule path"
	@echo "make bench-adequacy     the tuning-adequacy rule vs the exact NQM optimum, and on digits"
	@echo "make bench-analysis     curve/edges/sensitivity/report on 10,000 and 100,000 stored trials"
	@echo "make bench-noise        B_simple (tuner noise-scale) against B_crit and B_20% on the NQM, digits and Fashion-MNIST (~6 min)"
	@echo "make bench-adaptive     tuner run --adaptive against the full grid: B_crit and trained examples (~5 min)"
	@echo "make bench-at-once      trials/s: K trials trained at once ([trainer] trials_at_once) vs one at a time (~12 min)"
	@echo "make bench-worker-threads  tuner run --workers 2: a thread per core in each worker vs CPUs / workers (~3 min)"
	@echo "make bench-all          bench + bench-eval + bench-pruning + bench-storage + bench-nqm-workers + bench-dataloader + bench-adequacy + bench-analysis + bench-noise + bench-adaptive + bench-at-once + bench-worker-threads (benchmarks/README.md)"
	@echo "make wheels             wheels/ for an offline install (NO_TORCH=1: without torch/lightning)"
	@echo "make install-offline    .venv from wheels/, no network; uses an installed torch"
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
# the tests use to open `tuner report` pages headless; PostgreSQL, the server the multi-worker
# tests start on loopback (scripts/postgres.sh).
debian:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: $(STAMP)
	$(TUNER) run studies/digits_mlp.toml --storage $(STORAGE)

# One pytest process per CPU (pytest-xdist; a test file stays on one process: its fixtures are
# built once), each with one torch thread (OMP_NUM_THREADS=1), as are the `tuner run` processes
# the tests start: processes that each start a thread per core oversubscribe a small machine
# (on 2 cores, 2 processes with 2 threads each: 19 min; with 1 thread each: 11 min).
test: $(STAMP) debian lint test-optuna-floor
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n auto --dist loadfile -m 'not soak'

# The layers of docs/DESIGN.md: import-linter's contracts (pyproject.toml), no import cycles.
lint: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/python scripts/import_cycles.py

# Optuna's floor (pyproject: optuna>=5.0) when constraints.txt pins a newer one: the sampling,
# work-queue, storage and pruning tests again with optuna==$(OPTUNA_FLOOR) laid over .venv
# (pip --no-deps --target: the same torch and everything else). Nothing to do while the pin is
# the floor: then `make test` runs the floor already.
OPTUNA_FLOOR := 5.0.0
OPTUNA_PIN   ?= $(shell sed -n 's/^optuna==//p' constraints.txt)
FLOOR_DIR    := .venv-optuna-floor
FLOOR_TESTS  := tests/store/test_compat.py tests/run/test_trialqueue.py tests/run/test_pruning.py tests/store/test_persist.py

test-optuna-floor: $(STAMP)
ifeq ($(OPTUNA_PIN),$(OPTUNA_FLOOR))
	@echo "optuna floor $(OPTUNA_FLOOR) is constraints.txt's pin: make test runs it already"
else
	$(BIN)/pip install --quiet --no-deps --upgrade --target $(FLOOR_DIR) optuna==$(OPTUNA_FLOOR)
	PYTHONPATH=$(FLOOR_DIR):$(CURDIR) $(BIN)/python -c "import optuna; \
	  assert optuna.__version__ == '$(OPTUNA_FLOOR)', optuna.__file__; print(optuna.__file__)"
	PYTHONPATH=$(FLOOR_DIR):$(CURDIR) $(BIN)/python -m pytest -q -p no:cacheprovider \
	  -m 'not slow and not soak' $(FLOOR_TESTS)
endif

# Issue 13's soak test (<= 5 min): 6 workers on PostgreSQL, a random one killed every few seconds.
soak: $(STAMP) debian
	$(BIN)/python -m pytest -q -m soak tests/run/test_soak.py

# One target per study spec.
digits-mlp: $(STAMP)
	$(TUNER) run studies/digits_mlp.toml --storage $(STORAGE)

fashion-mnist-cnn: $(STAMP) debian
	$(TUNER) run studies/fashion_mnist_cnn.toml --storage $(STORAGE)

fashion-mnist-mlp: $(STAMP) debian
	$(TUNER) run studies/fashion_mnist_mlp.toml --storage $(STORAGE)

# LightningModule + LightningDataModule workloads (workloads/charlm.py, workloads/resnet.py):
# hours on this CPU, minutes per batch size on a GPU.
charlm-kjv: $(STAMP) debian
	$(TUNER) run studies/charlm_kjv.toml --storage $(STORAGE)

fashion-mnist-resnet8: $(STAMP) debian
	$(TUNER) run studies/fashion_mnist_resnet8.toml --storage $(STORAGE)

# The noisy quadratic model (Zhang et al. 2019): five algorithms, then the paper's two figures.
$(NQM_SPECS): $(STAMP)
	$(TUNER) run studies/$@.toml --storage $(STORAGE) --quiet

nqm: $(NQM_SPECS)
	@mkdir -p results
	$(TUNER) curve $(addprefix studies/,$(addsuffix .toml,$(NQM_SPECS))) --storage $(STORAGE) \
	  --n-boot 200 --plot results/nqm_steps_vs_batch.png --lr-plot results/nqm_lr_vs_batch.png

# Optimizers on one workload (studies/optimizers/): scaling curves on one figure, B_crit per
# optimizer, performance profiles, and the NQM's prediction beside them in the report.
# optimizers-small: 17 minutes on this 2-core CPU (2026-12-02); optimizers: the full size, for a GPU.
NQM_MODEL := nqm_sgd nqm_momentum nqm_precond_p050
optimizers-small: OPT_SPECS := $(OPT_SMALL)
optimizers-small: OPT_OUT := results/optimizers_small
optimizers-small: OPT_BOOT := 200
optimizers: OPT_SPECS := $(OPT_FULL)
optimizers: OPT_OUT := results/optimizers
optimizers: OPT_BOOT := 1000
optimizers optimizers-small: $(STAMP) debian $(NQM_MODEL)
	@mkdir -p $(OPT_OUT)
	for s in $(OPT_SPECS); do $(TUNER) run $$s --storage $(STORAGE) --quiet --no-summary || exit 1; done
	$(TUNER) curve $(OPT_SPECS) --storage $(STORAGE) --n-boot $(OPT_BOOT) \
	  --plot $(OPT_OUT)/steps_vs_batch.png --lr-plot $(OPT_OUT)/lr_vs_batch.png
	$(TUNER) profile $(OPT_SPECS) --storage $(STORAGE)
	$(TUNER) report $(OPT_SPECS) $(addprefix studies/,$(addsuffix .toml,$(NQM_MODEL))) \
	  --storage $(STORAGE) --n-boot $(OPT_BOOT) --no-dashboard --out $(OPT_OUT)

bench-nqm: $(STAMP)
	$(BIN)/python benchmarks/nqm_speed.py

# The paper's experimental controls at CPU size (studies/controls/): a data-set-size series
# (B_crit against the training-set size), fixed-epoch vs fixed-step solution quality (trials
# trained to their whole budget), the time to target per batch size, and the best
# configurations re-run with fresh seeds (seed noise, test error and sharpness at the target);
# one report.
CONTROLS := studies/controls/fmnist_datasize_small.toml studies/controls/digits_quality.toml
report-controls: $(STAMP) debian
	@mkdir -p results/controls
	for s in $(CONTROLS); do $(TUNER) run $$s --storage $(STORAGE) --quiet --no-summary || exit 1; done
	$(TUNER) curve studies/controls/fmnist_datasize_small.toml --storage $(STORAGE) --n-boot 200 \
	  --plot results/controls/datasize_curves.png --series-plot results/controls/bcrit_vs_train_size.png
	$(TUNER) curve studies/controls/digits_quality.toml --storage $(STORAGE) --n-boot 200
	$(TUNER) curve studies/controls/digits_quality.toml --storage $(STORAGE) --quality --max-epochs 3
	$(TUNER) curve studies/controls/digits_quality.toml --storage $(STORAGE) --quality --max-steps 100
	$(TUNER) confirm studies/controls/fmnist_datasize_small.toml --storage $(STORAGE) --top 1 --seeds 4 --quiet
	$(TUNER) report $(CONTROLS) --storage $(STORAGE) --n-boot 200 --no-dashboard --out results/controls

# Google's published batch_science data (Shallue et al. 2018: 454 studies). Download and unpack
# it first (~802 MB; no network is assumed here):
#   curl -O https://storage.googleapis.com/batch_science_data/batch_science_data.tar.bz2
#   sha256sum batch_science_data.tar.bz2   # 6460ab86a6ab0f22a02e1c9b982e1ca31220bf41f669304ce86f14d19053f435
#   tar -xjf batch_science_data.tar.bz2    # -> batch_science/
# then `make batch-science BATCH_SCIENCE=batch_science`: every workload imported into
# $(BS_STORAGE), and one report over all of them in results/batch_science/.
BATCH_SCIENCE ?= batch_science
BS_STORAGE    ?= sqlite:///results/batch_science.db
batch-science: $(STAMP)
	@test -d "$(BATCH_SCIENCE)" || { echo "no folder $(BATCH_SCIENCE): download and unpack batch_science_data.tar.bz2 (see the Makefile's comment), or give BATCH_SCIENCE=DIR"; exit 2; }
	@mkdir -p results/batch_science
	$(TUNER) import batch-science "$(BATCH_SCIENCE)" --storage $(BS_STORAGE) | tee results/batch_science/imported.txt
	$(TUNER) report $$(cut -d: -f1 results/batch_science/imported.txt) --storage $(BS_STORAGE) \
	  --n-boot 200 --no-dashboard --out results/batch_science

# A throwaway PostgreSQL server on 127.0.0.1 for multi-worker runs (prints its URL).
postgres:
	@mkdir -p results
	bash scripts/postgres.sh start results/postgres

dashboard: $(STAMP)
	$(TUNER) dashboard --storage $(STORAGE)

# ---------------------------------------------------------------------------------------------
# Speed (issue 6): side-by-side measurements, never part of `make test` (benchmarks/README.md),
# and an offline install for GPU machines without a network.

.PHONY: bench bench-eval bench-pruning bench-storage bench-nqm-workers bench-dataloader bench-adequacy bench-analysis bench-noise bench-adaptive bench-at-once bench-worker-threads bench-all wheels \
        install-offline

bench: $(STAMP)
	$(BIN)/python benchmarks/loop_speed.py

bench-eval: $(STAMP) debian
	$(BIN)/python benchmarks/eval_share.py

bench-pruning: $(STAMP)
	$(BIN)/python benchmarks/pruning_savings.py

bench-storage: $(STAMP)
	$(BIN)/python benchmarks/storage_overhead.py

bench-nqm-workers: $(STAMP)
	$(BIN)/python benchmarks/nqm_workers.py

bench-dataloader: $(STAMP) debian
	$(BIN)/python benchmarks/dataloader_speed.py

bench-adequacy: $(STAMP)
	$(BIN)/python benchmarks/adequacy_nqm.py
	$(BIN)/python benchmarks/adequacy_digits.py

bench-analysis: $(STAMP) debian
	$(BIN)/python benchmarks/analysis_speed.py --postgres
	$(BIN)/python benchmarks/analysis_speed.py --trials 10000 --no-baseline

bench-noise: $(STAMP) debian
	$(BIN)/python benchmarks/noise_scale.py

bench-adaptive: $(STAMP)
	$(BIN)/python benchmarks/adaptive.py

bench-at-once: $(STAMP) debian
	$(BIN)/python benchmarks/trials_at_once.py

bench-worker-threads: $(STAMP) debian
	$(BIN)/python benchmarks/worker_threads.py

bench-all: bench bench-eval bench-pruning bench-storage bench-nqm-workers bench-dataloader \
	bench-adequacy bench-analysis bench-noise bench-adaptive bench-at-once bench-worker-threads

# On a machine with a network: wheels/ gets this project's wheel and every dependency at the
# versions of constraints.txt. NO_TORCH=1 leaves out torch, torchvision, lightning and their CUDA
# libraries (GBs) for a machine that has them. WHEELS_PIP='--python-version 3.12 --platform
# manylinux2014_x86_64' fetches wheels for another Python.
WHEELS    ?= wheels
NO_TORCH  ?=
WHEELS_PIP ?=

wheels: $(STAMP)
	$(BIN)/python tools/wheels.py --dest $(WHEELS) $(if $(NO_TORCH),--no-torch) \
	  $(if $(WHEELS_PIP),-- $(WHEELS_PIP))

# On the machine without a network: .venv sees the system's packages (its torch, torchvision,
# lightning), and pip installs the rest from wheels/ only; an installed torch that satisfies the
# project's ranges is kept, never reinstalled.
install-offline:
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/pip install --isolated --quiet --no-index --find-links $(WHEELS) 'batch-scaling-tuner[dev]'
	$(BIN)/python -c "import torch, torchvision, lightning, optuna, sqlalchemy, alembic; print('installed offline: torch', torch.__version__, 'lightning', lightning.__version__, 'optuna', optuna.__version__)"
	touch $(STAMP)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
