#!/usr/bin/env bash
# The CUDA checks and benchmarks, for a GPU machine that has the driver and a PyTorch install but
# no Rust toolchain and no network. Build the binary on a CPU machine and carry it over:
#   cargo build --release --features cuda --target-dir target/cuda
#   strip -o asymm-cuda target/cuda/release/asymm && gzip -9 -f asymm-cuda
#   bash benches/cuda/run.sh asymm-cuda.gz OUTDIR [MINUTES_OF_LEARNING_CURVE]
# Every step is time-bounded and leaves its output in OUTDIR/<step>.txt; OUTDIR/summary.txt lists
# each step's exit code and duration, so one failing step still leaves the others' results.
set -u
bin=${1:?usage: run.sh PATH/TO/asymm[.gz] OUTDIR [MINUTES]}
out=${2:?usage: run.sh PATH/TO/asymm[.gz] OUTDIR [MINUTES]}
minutes=${3:-5}
here=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
step() {
  local name=$1 secs=$2; shift 2
  local t0=$SECONDS
  timeout "$secs" "$@" >"$out/$name.txt" 2>&1
  echo "$name rc=$? $((SECONDS - t0))s" | tee -a "$out/summary.txt"
}

# What the binary needs there: the driver's libcuda (found by the loader), and NVRTC and the CUDA
# runtime, which a PyTorch install ships under site-packages/nvidia/*/lib.
roots="/usr /opt $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null)"
libdirs=$(find $roots \( -name 'libnvrtc.so*' -o -name 'libnvrtc-builtins.so*' -o -name 'libcudart.so*' \) \
  2>/dev/null | xargs -r -n1 dirname | sort -u | paste -sd: -)
export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >"$out/libs.txt"
case "$bin" in
  *.gz) python3 -c 'import gzip,shutil,sys; shutil.copyfileobj(gzip.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
          "$bin" "${bin%.gz}"; bin=${bin%.gz} ;;
esac
chmod +x "$bin"

step nvidia-smi 30 nvidia-smi
step version 30 "$bin" --version
# Correctness on the device: cached == uncached decoding, logits vs the CPU, training lowers the loss.
step check-tiny-f32 180 "$bin" dev device-check --device cuda:0 --model tiny
step check-small-f32 300 "$bin" dev device-check --device cuda:0 --model small
step check-small-bf16 300 "$bin" dev device-check --device cuda:0/bf16 --model small --tolerance 0.1
# Throughput of our own training and sampling.
step qwen3vl-parity-f32 120 "$bin" dev hf-parity --fixture "$here/tests/fixtures/qwen3_vl/tied" --device cuda:0
step qwen3vl-parity-bf16 120 "$bin" dev hf-parity --fixture "$here/tests/fixtures/qwen3_vl/tied" --device cuda:0/bf16 --tolerance 0.25

step bench-small-f32 300 "$bin" bench --suite model --device cuda:0 --model small --steps 10
step bench-small-bf16 300 "$bin" bench --suite model --device cuda:0/bf16 --model small --steps 10
# Side by side with the PyTorch twin, when the twin driver is in the checkout.
if [ -f "$here/benches/twin/driver.py" ]; then
  step bench-twin 600 python3 "$here/benches/twin/driver.py" --asymm "$bin" --device cuda:0 --model small
fi
# The graph-coloring learning curve of `small`, bounded in time; the log is read back with show.
store="$out/store"
step curve $((minutes * 60)) "$bin" --store "$store" run "$here/pipelines/learning-curve-small.toml" --device cuda:0
step curve-log 60 "$bin" --store "$store" show "$here/pipelines/learning-curve-small.toml:sft.log" \
  --device cuda:0 --where-set eval_a_p --columns step,loss,loss_perception,eval_a_p,eval_a_r,eval_a --rows 50
cat "$out/summary.txt"
