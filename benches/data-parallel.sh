#!/usr/bin/env bash
# SFT throughput of one trainer against data-parallel peers (burn's collective) and against
# in-process data shards, side by side, alternating, ROUNDS times each (the machines are noisy).
# Usage: benches/data-parallel.sh [BIN] [DEVICE] [MODEL] [STEPS] [ROUNDS]
#   defaults: target/release/asymm cpu tiny 12 2
# Prints one Markdown row per configuration and round: SFT target tokens/s (standard objective,
# batch 8, the model suite's examples, the first step left out as warm-up).
set -euo pipefail
BIN=${1:-target/release/asymm}
DEVICE=${2:-cpu}
MODEL=${3:-tiny}
STEPS=${4:-12}
ROUNDS=${5:-2}
echo "| configuration | round | target tokens/s |"
echo "|---|---:|---:|"
for round in $(seq 1 "$ROUNDS"); do
  for cfg in "1 1" "1 2" "2 1"; do
    set -- $cfg
    shards=$2 peers=$1
    rate=$("$BIN" bench --suite model --model "$MODEL" --device "$DEVICE" --steps "$STEPS" \
      --objectives standard --rollout-batches none --data-shards "$shards" --data-parallel "$peers" \
      --json | python3 -c 'import json,sys; m=json.load(sys.stdin)["sft"][0]; print(round(m["target_tokens_per_s"]))')
    case "$shards/$peers" in
      1/1) name="one trainer" ;;
      2/1) name="one trainer, 2 data shards" ;;
      *) name="$peers data-parallel peers" ;;
    esac
    echo "| $name | $round | $rate |"
  done
done
