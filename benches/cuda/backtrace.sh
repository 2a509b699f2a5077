#!/usr/bin/env bash
# Where a CUDA run spends its time when it prints nothing: runs one asymm command under a bound
# and, every SAMPLE_EVERY seconds while it runs, attaches cuda-gdb (no other debugger is on the
# GPU machines) for every thread's backtrace, with the GPU's utilization and the kernel cache's
# size beside it. The binary should keep its symbols (`strip --strip-debug`, not `strip`).
#   bash benches/cuda/backtrace.sh PATH/TO/asymm[.gz] OUTDIR BOUND_SECONDS ARGS...
# e.g. bash benches/cuda/backtrace.sh asymm.gz OUT 130 dev device-check --device cuda:0 --model tiny
set -u
bin=${1:?usage: backtrace.sh BIN OUTDIR BOUND ARGS...}
out=${2:?usage: backtrace.sh BIN OUTDIR BOUND ARGS...}
bound=${3:?usage: backtrace.sh BIN OUTDIR BOUND ARGS...}
shift 3
mkdir -p "$out"
roots="/usr /opt $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null)"
libdirs=$(find $roots \( -name 'libnvrtc.so*' -o -name 'libnvrtc-builtins.so*' -o -name 'libcudart.so*' \) \
  2>/dev/null | grep -v /stubs/ | xargs -r -n1 dirname | sort -u | paste -sd: -)
export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
case "$bin" in
  *.gz) gzip -dc "$bin" >/tmp/asymm; bin=/tmp/asymm ;;
esac
chmod +x "$bin"
export ASYMM_KERNEL_CACHE=${ASYMM_KERNEL_CACHE:-/tmp/asymm-kernel-cache}
timeout "$bound" "$bin" "$@" >"$out/run.log" 2>&1 &
runner=$!
sleep 1
pid=$(pgrep -P "$runner" | head -1)
i=0
while kill -0 "$pid" 2>/dev/null; do
  sleep "${SAMPLE_EVERY:-40}"
  kill -0 "$pid" 2>/dev/null || break
  i=$((i + 1))
  {
    echo "=== sample $i at ${SECONDS}s"
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
    du -sh "$ASYMM_KERNEL_CACHE"
    timeout 30 cuda-gdb -p "$pid" -batch -ex "thread apply all bt 25" 2>&1 |
      grep -v '^\[New \|^$\|libcudadebugger\|?? ()'
  } >>"$out/backtraces.txt"
done
wait "$runner"
echo "rc=$? after ${SECONDS}s, $i samples" | tee -a "$out/run.log"
