"""How close a training step gets to this machine's matmul peak: the SFT step and the reward-model step.

In one run, on the packaged SmolLM2-135M (or ``--model`` a causal-LM folder, or ``--tiny``):

1. **Peak**: ``torch.matmul`` FLOP/s at the training shapes, i.e. for every linear layer of the model
   (q, k, v, o, gate, up, down, LM head) the three products of a train step -- forward X.W, input
   gradient dY.W^T, weight gradient X^T.dY -- with X of T = tokens-per-step rows, plus a 2048^3 square
   for reference; fp32, and bf16 where the CPU has AVX512-BF16 or AMX (``/proc/cpuinfo``) or on CUDA.
   ``peak`` is the best of them; ``shape_bound`` is what a step made only of these matmuls would reach
   (their FLOPs over their summed times): the limit the shapes themselves set.
2. **Achieved**: the SFT step as the sft stage takes it (``sft.batch_size`` demonstrations of the built-in
   data, chat template, ``sft.max_length``, right-padded to the batch's longest, forward with the LM loss,
   backward, AdamW) and the reward stage's step (``reward.prompts_per_batch`` whole prompts of the
   built-in comparisons, one forward per answer in the stage's length buckets, ``kwise_loss``,
   backward through the top layers above ``reward.freeze_layers``, clipping, AdamW), each timed over
   ``--steps`` steps after ``--warmup``.

FLOPs of a step (the usual estimate): 2 x matmul parameters x tokens forward and 4 x backward, plus
attention 4 x layers x S^2 x d per sequence forward (QK^T and AV) and 8 x backward, where S is the
padded length; padded tokens count (they are computed). Matmul parameters: the weights of every
linear layer, the LM head included (its weight is the tied input embedding, whose lookup is not a
matmul). Frozen layers run forward only. Reported: achieved FLOP/s and its share of ``peak`` and of
``shape_bound``, and the share of the step that is not matmul time at the measured rates.

    .venv/bin/python benchmarks/train_step_flops.py                     # SmolLM2-135M, default params
    .venv/bin/python benchmarks/train_step_flops.py --tiny --steps 2    # smoke test, seconds

Prints a table and writes JSON to benchmarks/results/train_step_flops.json (--tiny: ..._tiny.json).
Target (issue 19): SFT and reward steps >= 50% of the measured peak, with what limits them named.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_call(fn, min_seconds: float = 0.3, warmup: int = 2) -> float:
    """Median seconds of one call of ``fn`` (at least 3 calls and ``min_seconds`` in all)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    while len(times) < 3 or sum(times) < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def linear_shapes(config) -> dict[str, tuple[int, int, int]]:
    """name -> (in features, out features, count) of the linear layers of a Llama-style decoder."""
    d, i, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (d // config.num_attention_heads)
    return {"q_proj": (d, d, L), "k_proj": (d, kv, L), "v_proj": (d, kv, L), "o_proj": (d, d, L),
            "gate_proj": (d, i, L), "up_proj": (d, i, L), "down_proj": (i, d, L), "lm_head": (d, config.vocab_size, 1)}


def matmul_rates(shapes: dict, tokens: int, dtype, device) -> dict:
    """FLOP/s of the forward, input-gradient and weight-gradient products of each linear layer."""
    import torch

    out = {}
    for name, (k, n, _count) in shapes.items():
        x = torch.randn(tokens, k, dtype=dtype, device=device)
        w = torch.randn(k, n, dtype=dtype, device=device)
        dy = torch.randn(tokens, n, dtype=dtype, device=device)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        for kind, fn in (("forward", lambda: x @ w), ("grad_input", lambda: dy @ w.T), ("grad_weight", lambda: x.T @ dy)):
            sec = time_call(lambda: (fn(), sync()))
            out[f"{name}.{kind}"] = {"m_k_n": [tokens, k, n] if kind == "forward" else
                                     ([tokens, n, k] if kind == "grad_input" else [k, tokens, n]),
                                     "seconds": sec, "flops_per_s": 2 * tokens * k * n / sec}
    a = torch.randn(2048, 2048, dtype=dtype, device=device)
    sec = time_call(lambda: (a @ a, torch.cuda.synchronize() if device.type == "cuda" else None))
    out["square_2048"] = {"m_k_n": [2048, 2048, 2048], "seconds": sec, "flops_per_s": 2 * 2048 ** 3 / sec}
    return out


def peak_summary(rates: dict, shapes: dict, tokens: int, skip: tuple[str, ...] = ()) -> dict:
    """peak (best rate) and shape_bound: FLOPs of one step's linear products over their summed times."""
    flops = secs = 0.0
    for key, r in rates.items():
        name = key.split(".")[0]
        if name in shapes and name not in skip:
            count = shapes[name][2]
            flops += count * 2 * tokens * shapes[name][0] * shapes[name][1]
            secs += count * r["seconds"]
    return {"peak_flops_per_s": max(r["flops_per_s"] for r in rates.values()),
            "shape_bound_flops_per_s": flops / secs if secs else None}


def linear_params(model) -> tuple[int, int, list[int]]:
    """(linear weights of the decoder layers, LM-head weights, linear weights per layer)."""
    import torch

    base = model.base_model
    per_layer = [sum(m.weight.numel() for m in layer.modules() if isinstance(m, torch.nn.Linear))
                 for layer in base.layers]
    head = model.get_output_embeddings()
    return sum(per_layer), (head.weight.numel() if head is not None else 0), per_layer


def attention_flops(config, seq_lens: list[int], layers: int, backward: bool) -> float:
    d = config.hidden_size
    per = 4 * d * sum(s * s for s in seq_lens) * layers
    return per * (3 if backward else 1)


def sft_step_bench(cfg, model, tokenizer, demos, steps: int, warmup: int) -> dict:
    import torch

    from components.core.encode import encode_pair

    sc = cfg.sft
    b = sc.batch_size
    batches = []
    for s in range(warmup + steps):
        recs = [demos[(s * b + j) % len(demos)] for j in range(b)]
        seqs = [encode_pair(tokenizer, r["prompt"], r["response"], cfg.common.system_prompt, sc.max_length)[0] for r in recs]
        S = max(map(len, seqs))
        ids = torch.full((b, S), tokenizer.pad_token_id, dtype=torch.long)
        attn = torch.zeros((b, S), dtype=torch.long)
        for j, x in enumerate(seqs):
            ids[j, :len(x)] = torch.tensor(x)
            attn[j, :len(x)] = 1
        labels = ids.masked_fill(attn == 0, -100)
        batches.append((ids, attn, labels, [S] * b, sum(map(len, seqs))))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=sc.lr, weight_decay=sc.weight_decay)
    n_body, n_head, _ = linear_params(model)
    times, flops, real_tokens, padded_tokens = [], 0.0, 0, 0
    for s, (ids, attn, labels, lens, real) in enumerate(batches):
        t0 = time.perf_counter()
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if s >= warmup:
            times.append(time.perf_counter() - t0)
            T = ids.numel()
            flops += 6 * (n_body + n_head) * T + attention_flops(model.config, lens, model.config.num_hidden_layers, True)
            real_tokens += real
            padded_tokens += T
    sec = sum(times)
    return {"steps": steps, "seconds_per_step": sec / steps, "flops_per_step": flops / steps,
            "flops_per_s": flops / sec, "tokens_per_step": padded_tokens / steps,
            "real_tokens_per_step": real_tokens / steps, "matmul_params": n_body + n_head,
            "frozen_layers": 0}


