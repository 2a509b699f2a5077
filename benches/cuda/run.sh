#!/usr/bin/env bash
# The CUDA checks and benchmarks, for a GPU machine that has the driver and a PyTorch install but
# no Rust toolchain and no network. Build the binary on a CPU machine and carry it over:
#   cargo build --release --features cuda --target-dir target/cuda
#   strip -o asymm-cuda target/cuda/release/asymm && gzip -9 -f asymm-cuda
#   bash benches/cuda/run.sh asymm-cuda.gz OUTDIR [STEP...]
# STEPs (groups, run in the order given; default: all of them in this order): warm checks
# parity hf-pipeline bench steady mem2b twin curve paper-gpu data-parallel.
# Every step is time-bounded; its output is appended to OUTDIR/log.txt under a `=== step` header and
# OUTDIR/summary.txt lists each step's exit code and duration, so one failing step (or a run cut
# short) still leaves the others' results, in two files.
# DEADLINE=S (seconds from the start) shortens every bound so that the whole run ends by then;
# SKIP="name …" leaves out single steps; MEM2B_F32=1 adds f32 runs to mem2b; WARM_SECONDS,
# TWIN_SECONDS, CURVE_SECONDS, PAPER_SECONDS and DP_SECONDS bound the longest steps; KERNEL_CACHE and
# KEEP_CACHE carry the kernel caches between runs (below).
set -u
bin=${1:?usage: run.sh PATH/TO/asymm[.gz] OUTDIR [STEP...]}
out=${2:?usage: run.sh PATH/TO/asymm[.gz] OUTDIR [STEP...]}
shift 2
all="warm checks parity hf-pipeline bench steady mem2b twin curve paper-gpu data-parallel"
want=${*:-$all}
deadline=${DEADLINE:-100000}
here=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
work=$(mktemp -d)
step() {
  local name=$1 secs=$2; shift 2
  case " ${SKIP:-} " in *" $name "*) echo "$name skipped" | tee -a "$out/summary.txt"; return ;; esac
  local left=$((deadline - SECONDS - 5))
  [ "$secs" -gt "$left" ] && secs=$left
  if [ "$secs" -le 0 ]; then echo "$name skipped (deadline)" | tee -a "$out/summary.txt"; return; fi
  local t0=$SECONDS
  echo "=== $name: $*" >>"$out/log.txt"
  timeout "$secs" "$@" >>"$out/log.txt" 2>&1
  echo "$name rc=$? $((SECONDS - t0))s (bound ${secs}s)" | tee -a "$out/summary.txt"
}

# A step with the GPU's utilization (the share of 100 ms samples in which a kernel ran, as
# nvidia-smi reports it) sampled throughout; the median of the busy samples is printed: the
# GPU-busy fraction of a run that is past its warm-up most of the time.
busy() {
  local name=$1
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 100 >"$work/util-$name.log" 2>/dev/null &
  local smi=$!
  step "$@"
  kill "$smi" 2>/dev/null
  echo "$name GPU utilization %: $(awk '$1 > 0' "$work/util-$name.log" | sort -n | awk -v all="$(wc -l <"$work/util-$name.log")" \
    '{a[NR]=$1} END {printf "median %s over %d busy samples of %d", (NR ? a[int((NR+1)/2)] : "n/a"), NR, all}')" \
    | tee -a "$out/summary.txt"
}

# What the binary needs there: the driver's libcuda (found by the loader), and NVRTC and the CUDA
# runtime, which a PyTorch install ships under site-packages/nvidia/*/lib. A toolkit's stubs/
# folder is left out: its libcuda.so is a placeholder that would shadow the driver's.
roots="/usr /opt $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null)"
libdirs=$(find $roots \( -name 'libnvrtc.so*' -o -name 'libnvrtc-builtins.so*' -o -name 'libcudart.so*' \) \
  2>/dev/null | grep -v /stubs/ | xargs -r -n1 dirname | sort -u | paste -sd: -)
export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >>"$out/log.txt"
case "$bin" in
  *.gz) gzip -dc "$bin" >"${bin%.gz}"; bin=${bin%.gz} ;;
esac
chmod +x "$bin"

# The persistent kernel and autotune caches. On a fresh machine the first run of each shape
# compiles every autotune candidate with NVRTC (minutes for `tiny`, GPU idle meanwhile), so a
# short lease carries a cache back ($out/kernel-cache.tar.gz, KEEP_CACHE=1) and brings it in the
# next time (KERNEL_CACHE=PATH.tar.gz).
export ASYMM_KERNEL_CACHE="$work/cubecl"
mkdir -p "$ASYMM_KERNEL_CACHE"
if [ -n "${KERNEL_CACHE:-}" ]; then
  tar -xzf "$KERNEL_CACHE" -C "$ASYMM_KERNEL_CACHE" && echo "kernel cache from $KERNEL_CACHE: $(du -sh "$ASYMM_KERNEL_CACHE" | cut -f1)" | tee -a "$out/summary.txt"
