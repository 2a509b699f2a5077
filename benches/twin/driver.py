"""`make bench-twin`: asymm against its PyTorch twin (twin.py), measurement by measurement.

Each measurement (SFT standard, SFT NGDiff, rollout at each batch size) runs in its own process,
so that its peak resident memory is its own; asymm and the twin alternate within each round
(which one goes first alternates between rounds), and the table reports each side's median over
the rounds. Only the standard library is needed here; the twin runs under `--python`.
"""

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_json(cmd, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(map(str, cmd))}\n{p.stdout}\n{p.stderr}")
    return json.loads(p.stdout)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "n/a"


def mib(kib):
    return f"{kib / 1024:,.0f} MiB" if kib else "n/a"


def ratio(a, b):
    return f"{a / b:.2f}×" if a and b else "n/a"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--asymm", default="target/release/asymm", help="the asymm binary")
    ap.add_argument("--python", default=sys.executable, help="the Python that has torch")
    ap.add_argument("--model", default="tiny", help="size preset (tiny, small)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda:N (the twin runs on cuda:N)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="compute threads of each side (RAYON_NUM_THREADS, torch.set_num_threads)")
    ap.add_argument("--omp-wait-policy", default="",
                    help="OMP_WAIT_POLICY for the twin (PASSIVE: its OpenMP threads sleep instead "
                    "of spinning, as rayon's do; empty: libgomp's default)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10,
                    help="SFT steps per measurement, the first --warmup of them not timed")
    ap.add_argument("--warmup", type=int, default=1,
                    help="SFT steps (and rollout passes) run before timing: compilation, tuning")
    ap.add_argument("--rollout-batches", default="1,40")
    ap.add_argument("--rollout-samples", type=int, default=8, help="G per prompt")
    ap.add_argument("--work", default=".cache/bench-twin", help="folder for the export")
    ap.add_argument("--write", help="also write the Markdown to this file")
    a = ap.parse_args()

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    export_path = work / f"twin-{a.model}.json"
    common = ["--suite", "model", "--model", a.model, "--steps", str(a.steps),
              "--warmup", str(a.warmup)]
    rollout_args = ["--rollout-batches", a.rollout_batches,
                    "--rollout-samples", str(a.rollout_samples)]
    subprocess.run([a.asymm, "bench", *common, *rollout_args, "--export-twin", str(export_path)],
                   check=True)
    export = json.loads(export_path.read_text())

    twin_device = a.device
    if "/" in a.device:
        sys.exit(f"--device {a.device}: the twin computes in f32; compare on cpu or cuda:N")
    if a.device.startswith("cuda"):
        probe = subprocess.run([a.python, "-c", "import torch; print(torch.cuda.is_available())"],
                               capture_output=True, text=True)
        if probe.stdout.strip() != "True":
            sys.exit(f"--device {a.device}: torch under {a.python} sees no GPU")
    elif a.device != "cpu":
        sys.exit(f"unknown device `{a.device}` (cpu, cuda:N)")

    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    env.pop("OMP_WAIT_POLICY", None)
    if a.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = a.omp_wait_policy
    measures = ["sft-standard", "sft-ngdiff"] + [
        f"rollout-{p['batch']}" for p in export["rollout"]["plans"]]

    def asymm_cmd(m):
        if m.startswith("sft-"):
            pick = ["--objectives", m[4:], "--rollout-batches", "none"]
        else:
            pick = ["--objectives", "none", "--rollout-batches", m[len("rollout-"):],
                    "--rollout-samples", str(a.rollout_samples)]
        return [a.asymm, "bench", "--json", "--device", a.device, *common, *pick]

    def twin_cmd(m):
        cmd = [a.python, str(HERE / "twin.py"), "--export", str(export_path), "--measure", m,
               "--device", twin_device, "--threads", str(a.threads)]
        if m.startswith("rollout-"):
            # The twin's outputs stop where asymm's did (the first round's asymm run goes first).
            cmd += ["--stops", str(work / f"stops-{m}.json")]
        return cmd

    load_start = loadavg()
    results = {m: {"asymm": [], "twin": []} for m in measures}
    notes = []
    torch_version = None
    for r in range(a.rounds):
        for m in measures:
            order = [("asymm", asymm_cmd), ("twin", twin_cmd)]
            if r % 2:
                order.reverse()
            for side, cmd in order:
                out = run_json(cmd(m), env)
                torch_version = out.get("torch", torch_version)
                row = (out["sft"] or out["rollout"])[0]
                row["peak_rss_kib"] = out.get("peak_rss_kib")
                row["cuda_peak_allocated_kib"] = out.get("cuda_peak_allocated_kib")
                row["import_rss_kib"] = out.get("import_rss_kib")
                results[m][side].append(row)
                if side == "asymm" and "stops" in row:
                    stops = work / f"stops-{m}.json"
                    if r == 0:
                        stops.write_text(json.dumps(row["stops"]))
                    elif json.loads(stops.read_text()) != row["stops"]:
                        notes.append(f"{m}: asymm's outputs stopped elsewhere in round {r + 1}")
                rate = row.get("target_tokens_per_s", row.get("new_tokens_per_s"))
                print(f"round {r + 1}/{a.rounds} {m:>14} {side:>5}: {rate:9.0f} /s, "
                      f"peak {mib(row['peak_rss_kib'])}", file=sys.stderr)

    for m in measures:
        if m.startswith("sft-"):
            tok = {s: {x["target_tokens"] for x in results[m][s]} for s in ("asymm", "twin")}
            if tok["asymm"] != tok["twin"]:
                notes.append(f"{m}: asymm trained on {tok['asymm']} target tokens, the twin on "
                             f"{tok['twin']}: the batches differ")

    rows = []
    for m in measures:
        med = {}
        for side in ("asymm", "twin"):
            xs = results[m][side]
            key = "target_tokens_per_s" if m.startswith("sft-") else "new_tokens_per_s"
            rss = [x["peak_rss_kib"] for x in xs if x["peak_rss_kib"]]
            med[side] = (statistics.median(x[key] for x in xs),
                         statistics.median(rss) if rss else None)
        if m.startswith("sft-"):
            what = (f"SFT, {m[4:]} objective, batch {export['sft']['batch']}"
                    f"{' (two backward passes)' if m == 'sft-ngdiff' else ''}: target tokens/s")
        else:
            p = next(p for p in export["rollout"]["plans"] if p["batch"] == int(m[8:]))
            shape = (f" ({p['prompts_per_batch']} prompts × {p['samples']} samples)"
                     if p["samples"] > 1 else "")
            per_row = {s: statistics.mean(x["new_tokens"] / x["sequences"] for x in results[m][s])
                       for s in ("asymm", "twin")}
            what = (f"rollout, batch {p['batch']}{shape}, ≤{export['rollout']['max_new_tokens']} "
                    f"new tokens (asymm {per_row['asymm']:.0f} per output): new tokens/s")
            if abs(per_row["asymm"] - per_row["twin"]) > 0.05 * max(per_row.values()):
                notes.append(f"{m}: asymm wrote {per_row['asymm']:.1f} new tokens per row, the "
                             f"twin {per_row['twin']:.1f}")
        (ra, ma), (rt, mt) = med["asymm"], med["twin"]
        rows.append(f"| {what} | {ra:,.0f} | {rt:,.0f} | {ratio(ra, rt)} | {mib(ma)} | {mib(mt)} "
                    f"| {ratio(ma, mt)} |")

    imported = [x["import_rss_kib"] for m in measures for x in results[m]["twin"]
                if x.get("import_rss_kib")]
    if imported:
        notes.append(f"the twin's process holds {mib(statistics.median(imported))} once torch is "
                     "imported, before any work")
    cuda = [x["cuda_peak_allocated_kib"] for m in measures for x in results[m]["twin"]
            if x.get("cuda_peak_allocated_kib")]
    if cuda:
        notes.append(f"twin's peak CUDA allocation: up to {mib(max(cuda))} (asymm's GPU memory "
                     "is not measured; the memory columns are host memory)")

    head = (f"asymm `{export['model']}` ({export['parameters']:,} parameters) vs its PyTorch twin "
            f"(torch {torch_version}) on {a.device}, {a.threads} threads each"
            f"{f' (twin: OMP_WAIT_POLICY={a.omp_wait_policy})' if a.omp_wait_policy else ''}, "
            f"median of {a.rounds} rounds")
    md = [f"| {head} | asymm | twin | asymm / twin | asymm peak RSS | twin peak RSS "
          f"| asymm / twin |",
          "|---|---:|---:|---:|---:|---:|---:|", *rows]
    md.append("")
    md.append(f"Machine: {cpu_model()}, {os.cpu_count()} logical CPUs, load average "
              f"{load_start} at the start and {loadavg()} at the end; "
              f"`{shlex.join(sys.argv)}`.")
    md += [f"Note: {n}." for n in notes]
    text = "\n".join(md) + "\n"
    print(text, end="")
    if a.write:
        Path(a.write).write_text(text)


if __name__ == "__main__":
    main()
