#!/usr/bin/env bash
# Push/pull throughput of a store's artifacts to an S3 remote on loopback (SeaweedFS), and the
# overhead of the Slurm executor against the local one on a 3-point sweep (a one-node cluster
# started here). Usage: benches/past-one-machine.sh STORE [BIN]
#   STORE  a store whose run records are pushed (e.g. `artifacts` after `make`)
#   BIN    the asymm binary (default target/release/asymm)
# Needs what `make test` installs: .cache/venv/bin/weed, and slurm-wlm + munge for the second part.
set -euo pipefail
STORE=$(realpath "$1")
BIN=$(realpath "${2:-target/release/asymm}")
WEED=$(realpath .cache/venv/bin/weed)
WORK=$(mktemp -d /tmp/asymm-bench-XXXXXX)
trap 'kill -9 $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$WORK"' EXIT
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- The S3 remote -------------------------------------------------------------------------
S3=$(port)
cat > "$WORK/s3.json" <<EOF
{"identities":[{"name":"admin","credentials":[{"accessKey":"bench","secretKey":"bench-secret"}],
 "actions":["Admin","Read","List","Tagging","Write"]}]}
EOF
mkdir -p "$WORK/weed"
"$WEED" mini -dir="$WORK/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -bucket=bench \
  -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -s3.port="$S3" -master.port="$(port)" \
  -volume.port="$(port)" -filer.port="$(port)" -admin.port="$(port)" -s3.config="$WORK/s3.json" \
  > "$WORK/weed.log" 2>&1 &
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
for s in "$STORE" "$WORK/pulled"; do
  "$BIN" --store "$s" remote add bench s3://bench/b --endpoint "http://127.0.0.1:$S3" >/dev/null
done
for _ in $(seq 1 150); do
  "$BIN" --store "$WORK/pulled" pull bench >/dev/null 2>&1 && break
  sleep 0.2
done
echo "| step | records | artifacts | files | MB | seconds | MB/s |"
echo "|---|---:|---:|---:|---:|---:|---:|"
row() { # label json seconds
  python3 - "$1" "$2" "$3" <<'PY'
import json, sys
label, doc, s = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
mb = doc["bytes"] / 1e6
print(f"| {label} | {doc['records']} | {doc['artifacts']} | {doc['files']} | {mb:.1f} | {s:.2f} | {mb / s if s else 0:.0f} |")
PY
}
t0=$(now); J=$("$BIN" --store "$STORE" push bench --format json); t1=$(now)
row "push (empty remote)" "$J" "$(secs "$t0" "$t1")"
t0=$(now); J=$("$BIN" --store "$STORE" push bench --format json); t1=$(now)
row "push again" "$J" "$(secs "$t0" "$t1")"
t0=$(now); J=$("$BIN" --store "$WORK/pulled" pull bench --format json); t1=$(now)
row "pull (empty store)" "$J" "$(secs "$t0" "$t1")"
"$BIN" --store "$WORK/pulled" verify >/dev/null
"$BIN" --store "$STORE" remote remove bench >/dev/null

# --- Slurm -----------------------------------------------------------------------------------
command -v slurmctld >/dev/null || { echo "(no slurmctld: the executor part is skipped)"; exit 0; }
munge -n >/dev/null 2>&1 || { mkdir -p /run/munge; munged --force; sleep 1; }
mkdir -p "$WORK"/sl/{state,spool,log,run}
export SLURM_CONF="$WORK/sl/slurm.conf"
cat > "$SLURM_CONF" <<EOF
ClusterName=asymmbench
SlurmctldHost=localhost
SlurmctldPort=$(port)
SlurmdPort=$(port)
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$WORK/sl/state
SlurmdSpoolDir=$WORK/sl/spool
SlurmctldPidFile=$WORK/sl/run/slurmctld.pid
SlurmdPidFile=$WORK/sl/run/slurmd.pid
SlurmctldLogFile=$WORK/sl/log/slurmctld.log
SlurmdLogFile=$WORK/sl/log/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=localhost CPUs=2 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld -D -i > /dev/null 2>&1 &
for _ in $(seq 1 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
slurmd -D -N localhost > /dev/null 2>&1 &
for _ in $(seq 1 100); do [ "$(sinfo -h -o %T 2>/dev/null)" = idle ] && break; sleep 0.2; done
cat > "$WORK/sweep.toml" <<EOF
[pipeline]
name = "sweep"
seed = 3
[stages.synthesize]
task = "graph_coloring"
splits = { test = 8, sft = 24, rl = 4 }
[stages.render]
inputs = { puzzles = "synthesize" }
sweep = { size = [48, 56, 64] }
EOF
echo
echo "| executor | 3-point sweep (synthesize cached), wall seconds | stage work, seconds |"
echo "|---|---:|---:|"
# Slurm twice: the first jobs of a freshly started cluster, then a warm one.
i=0
for ex in local slurm slurm; do
  i=$((i + 1))
  S="$WORK/sweep-$i"
  "$BIN" --store "$S" run "$WORK/sweep.toml" --until synthesize >/dev/null
  t0=$(now); OUT=$("$BIN" --store "$S" run "$WORK/sweep.toml" --executor "$ex" 2>/dev/null); t1=$(now)
  work=$(echo "$OUT" | sed -n 's/^stage work: \([0-9.]*\) s$/\1/p')
  echo "| $ex | $(secs "$t0" "$t1") | $work |"
done