fi

step nvidia-smi 30 nvidia-smi
step version 30 "$bin" --version
# f32 on CUDA is TF32 where it matters: cubecl runs f32 matrix products on the tensor cores in
# TF32 (10-bit mantissa) when the GPU has them, so logits differ from the CPU's f32 by ~1e-3
# relative; the f32 tolerances below are 1e-2 for that reason (the CPU's own parity is 1e-4).
group_warm() {
  # Fills the kernel and autotune caches for `small` (SFT both objectives, rollouts at batch 1
  # and 40) once, with the compilations and autotune runs counted: the cold start of a fresh
  # machine, which every later step then skips.
  step warm ${WARM_SECONDS:-480} "$bin" bench --suite model --device cuda:0 --model small --steps 3 \
    --warmup 0 --count-kernels --data-shards 1 --objectives standard,ngdiff --rollout-batches 1,40 \
    --rollout-samples 8
}
group_checks() {
  # Correctness on the device: cached == uncached decoding, logits vs the CPU, training lowers the loss.
  step check-tiny-f32 90 "$bin" dev device-check --device cuda:0 --model tiny --tolerance 1e-2
  step check-small-f32 120 "$bin" dev device-check --device cuda:0 --model small --tolerance 1e-2
  step check-small-bf16 120 "$bin" dev device-check --device cuda:0/bf16 --model small --tolerance 0.1
}
group_parity() {
  fixture="$here/tests/fixtures/qwen3_vl"
  step qwen3vl-parity-f32 60 "$bin" dev hf-parity --fixture "$fixture/tied" --device cuda:0 --tolerance 1e-2
  step qwen3vl-parity-untied-f32 60 "$bin" dev hf-parity --fixture "$fixture/untied-bias" --device cuda:0 --tolerance 1e-2
  step qwen3vl-parity-bf16 60 "$bin" dev hf-parity --fixture "$fixture/tied" --device cuda:0/bf16 --tolerance 0.25
  fixture="$here/tests/fixtures/internvl"
  step internvl-parity-f32 60 "$bin" dev hf-parity --fixture "$fixture/tied" --device cuda:0 --tolerance 1e-2
  step internvl-parity-untied-f32 60 "$bin" dev hf-parity --fixture "$fixture/untied-rms" --device cuda:0 --tolerance 1e-2
  step internvl-parity-bf16 60 "$bin" dev hf-parity --fixture "$fixture/tied" --device cuda:0/bf16 --tolerance 0.25
}
group_hf_pipeline() {
  # A pipeline whose model stages load the tiny random Qwen3-VL checkpoint, on the GPU (f32),
  # with the per-step SFT timings.
  store="$work/store-hf"
  pipe="$here/tests/fixtures/qwen3_vl/pipeline.toml"
  step hf-pipeline 150 "$bin" --store "$store" run "$pipe" --device cuda:0
  step hf-sft-timing 30 "$bin" --store "$store" show "$pipe:sft.timing" --device cuda:0
  step hf-sft-log 30 "$bin" --store "$store" show "$pipe:sft.log" --device cuda:0 \
    --columns step,loss,loss_perception,loss_reasoning,perception_token_share,grad_norm
  step hf-rl-log 30 "$bin" --store "$store" show "$pipe:rl.log" --device cuda:0 \
    --columns step,loss,kl,logprob_gap,grad_norm,mean_reward
  # The same on the tiny random InternVL3.5.
  pipe="$here/tests/fixtures/internvl/pipeline.toml"
  step internvl-pipeline 150 "$bin" --store "$store" run "$pipe" --device cuda:0
  step internvl-sft-timing 30 "$bin" --store "$store" show "$pipe:sft.timing" --device cuda:0
}
group_bench() {
  # Throughput of our own training and sampling.
  step bench-small-f32 120 "$bin" bench --suite model --device cuda:0 --model small --steps 10
  step bench-small-bf16 120 "$bin" bench --suite model --device cuda:0/bf16 --model small --steps 10
}
group_steady() {
  # Steady state: 100 timed steps after 10 of warm-up (compilation and autotuning outside the
  # window, kernel launches, compilations and host reads counted inside it), and one model on
  # the GPU (data_shards 1) against two concurrent replicas (data_shards 2, the CPU default).
  step steady-f32-counted 240 "$bin" bench --suite model --device cuda:0 --model small --steps 110 \
    --warmup 10 --count-kernels --peak-tflops 494 --data-shards 1 --objectives standard,ngdiff \
    --rollout-batches 1,40 \
    --rollout-samples 8
  busy steady-f32-shards1 150 "$bin" bench --suite model --device cuda:0 --model small --steps 30 \
    --data-shards 1 --objectives standard --rollout-batches 1,16
  step steady-f32-shards2 120 "$bin" bench --suite model --device cuda:0 --model small --steps 30 \
    --data-shards 2 --objectives standard --rollout-batches none
  step steady-bf16-shards1 120 "$bin" bench --suite model --device cuda:0/bf16 --model small --steps 30 \
    --data-shards 1 --objectives standard --rollout-batches none
}
group_mem2b() {
  # The 2B models' training memory, measured: random weights of the published shapes
  # (benches/shapes/; no download), the fixture's tokenizer (its image tokens written into the
  # config), 3 SFT steps of batch 8 and a few rollouts; nvidia-smi sampled every 100 ms, the
  # peak printed against `dev hf-memory`'s estimate.
  for m in qwen3-vl-2b:qwen3_vl internvl3_5-2b:internvl; do
    shape=${m%%:*} fix=${m##*:}
    folder="$work/$shape"
    mkdir -p "$folder"
    cp "$here/tests/fixtures/$fix/tied/tokenizer.json" "$folder/"
    python3 - "$here/benches/shapes/$shape/config.json" "$here/tests/fixtures/$fix/tied/config.json" \
      "$folder/config.json" <<'PY'
import json, sys
shape = json.load(open(sys.argv[1]))
fixture = json.load(open(sys.argv[2]))
for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
    if k in fixture:
        shape[k] = fixture[k]
json.dump(shape, open(sys.argv[3], "w"), indent=2)
PY
    # bf16, bf16 with activation checkpointing (and f32 with MEM2B_F32=1).
    runs="bf16:cuda:0/bf16: bf16-ckpt:cuda:0/bf16:--activation-checkpointing"
    [ -n "${MEM2B_F32:-}" ] && runs="$runs f32:cuda:0:"
    for run in $runs; do
      dtype=${run%%:*} rest=${run#*:}
      dev=${rest%:*} flag=${rest##*:}
      tag="$shape-$dtype"
      step "estimate-$tag" 30 "$bin" dev hf-memory --checkpoint "$folder" --dtype "${dtype%-ckpt}"
      nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$work/mem.log" 2>/dev/null &
      smi=$!
      step "mem-$tag" 180 "$bin" bench --suite model --hf "$folder" --device "$dev" --steps 3 \
        --rollout-batches 8 --json $flag
      kill "$smi" 2>/dev/null
      echo "mem-$tag peak MiB: $(sort -n "$work/mem.log" | tail -1)" | tee -a "$out/summary.txt"
    done
  done
}
group_twin() {
  # Side by side with the PyTorch twin (one round: each measure once per side).
  step bench-twin ${TWIN_SECONDS:-240} python3 "$here/benches/twin/driver.py" --asymm "$bin" --device cuda:0 \
    --model small --rounds 1 --steps 40 --warmup 10 --work "$work/twin"
}
group_curve() {
  # The graph-coloring learning curve of `small`, bounded in time; the log is read back with show.
  store="$work/store-curve"
  step curve ${CURVE_SECONDS:-300} "$bin" --store "$store" run "$here/pipelines/learning-curve-small.toml" --device cuda:0
  step curve-log 60 "$bin" --store "$store" show "$here/pipelines/learning-curve-small.toml:sft.log" \
    --device cuda:0 --where-set eval_a_p --columns step,loss,loss_perception,eval_a_p,eval_a_r,eval_a --rows 50
}
group_paper_gpu() {
  # As much of the GPU grid as the bound allows; status says which stages finished.
  store="$work/store-paper"
  step paper-gpu ${PAPER_SECONDS:-3600} "$bin" --store "$store" run "$here/pipelines/paper-gpu.toml" --device cuda:0
  step paper-gpu-status 60 "$bin" --store "$store" status "$here/pipelines/paper-gpu.toml"
}
group_data_parallel() {
  # One trainer, two data shards and two data-parallel peers on one device, alternated.
  step data-parallel ${DP_SECONDS:-400} bash "$here/benches/data-parallel.sh" "$bin" cuda:0 small 20 2
}
# The groups run in the order named, so the most wanted come first under a DEADLINE.
for g in $want; do
  case " $all " in
    *" $g "*) "group_${g//-/_}" ;;
    *) echo "unknown step group \`$g\` (groups: $all)" | tee -a "$out/summary.txt" ;;
  esac
done
if [ -n "${KEEP_CACHE:-}" ]; then
  tar -czf "$out/kernel-cache.tar.gz" -C "$ASYMM_KERNEL_CACHE" . &&
    echo "kernel cache kept: $(du -h "$out/kernel-cache.tar.gz" | cut -f1)" | tee -a "$out/summary.txt"
fi
rm -rf "$work"
cat "$out/summary.txt"