def reward_step_bench(cfg, model_dir: Path, comps, steps: int, warmup: int) -> dict:
    import torch

    from components.core.models import freeze_bottom
    from components.core.scoring import length_buckets
    from components.maths.reward_losses import kwise_loss
    from components.stages import reward

    rc = cfg.reward
    model, tokenizer = reward.load_reward_backbone(model_dir)
    freeze_bottom(model, rc.freeze_layers)
    utilities, type_to_id = reward.utilities_of(cfg)
    items, _ = reward.encode_comparisons(comps, tokenizer, cfg, type_to_id)
    pad = tokenizer.pad_token_id
    L = model.config.num_hidden_layers
    frozen = min(max(rc.freeze_layers, 0), L)
    _, _, per_layer = linear_params(model)
    n_all, n_top = sum(per_layer), sum(per_layer[frozen:])
    head = [p for n, p in model.named_parameters() if n.startswith("score")]
    body = [p for n, p in model.named_parameters() if not n.startswith("score") and p.requires_grad]
    opt = torch.optim.AdamW([{"params": body, "lr": rc.lr}, {"params": head, "lr": rc.head_lr}], weight_decay=rc.weight_decay)
    model.train()
    P = rc.prompts_per_batch
    times, flops, tokens, answers = [], 0.0, 0, 0
    for s in range(warmup + steps):
        batch_items = [items[(s * P + j) % len(items)] for j in range(P)]
        b = reward.collate(batch_items)
        t0 = time.perf_counter()
        r = reward.batch_rewards(model, b, pad, rc.micro_batch_tokens)
        loss, _ = kwise_loss(r, b.ranks, b.mask, b.utility_ids, utilities, eps=rc.utility_eps)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), rc.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if s >= warmup:
            times.append(time.perf_counter() - t0)
            lens = [len(x) for x in b.seqs]
            padded = [max(lens[i] for i in g) for g in length_buckets(lens, rc.micro_batch_tokens) for _ in g]
            T = sum(padded)
            flops += (2 * n_all + 4 * n_top) * T
            flops += attention_flops(model.config, padded, L, False) + attention_flops(model.config, padded, L - frozen, False) * 2
            tokens += T
            answers += len(lens)
    sec = sum(times)
    return {"steps": steps, "seconds_per_step": sec / steps, "flops_per_step": flops / steps, "flops_per_s": flops / sec,
            "tokens_per_step": tokens / steps, "answers_per_step": answers / steps, "matmul_params": n_all,
            "trained_matmul_params": n_top, "frozen_layers": frozen}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="causal-LM folder (default: the packaged SmolLM2-135M, converted in memory)")
    ap.add_argument("--tiny", action="store_true", help="the tiny random model of the test profile (smoke test)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per stage (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/train_step_flops[_tiny].json)")
    args = ap.parse_args(argv)

    import torch

    from components.core.config import load_config
    from components.core.data import FILES, read_jsonl
    from components.core.models import save_model_dir
    from components.datasets import synth
    from components.stages import base_model

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(ROOT / "params.yaml", ["base_model.tiny=true"] if args.tiny else [])
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synth.write_builtin(cfg, tmp / "data")
        demos = read_jsonl(tmp / "data" / FILES["demonstrations"])
        comps = read_jsonl(tmp / "data" / FILES["comparisons"])
        if args.model:
            model_dir = Path(args.model)
        else:
            tok = base_model.load_tokenizer(cfg.base_model.source, cfg.base_model.trust_remote_code)
            save_model_dir(base_model.build_model(cfg.base_model, tok, cfg.common.seed), tok, tmp / "model")
            model_dir = tmp / "model"
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        config = model.config
        flags = cpu_flags()
        machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                   "torch": torch.__version__, "amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags,
                   "avx512f": "avx512f" in flags, "avx2": "avx2" in flags, "fma": "fma" in flags}
        print(f"[flops] {machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} torch threads; "
              f"AMX-BF16 {machine['amx_bf16']}, AVX512-BF16 {machine['avx512_bf16']}, AVX512F {machine['avx512f']}, "
              f"AVX2 {machine['avx2']}", flush=True)

        print(f"[flops] SFT step: batch {cfg.sft.batch_size}, max_length {cfg.sft.max_length} ...", flush=True)
        sft = sft_step_bench(cfg, model, tokenizer, demos, args.steps, args.warmup)
        del model
        print(f"[flops] reward step: {cfg.reward.prompts_per_batch} prompts, freeze_layers {cfg.reward.freeze_layers} ...",
              flush=True)
        rm = reward_step_bench(cfg, model_dir, comps, args.steps, args.warmup)

    shapes = linear_shapes(config)
    tokens = int(round(sft["tokens_per_step"]))
    precisions = {"fp32": torch.float32}
    if machine["amx_bf16"] or machine["avx512_bf16"]:
        precisions["bf16"] = torch.bfloat16
    peaks = {}
    for pname, dtype in precisions.items():
        print(f"[flops] matmul rates at T = {tokens} tokens, {pname} ...", flush=True)
        rates = matmul_rates(shapes, tokens, dtype, device)
        peaks[pname] = {"rates": rates, "sft": peak_summary(rates, shapes, tokens),
                        "reward": peak_summary(rates, shapes, tokens, skip=("lm_head",))}
    fp32 = peaks["fp32"]
    peak = fp32["sft"]["peak_flops_per_s"]
    for name, res in (("sft", sft), ("reward", rm)):
        bound = fp32[name]["shape_bound_flops_per_s"]
        res["share_of_peak"] = res["flops_per_s"] / peak
        res["share_of_shape_bound"] = res["flops_per_s"] / bound
        # the step's FLOPs at the shape-bound rate, against its measured time: the rest is not matmul
        res["non_matmul_share"] = max(0.0, 1 - (res["flops_per_step"] / bound) / res["seconds_per_step"])

    rows = [("", "s/step", "tokens/step", "GFLOP/step", "GFLOP/s", "of peak", "of shape bound", "not matmul")]
    for name, res in (("sft", sft), ("reward", rm)):
        rows.append((name, f"{res['seconds_per_step']:.2f}", f"{res['tokens_per_step']:.0f}", f"{res['flops_per_step'] / 1e9:.0f}",
                     f"{res['flops_per_s'] / 1e9:.1f}", f"{res['share_of_peak']:.0%}", f"{res['share_of_shape_bound']:.0%}",
                     f"{res['non_matmul_share']:.0%}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    for pname, p in peaks.items():
        best = max(p["rates"].items(), key=lambda kv: kv[1]["flops_per_s"])
        print(f"{pname} matmul peak {p['sft']['peak_flops_per_s'] / 1e9:.1f} GFLOP/s ({best[0]}), shape bound: SFT step "
              f"{p['sft']['shape_bound_flops_per_s'] / 1e9:.1f}, reward step {p['reward']['shape_bound_flops_per_s'] / 1e9:.1f}")
        for key, r in sorted(p["rates"].items(), key=lambda kv: kv[1]["flops_per_s"]):
            print(f"    {key:24s} {'x'.join(map(str, r['m_k_n'])):>18s}  {r['flops_per_s'] / 1e9:6.1f} GFLOP/s")
    if "bf16" not in peaks:
        print("bf16: not measured (no AVX512-BF16 or AMX-BF16 in /proc/cpuinfo: the stages train in fp32 here)")

    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"train_step_flops{'_tiny' if args.tiny else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": date.today().isoformat(), "machine": machine, "model": "tiny" if args.tiny else
                               (args.model or cfg.base_model.source), "sft": sft, "reward": rm, "peaks": peaks}, indent=2) + "\n")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
