"""A PyTorch twin of asymm's VLM (src/model/) for timing side by side with `asymm bench`.

The same architecture and layer shapes (its parameter count is asserted equal to asymm's), the
same examples, SFT batches and AdamW step, and a KV-cache sampling loop of the kind HF
`generate` runs. It reads what `asymm bench --suite model --export-twin FILE` writes and prints
one JSON document in the shape of `asymm bench --json`.

    python twin.py --export twin.json --measure sft-standard [--device cpu|cuda] [--threads N]
    python twin.py --self-check

Measurements (one per process, so that peak memory is the measurement's own): `sft-standard`,
`sft-ngdiff`, `rollout-B` (a rollout plan of the export with batch B).
"""

import argparse
import base64
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


def rss_kib(field):
    """A memory field of /proc/self/status (VmRSS, VmHWM) in KiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


# Resident memory once torch is loaded, before any work: the runtime's own share of the peak.
IMPORT_RSS_KIB = rss_kib("VmRSS")

# asymm's additive bias for masked attention scores.
MASKED = -1.0e9


# --------------------------------------------------------------------------------------------
# The model: layers.rs and vlm.rs.


class Rope:
    """Rotary tables for positions [B, T]: cos, sin of shape [B, 1, T, d_head/2]."""

    def __init__(self, positions, d_head, theta):
        half = d_head // 2
        i = torch.arange(half, device=positions.device, dtype=torch.float32)
        inv = 1.0 / theta ** (2.0 * i / d_head)
        angles = positions.float()[:, :, None] * inv[None, None, :]
        self.cos = angles.cos()[:, None]
        self.sin = angles.sin()[:, None]

    def apply(self, x):
        """Rotates x [B, H, T, d_head], half-split convention."""
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * self.cos - x2 * self.sin, x1 * self.sin + x2 * self.cos], -1)


class Attention(nn.Module):
    """Multi-head self-attention; `qkv` and `out` have biases."""

    def __init__(self, d, heads):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.heads = heads

    def forward(self, x, rope=None, mask=None, causal=False, cache=None):
        """`mask`: additive, broadcastable to [B, H, T, T_keys]; `cache`: a list holding this
        layer's (k, v) or None, updated in place (new keys appended, as HF's DynamicCache)."""
        b, t, d = x.shape
        h = self.heads
        q, k, v = self.qkv(x).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        if rope is not None:
            q, k = rope.apply(q), rope.apply(k)
        if cache is not None:
            if cache[0] is not None:
                k = torch.cat([cache[0][0], k], 2)
                v = torch.cat([cache[0][1], v], 2)
            cache[0] = (k, v)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.out(ctx.transpose(1, 2).reshape(b, t, d))


class GatedMlp(nn.Module):
    """down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, d, hidden):
        super().__init__()
        self.gate = nn.Linear(d, hidden, bias=False)
        self.up = nn.Linear(d, hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    """Pre-norm block (RMSNorm with a learned scale, eps 1e-5 as burn's)."""

    def __init__(self, d, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.RMSNorm(d, eps=1e-5)
        self.attn = Attention(d, heads)
        self.norm2 = nn.RMSNorm(d, eps=1e-5)
        self.mlp = GatedMlp(d, d * mlp_ratio)

    def forward(self, x, rope=None, mask=None, causal=False, cache=None):
        x = x + self.attn(self.norm1(x), rope, mask, causal, cache)
        return x + self.mlp(self.norm2(x))


class ConvStem(nn.Module):
    """Two stride-2 3×3 convolutions with GELU: [B, 1, S, S] → [B, 2c, S/4, S/4]."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(1, c, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)

    def forward(self, x):
        return F.gelu(self.conv2(F.gelu(self.conv1(x))))


def patch_features(cfg):
    c, p = cfg["conv_stem"], cfg["patch_size"]
    return p * p if c == 0 else 2 * c * (p // 4) ** 2


class Vlm(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        n = (cfg["image_size"] // cfg["patch_size"]) ** 2
        pf = patch_features(cfg)
        vd, d = cfg["vit_dim"], cfg["d_model"]
        self.stem = ConvStem(cfg["conv_stem"]) if cfg["conv_stem"] > 0 else None
        self.patch_norm = nn.RMSNorm(pf, eps=1e-5)
        self.patch_embed = nn.Linear(pf, vd)
        self.vit_pos = nn.Parameter(torch.randn(n, vd) * 0.02)
        self.vit_blocks = nn.ModuleList(
            Block(vd, cfg["vit_heads"], cfg["mlp_ratio"]) for _ in range(cfg["vit_layers"])
        )
        self.vit_norm = nn.RMSNorm(vd, eps=1e-5)
        self.projector = nn.Linear(vd, d)
        self.embed = nn.Embedding(cfg["vocab_size"], d)
        self.blocks = nn.ModuleList(
            Block(d, cfg["heads"], cfg["mlp_ratio"]) for _ in range(cfg["layers"])
        )
        self.norm = nn.RMSNorm(d, eps=1e-5)
        self.lm_head = nn.Linear(d, cfg["vocab_size"])
        self.patch_size = cfg["patch_size"]
        self.d_head = d // cfg["heads"]
        self.rope_theta = cfg["rope_theta"]

    def encode_image(self, images):
        """Image tokens [B, N, d_model] from images [B, S, S]."""
        b, s, _ = images.shape
        g = s // self.patch_size
        if self.stem is None:
            p = self.patch_size
            patches = images.reshape(b, g, p, g, p).transpose(2, 3).reshape(b, g * g, p * p)
        else:
            f = self.stem(images.reshape(b, 1, s, s))
            c, h = f.shape[1], f.shape[2]
            q = h // g
            patches = (
                f.reshape(b, c, g, q, g, q).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * q * q)
            )
        x = self.patch_embed(self.patch_norm(patches)) + self.vit_pos
        for blk in self.vit_blocks:
            x = blk(x)
        return self.projector(self.vit_norm(x))

    def run_lm(self, x, positions, mask=None, causal=False, caches=None):
        rope = Rope(positions, self.d_head, self.rope_theta)
        for i, blk in enumerate(self.blocks):
            x = blk(x, rope, mask, causal, None if caches is None else caches[i])
        return self.lm_head(self.norm(x))

    def forward_text(self, images, ids):
        """Teacher-forced logits [B, L, vocab] for text ids [B, L] after the image."""
        img = self.encode_image(images)
        n = img.shape[1]
        x = torch.cat([img, self.embed(ids)], 1)
        b, t = x.shape[0], x.shape[1]
        positions = torch.arange(t, device=x.device).expand(b, t)
        return self.run_lm(x, positions, causal=True)[:, n:]

    def prefill(self, images, prefixes):
        """[pads, image, prefix] per row (left padding masked out of every attention); returns
        the last position's logits [B, vocab] and the decode state."""
        dev = images.device
        img = self.encode_image(images)
        b, n, _ = img.shape
        lmax = max(len(p) for p in prefixes)
        t = n + lmax
        pads = [lmax - len(p) for p in prefixes]
        ids = torch.tensor([[0] * k + p for k, p in zip(pads, prefixes)], device=dev)
        text = self.embed(ids)
        if any(pads):
            x = torch.cat(
                [torch.cat([text[i : i + 1, :k], img[i : i + 1], text[i : i + 1, k:]], 1)
                 for i, k in enumerate(pads)], 0)
            j = torch.arange(t, device=dev)[None, :]
            k = torch.tensor(pads, device=dev)[:, None]
            real = j >= k
            positions = torch.where(real, j - k, 0)
            key_bias = torch.where(real, 0.0, MASKED)[:, None, None, :]
            causal = torch.triu(torch.full((t, t), MASKED, device=dev), 1)
            mask, is_causal = causal + key_bias, False
        else:
            x = torch.cat([img, text], 1)
            positions = torch.arange(t, device=dev).expand(b, t)
            key_bias, mask, is_causal = None, None, True
        caches = [[None] for _ in self.blocks]
        logits = self.run_lm(x, positions, mask, is_causal, caches)
        next_pos = torch.tensor([n + len(p) for p in prefixes], device=dev)
        return logits[:, -1], {"caches": caches, "key_bias": key_bias, "next_pos": next_pos}

    def step(self, tokens, state):
        """Feeds one token per row [B]; returns the next logits [B, vocab]."""
        positions = state["next_pos"][:, None]
        state["next_pos"] = state["next_pos"] + 1
        kb = state["key_bias"]
        if kb is not None:
            kb = torch.cat([kb, kb.new_zeros(kb.shape[0], 1, 1, 1)], 3)
            state["key_bias"] = kb
        logits = self.run_lm(self.embed(tokens[:, None]), positions, kb, False, state["caches"])
        return logits[:, 0]


# --------------------------------------------------------------------------------------------
# Data, SFT and sampling as asymm's model suite runs them.


def load_examples(export, device):
    s = export["config"]["image_size"]
    out = []
    for e in export["examples"]:
        raw = bytearray(base64.b64decode(e["image_f32le_base64"]))
        image = torch.frombuffer(raw, dtype=torch.float32).reshape(s, s)
        spans = {name: (a, b) for name, a, b in e["spans"]}
        out.append({"prompt": e["prompt"], "target": e["target"], "spans": spans, "image": image})
    return out


def make_batch(exs, pad, max_text, device):
    """Right-padded teacher-forcing batch, as train::batch::make_batch: inputs, labels, and for
    each position the target index its label has (None: prompt or pad)."""
    texts = [(e["prompt"] + e["target"])[: max_text + 1] for e in exs]
    length = max(1, max(len(t) - 1 for t in texts))
    inputs = [[pad] * length for _ in exs]
    labels = [[0] * length for _ in exs]
    index = [[None] * length for _ in exs]
    for i, (t, e) in enumerate(zip(texts, exs)):
        for j in range(len(t) - 1):
            inputs[i][j], labels[i][j] = t[j], t[j + 1]
            if j + 1 >= len(e["prompt"]):
                index[i][j] = j + 1 - len(e["prompt"])
    images = torch.stack([e["image"] for e in exs]).to(device)
    return (images, torch.tensor(inputs, device=device), torch.tensor(labels, device=device),
            index)


def token_weights(exs, index, span):
    """Per-token weights of one mean-loss term (`span` None: every target token), averaged over
    the batch, as train::objective::token_weights."""
    b, length = len(exs), len(index[0])
    w = [[0.0] * length for _ in exs]
    for i, e in enumerate(exs):
        start, end = (0, len(e["target"])) if span is None else e["spans"][span]
        pos = [j for j in range(length) if index[i][j] is not None and start <= index[i][j] < end]
        for j in pos:
            w[i][j] += 1.0 / len(pos) / b
    return w


def lr_at(step, total, base, low, warmup_ratio):
    """train::schedule::cosine_with_warmup."""
    warmup = round(total * warmup_ratio)
    if step < warmup:
        return base * (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    return low + 0.5 * (base - low) * (1.0 + math.cos(math.pi * progress))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sft(model, export, examples, objective, device):
    """Trains `steps` steps on the export's batches; returns (steps timed, target tokens,
    seconds), the first `warmup` (default 1) steps excluded."""
    s = export["sft"]
    warmup = s.get("warmup", 1)
    pad = export["pad"]
    opt = torch.optim.AdamW(
        model.parameters(), lr=s["lr"], betas=(s["adamw"]["beta_1"], s["adamw"]["beta_2"]),
        eps=s["adamw"]["epsilon"], weight_decay=s["weight_decay"])
    params = [p for p in model.parameters()]

    def grads_of(images, inputs, labels, weights):
        """Per-token NLL on the host (as asymm keeps it for its log) and the weighted loss's
        gradient."""
        logits = model.forward_text(images, inputs)
        nll = -F.log_softmax(logits, -1).gather(2, labels[:, :, None])[:, :, 0]
        nll.detach().cpu()
        w = torch.tensor(weights, device=device)
        opt.zero_grad(set_to_none=True)
        (nll * w).sum().backward()
        return [p.grad for p in params]

    timed_tokens, timed_seconds = 0, 0.0
    for step, idx in enumerate(s["batches"]):
        t0 = time.perf_counter()
        exs = [examples[i] for i in idx]
        images, inputs, labels, index = make_batch(exs, pad, s["max_text"], device)
        tokens = sum(1 for row in index for k in row if k is not None)
        if objective == "standard":
            grads_of(images, inputs, labels, token_weights(exs, index, None))
        else:
            # NGDiff: the perception-mean and reasoning-mean losses' gradients (two forward and
            # backward passes, as asymm), λ from their norms, the combined gradient.
            gp = grads_of(images, inputs, labels, token_weights(exs, index, "perception"))
            gr = grads_of(images, inputs, labels, token_weights(exs, index, "reasoning"))
            np_, nr = (torch.linalg.vector_norm(torch.stack(torch._foreach_norm(g))).item()
                       for g in (gp, gr))
            ip, ir = 1.0 / max(np_, 1e-12), 1.0 / max(nr, 1e-12)
            lam = ip / (ip + ir)
            for p, a, b in zip(params, gp, gr):
                p.grad = a * lam + b * (1.0 - lam)
        torch.nn.utils.clip_grad_norm_(params, s["grad_clip"])
        for group in opt.param_groups:
            group["lr"] = lr_at(step, s["steps"], s["lr"], s["min_lr"], s["warmup_ratio"])
        opt.step()
        sync(device)
        if step >= warmup:
            timed_tokens += tokens
            timed_seconds += time.perf_counter() - t0
    return len(s["batches"]) - warmup, timed_tokens, timed_seconds


@torch.inference_mode()
def generate(model, images, prefixes, eos, max_new, temperature, stops=None):
    """Prefill once, then one cached step per token; temperature sampling on the device; rows
    stop at <eos> or the budget (finished rows are fed <eos>, as HF feeds padding). With `stops`
    (per row: the step at which it samples <eos>, or None to run to the budget), <eos> is
    sampled exactly there and nowhere else, so that the twin does the same work as the asymm run
    it is compared with. Returns each row's new tokens (without <eos>) and whether the budget
    cut it."""
    b = len(prefixes)
    dev = images.device
    logits, state = model.prefill(images, prefixes)
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    new = torch.zeros(b, dtype=torch.long, device=dev)
    if stops is not None:
        stop_at = torch.tensor([max_new if x is None else x for x in stops], device=dev)
    for step in range(max_new):
        if stops is not None:
            logits[:, eos] = float("-inf")
        lp = F.log_softmax(logits.float() / temperature, -1)
        tok = torch.multinomial(lp.exp(), 1)[:, 0]
        # The sampling log-probabilities asymm keeps for the RL update.
        lp.gather(1, tok[:, None])
        if stops is not None:
            tok = torch.where(stop_at == step, eos, tok)
        tok = torch.where(done, eos, tok)
        new += (~done & (tok != eos)).long()
        done |= tok == eos
        if bool(done.all()) or step + 1 == max_new:
            break
        logits = model.step(tok, state)
    return new.tolist(), [not d for d in done.tolist()]


def rollout(model, export, examples, plan, device, stops=None):
    """Runs a rollout plan (`stops`: where each output stops, in order, as asymm's JSON gives
    them); returns (new tokens, truncated rows, seconds)."""
    r = export["rollout"]
    s = export["config"]["image_size"]
    rows = [(i, k) for i in range(plan["prompts_per_batch"] * plan["batches"])
            for k in range(plan["samples"])]
    new_total, truncated = 0, 0
    t0 = time.perf_counter()
    for c in range(0, len(rows), plan["batch"]):
        chunk = rows[c : c + plan["batch"]]
        images = torch.stack([examples[i]["image"] for i, _ in chunk]).reshape(-1, s, s)
        prefixes = [examples[i]["prompt"] for i, _ in chunk]
        new, trunc = generate(model, images.to(device), prefixes, export["eos"],
                              r["max_new_tokens"], r["temperature"],
                              None if stops is None else stops[c : c + plan["batch"]])
        new_total += sum(new)
        truncated += sum(trunc)
    sync(device)
    return new_total, truncated, time.perf_counter() - t0


def build_model(export, device):
    model = Vlm(export["config"])
    count = sum(p.numel() for p in model.parameters())
    if count != export["parameters"]:
        sys.exit(f"twin has {count} parameters, asymm's `{export['model']}` has "
                 f"{export['parameters']}: the architectures differ")
    return model.to(device), count


def self_check():
    """The KV cache and left padding give the logits of full uncached forwards."""
    torch.manual_seed(0)
    cfg = {"image_size": 32, "patch_size": 8, "vit_dim": 32, "vit_layers": 1, "vit_heads": 2,
           "conv_stem": 4, "d_model": 32, "layers": 2, "heads": 4, "mlp_ratio": 2,
           "vocab_size": 40, "max_seq_len": 128, "rope_theta": 10000.0}
    model = Vlm(cfg).eval()
    images = torch.rand(3, 32, 32)
    prefixes = [[1, 5, 9, 3], [2, 7], [4, 4, 4, 4, 4, 6]]
    with torch.no_grad():
        logits, state = model.prefill(images, prefixes)
        seqs = [list(p) for p in prefixes]
        for _ in range(5):
            tok = logits.argmax(-1)
            for s, t in zip(seqs, tok.tolist()):
                s.append(t)
            logits = model.step(tok, state)
            for i, s in enumerate(seqs):
                alone = model.prefill(images[i : i + 1], [s])[0]
                full = model.forward_text(images[i : i + 1], torch.tensor([s]))[:, -1]
                assert torch.allclose(logits[i], alone[0], atol=1e-4), (i, s)
                assert torch.allclose(alone, full, atol=1e-4), (i, s)
    print("twin self-check passed: cached, left-padded and uncached logits agree")


# aten operators that move no data (views, metadata, allocations): on a GPU they launch no
# kernel, so they are left out of the operator count compared with asymm's kernel launches.
NO_KERNEL = {
    "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::view", "aten::_unsafe_view",
    "aten::reshape", "aten::t", "aten::transpose", "aten::permute", "aten::expand",
    "aten::as_strided", "aten::slice", "aten::select", "aten::unsqueeze", "aten::squeeze",
    "aten::detach", "aten::alias", "aten::resolve_conj", "aten::resolve_neg", "aten::lift_fresh",
    "aten::split", "aten::chunk", "aten::narrow", "aten::unbind", "aten::numpy_T",
    "aten::_reshape_alias", "aten::expand_as", "aten::view_as", "aten::result_type",
    "aten::is_nonzero", "aten::item", "aten::_local_scalar_dense", "aten::set_",
    # A leaf `to` or `detach_` converts nothing (a conversion would call `_to_copy`).
    "aten::to", "aten::detach_",
}


def count_ops(run, device):
    """Runs `run()` under torch.profiler and counts the leaf aten operators (those that call no
    other aten operator) that move data: about one kernel each on a GPU. Returns (result,
    operators, the 15 most frequent with their counts, GPU kernels launched or None)."""
    from collections import Counter
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        result = run()
    kernels = None
    if device.type == "cuda":
        kernels = sum(1 for e in prof.events()
                      if e.device_type == torch.autograd.DeviceType.CUDA)
    ops = Counter()
    for e in prof.events():
        if not e.name.startswith("aten::") or e.name in NO_KERNEL:
            continue
        if any(c.name.startswith("aten::") for c in e.cpu_children):
            continue
        ops[e.name] += 1
    return result, sum(ops.values()), ops.most_common(15), kernels


def main():
    if sys.argv[1:] == ["--self-check"]:
        return self_check()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--export", required=True, help="JSON from asymm bench --export-twin")
    ap.add_argument("--measure", required=True,
                    help="sft-standard, sft-ngdiff or rollout-B (B: a planned batch)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--count-ops", action="store_true",
                    help="sft: also count the aten operators per step (torch.profiler), the "
                    "twin's side of `asymm bench --count-kernels`")
    ap.add_argument("--stops", help="rollouts: JSON list of where each output stops (asymm's "
                    "`stops`: new tokens before <eos>, null to run to the budget)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    with open(a.export) as f:
        export = json.load(f)
    device = torch.device(a.device)
    examples = load_examples(export, device)
    model, count = build_model(export, device)
    out = {"suite": "model", "model": export["model"], "device": str(device),
           "parameters": count, "threads": torch.get_num_threads(),
           "torch": torch.__version__, "sft": [], "rollout": []}
    if a.measure.startswith("sft-"):
        objective = a.measure[4:]
        if objective not in ("standard", "ngdiff"):
            sys.exit(f"unknown objective `{objective}`")
        model.train()
        row = {"objective": objective, "batch": export["sft"]["batch"]}
        if a.count_ops:
            (steps, tokens, secs), ops, top, kernels = count_ops(
                lambda: sft(model, export, examples, objective, device), device)
            total = len(export["sft"]["batches"])
            row["operators_per_step"] = ops / total
            if kernels is not None:
                row["gpu_kernels_per_step"] = kernels / total
            row["top_operators_per_step"] = [[n, c / total] for n, c in top]
        else:
            steps, tokens, secs = sft(model, export, examples, objective, device)
        row.update({"steps_timed": steps, "target_tokens": tokens, "seconds": secs,
                    "target_tokens_per_s": tokens / max(secs, 1e-9)})
        out["sft"].append(row)
    elif a.measure.startswith("rollout-"):
        batch = int(a.measure[len("rollout-"):])
        plans = [p for p in export["rollout"]["plans"] if p["batch"] == batch]
        if not plans:
            sys.exit(f"no rollout plan with batch {batch} in {a.export}")
        plan = plans[0]
        model.eval()
        stops = None
        if a.stops:
            with open(a.stops) as f:
                stops = json.load(f)
            if len(stops) != plan["batch"] * plan["batches"]:
                sys.exit(f"{a.stops}: {len(stops)} stops for {plan['batch'] * plan['batches']} "
                         "outputs")
        for _ in range(export["rollout"].get("warmup_passes", 0)):
            rollout(model, export, examples, plan, device, stops)
        new, truncated, secs = rollout(model, export, examples, plan, device, stops)
        out["rollout"].append({
            "batch": plan["batch"], "samples": plan["samples"],
            "prompts_per_batch": plan["prompts_per_batch"], "batches": plan["batches"],
            "max_new_tokens": export["rollout"]["max_new_tokens"],
            "sequences": plan["batch"] * plan["batches"], "new_tokens": new,
            "truncated": truncated, "seconds": secs, "new_tokens_per_s": new / max(secs, 1e-9)})
    else:
        sys.exit(f"unknown measurement `{a.measure}`")
    out["peak_rss_kib"] = rss_kib("VmHWM")
    out["import_rss_kib"] = IMPORT_RSS_KIB
    if device.type == "cuda":
        out["cuda_peak_allocated_kib"] = torch.cuda.max_memory_allocated(device) // 1024
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
