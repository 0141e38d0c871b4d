"""Stage 3 — the reward model (InstructGPT step 2), trained on K-wise rankings.

A labeler ranked K = 2..9 answers to one prompt. All C(K,2) comparisons of that prompt form
ONE batch element: the model runs one forward pass per answer (not per pair), and the loss
(``reward_losses.kwise_loss``) compares every pair with different ranks. With the
reward-collapse paper's prompt-aware utilities, rewards are squashed to (0, 1) and each prompt
type gets its own U (``reward.utility``), so closed prompts learn a two-point reward and open
ones a spread.

Backbone = the SFT model + a scalar head (``AutoModelForSequenceClassification``, num_labels=1).
After training, a bias makes the demonstrations score mean 0 (InstructGPT); it is stored in the
model's config (``rlhf_reward``) and applied by ``RewardScorer``, which PPO and evaluation use.
"""

from __future__ import annotations

import math
import random
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from components.config import Config, ConfigError
from components.data import FILES, DataError, next_indices, read_jsonl, split_records, take

STAGE = "reward"
PROMPT_TYPES = ("closed", "open", "unknown")


# ---------------------------------------------------------------------------------------------
# Encoding: (prompt, answer) -> token ids, the same way for training, PPO and evaluation.
# ---------------------------------------------------------------------------------------------
def encode_pair(tokenizer, prompt: str, response: str, system_prompt: str, max_length: int) -> tuple[list[int], bool]:
    """Chat-template ids of prompt + answer, left-truncated to max_length (returns ids, truncated?).

    Left truncation keeps the answer's end, which is what the head reads (the last token).
    """
    from components.base_model import chat_ids, chat_messages

    ids = chat_ids(tokenizer, chat_messages(prompt, system_prompt) + [{"role": "assistant", "content": response}])
    return (ids[-max_length:], True) if len(ids) > max_length else (ids, False)


@dataclass
class Batch:
    seqs: list[list[int]]         # N token-id lists: every answer of every prompt, prompt by prompt
    slot: torch.Tensor            # (B, K) index into N of answer k of prompt b (0 where padded)
    mask: torch.Tensor            # (B, K) True for a real answer
    ranks: torch.Tensor           # (B, K) labeler ranks, 0 = best
    utility_ids: torch.Tensor     # (B,) index into the utilities tuple

    def to(self, device) -> "Batch":
        return Batch(self.seqs, self.slot.to(device), self.mask.to(device), self.ranks.to(device),
                     self.utility_ids.to(device))


def collate(items: list[dict]) -> Batch:
    """Whole prompts -> one flat list of answers plus the (B, K) layout to fold rewards back."""
    k_max = max(len(it["ids"]) for it in items)
    slot = torch.zeros((len(items), k_max), dtype=torch.long)
    mask = torch.zeros((len(items), k_max), dtype=torch.bool)
    ranks = torch.zeros((len(items), k_max), dtype=torch.long)
    n = 0
    for b, it in enumerate(items):
        k = len(it["ids"])
        slot[b, :k] = torch.arange(n, n + k)
        mask[b, :k] = True
        ranks[b, :k] = torch.tensor(it["ranks"])
        n += k
    utility_ids = torch.tensor([it["utility_id"] for it in items], dtype=torch.long)
    return Batch([ids for it in items for ids in it["ids"]], slot, mask, ranks, utility_ids)


def length_buckets(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Indices grouped by similar length, each group padded size (n x longest) <= max_tokens.

    Answers to one prompt differ a lot in length (a one-line answer vs. a padded, repeated one);
    padding them all to the longest wastes most of the compute on a CPU. Sorting first keeps
    padding small. A sequence longer than max_tokens gets a group of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[i] <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def raw_rewards(model, seqs: list[list[int]], pad_id: int, max_tokens: int = 2048) -> torch.Tensor:
    """N token-id lists -> (N,) scalar head output at each sequence's last real token.

    One forward pass per answer (never per pair), in length-bucketed micro-batches of right-padded
    sequences; the head reads the last token through the attention mask, not by a pad id.
    """
    from components.base_model import pad_batch

    device = next(model.parameters()).device
    out: list[torch.Tensor | None] = [None] * len(seqs)
    for group in length_buckets([len(s) for s in seqs], max_tokens):
        ids, attn = pad_batch([seqs[i] for i in group], pad_id)
        r = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.squeeze(-1).float()
        for row, i in enumerate(group):
            out[i] = r[row]
    return torch.stack(out) if out else torch.zeros(0, device=device)


def batch_rewards(model, batch: Batch, pad_id: int, max_tokens: int = 2048) -> torch.Tensor:
    """(B, K) raw rewards of a batch of whole prompts (padded slots are 0 and masked out)."""
    r = raw_rewards(model, batch.seqs, pad_id, max_tokens)
    return r[batch.slot] * batch.mask


# ---------------------------------------------------------------------------------------------
# Scoring for downstream stages.
# ---------------------------------------------------------------------------------------------
class RewardScorer:
    """Loads a reward-model folder; ``score(prompts, responses)`` -> bias-corrected rewards (N,)."""

    def __init__(self, path: str | Path, system_prompt: str = "", max_length: int = 256, batch_size: int = 16):
        from components.base_model import load_model_dir

        self.model, self.tokenizer = load_model_dir(path, kind="sequence-classification")
        self.model.eval()
        meta = getattr(self.model.config, "rlhf_reward", None) or {}
        self.bounded = bool(meta.get("bounded", False))
        self.bias = float(meta.get("bias", 0.0))
        self.system_prompt, self.max_length, self.batch_size = system_prompt, max_length, batch_size

    def transform(self, r: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(r) if self.bounded else r

    @torch.no_grad()
    def raw(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return score_raw(self.model, self.tokenizer, prompts, responses, self.system_prompt, self.max_length, self.batch_size)

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return self.transform(self.raw(prompts, responses)) - self.bias


@torch.no_grad()
def score_raw(model, tokenizer, prompts, responses, system_prompt, max_length, batch_size) -> torch.Tensor:
    seqs = [encode_pair(tokenizer, p, r, system_prompt, max_length)[0] for p, r in zip(prompts, responses)]
    return raw_rewards(model, seqs, tokenizer.pad_token_id, max_tokens=batch_size * max_length).cpu()


# ---------------------------------------------------------------------------------------------
# Diagnostics.
# ---------------------------------------------------------------------------------------------
def collapse_curves(rewards_by_prompt: list[tuple[str, list[float]]], grid: int = 9,
                    shape: bool = False) -> dict[str, list[float]]:
    """Mean sorted reward profile per prompt type (the reward-collapse diagnostic).

    Each prompt's rewards are sorted best-first and interpolated onto ``grid`` positions in [0, 1]
    (0 = best answer, 1 = worst), then averaged per prompt type. A closed-ended prompt trained with
    its utility should look like a step; an open-ended one like a ramp. ``shape=True`` min-max
    scales each prompt's rewards to [1 .. 0] first, so the curve shows the shape of the
    distribution alone, not its level or how saturated sigmoid(r) is (prompts whose K rewards are
    all equal have no shape and are left out).
    """
    import numpy as np

    xs = np.linspace(0, 1, grid)
    acc: dict[str, list] = {}
    for ptype, rewards in rewards_by_prompt:
        if len(rewards) < 2:
            continue
        r = np.sort(np.asarray(rewards, dtype=float))[::-1]
        if shape:
            span = r[0] - r[-1]
            if span <= 0:
                continue
            r = (r - r[-1]) / span
        acc.setdefault(ptype, []).append(np.interp(xs, np.linspace(0, 1, len(r)), r))
    return {t: np.mean(v, axis=0).round(6).tolist() for t, v in acc.items()}


def two_point_share(rewards_by_prompt: list[tuple[str, list[float]]], tol: float = 0.1) -> dict[str, float]:
    """Per prompt type, the mean share of a prompt's rewards at its extremes: within ``tol`` of its
    lowest or highest reward after min-max scaling. 1.0 is a two-point distribution (the paper's
    optimum of U = x for a closed prompt); 2/9 is nine evenly spread rewards. Prompts with fewer
    than 3 answers, or all-equal rewards, say nothing and are left out."""
    acc: dict[str, list[float]] = {}
    for ptype, r in rewards_by_prompt:
        if len(r) < 3 or max(r) <= min(r):
            continue
        lo, hi = min(r), max(r)
        z = [(x - lo) / (hi - lo) for x in r]
        acc.setdefault(ptype, []).append(sum(v <= tol or v >= 1 - tol for v in z) / len(z))
    return {t: sum(v) / len(v) for t, v in sorted(acc.items())}


def curve_distance(curves: dict[str, list[float]]) -> float:
    """Mean absolute gap between the open and closed curves (nan when one type is missing)."""
    if "open" not in curves or "closed" not in curves:
        return float("nan")
    return float(sum(abs(a - b) for a, b in zip(curves["open"], curves["closed"])) / len(curves["open"]))


def write_collapse_plot(curves: dict[str, list[float]], shapes: dict[str, list[float]], out_dir: Path,
                        title: str) -> tuple[Path, Path]:
    """DVC plot data (CSV: position, <type> = mean sigmoid(r), <type>_shape = min-max scaled) and a
    PNG with both views side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    types = [t for t in PROMPT_TYPES if t in curves]
    n = len(next(iter(curves.values()))) if curves else 0
    xs = [i / max(1, n - 1) for i in range(n)]
    cols = [(t, curves[t]) for t in types] + [(f"{t}_shape", shapes[t]) for t in types if t in shapes]
    csv = out_dir / "collapse.csv"
    rows = ["position," + ",".join(c for c, _ in cols)]
    rows += [f"{x:.4f}," + ",".join(f"{v[i]:.6f}" for _, v in cols) for i, x in enumerate(xs)]
    csv.write_text("\n".join(rows) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, data, ylabel in ((axes[0], curves, "reward, sigmoid(r)"),
                             (axes[1], shapes, "reward, min-max scaled per prompt")):
        for t in types:
            if t in data:
                ax.plot(xs, data[t], marker="o", label=t)
        ax.set_xlabel("answer position, best (0) to worst (1)")
        ax.set_ylabel(ylabel)
        ax.legend()
    fig.suptitle(textwrap.fill(title, 100), fontsize=8)
    fig.tight_layout()
    png = out_dir / "collapse.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return csv, png


# ---------------------------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------------------------
def utilities_of(cfg: Config) -> tuple[tuple[str, ...], dict[str, int]]:
    """The distinct utilities in use, and prompt_type -> index into them."""
    names = tuple(dict.fromkeys(cfg.reward.utility[t] for t in PROMPT_TYPES))
    return names, {t: names.index(cfg.reward.utility[t]) for t in PROMPT_TYPES}


def encode_comparisons(recs: list[dict], tokenizer, cfg: Config, type_to_id: dict[str, int]) -> tuple[list[dict], int]:
    items, truncated = [], 0
    for rec in recs:
        ids = []
        for resp in rec["responses"]:
            x, cut = encode_pair(tokenizer, rec["prompt"], resp, cfg.common.system_prompt, cfg.reward.max_length)
            ids.append(x)
            truncated += cut
        ptype = rec.get("prompt_type") or "unknown"
        items.append({"ids": ids, "ranks": rec["ranks"], "utility_id": type_to_id[ptype], "prompt_type": ptype})
    return items, truncated


def load_reward_backbone(path: Path):
    """SFT causal-LM folder -> sequence classifier with a fresh scalar head (num_labels = 1)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from components.base_model import ModelError, load_model_dir

    load_model_dir(path)  # the same checks as every stage (safetensors, tokenizer fits)
    tokenizer = AutoTokenizer.from_pretrained(path)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, use_safetensors=True)
    except Exception as e:
        raise ModelError(f"{path}: cannot build a reward model from it: {type(e).__name__}: {e}") from e
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def freeze_bottom(model, n_layers: int) -> None:
    """Freeze the embeddings and the first n transformer layers: no backward through them (faster)."""
    if n_layers <= 0:
        return
    base = model.base_model
    base.embed_tokens.requires_grad_(False)
    for layer in base.layers[:n_layers]:
        layer.requires_grad_(False)


@torch.no_grad()
def evaluate(model, items: list[dict], pad_id: int, utilities, rc, autocast) -> dict:
    """Held-out pairwise accuracy (ties excluded), loss, reward stats and per-prompt rewards."""
    from components.reward_losses import kwise_loss, pairwise_accuracy

    model.eval()
    correct = total = 0
    losses, all_r, per_prompt = [], [], []
    bs = rc.prompts_per_batch
    for i in range(0, len(items), bs):
        chunk = items[i: i + bs]
        b = collate(chunk).to(next(model.parameters()).device)
        with autocast():
            r = batch_rewards(model, b, pad_id, rc.micro_batch_tokens)
        loss, _ = kwise_loss(r, b.ranks, b.mask, b.utility_ids, utilities, eps=rc.utility_eps)
        c, t = pairwise_accuracy(r, b.ranks, b.mask)
        correct, total = correct + c, total + t
        losses.append(float(loss) * len(chunk))
        for k, it in enumerate(chunk):
            rr = r[k][b.mask[k]].tolist()
            all_r.extend(rr)
            per_prompt.append((it["prompt_type"], [1 / (1 + math.exp(-x)) for x in rr]))
    model.train()
    t = torch.tensor(all_r) if all_r else torch.zeros(1)
    return {"accuracy": correct / total if total else float("nan"), "pairs": total,
            "loss": sum(losses) / max(1, len(items)), "reward_mean": float(t.mean()), "reward_std": float(t.std()),
            "per_prompt": per_prompt}


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temp file, then rename: a kill mid-write keeps the previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def autocast_for(use_bf16: bool):
    """A zero-argument context factory: bf16 autocast on the model's device type, or a no-op."""
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    return lambda: torch.autocast(device_type, dtype=torch.bfloat16, enabled=use_bf16)


def batch_share(loss: torch.Tensor, diag: dict, b: Batch) -> tuple[torch.Tensor, float, dict, int]:
    """Data-parallel step: this rank's share of the whole batch's loss, so that the ranks' gradients SUM
    (all-reduced) to the gradient one process gets on the whole batch. ``kwise_loss`` is a mean over the
    prompts with a ranked pair, so a rank with n of the batch's N such prompts scales its loss by n / N.
    Returns (share, the batch loss, the batch's diag, the batch's answers)."""
    import torch.distributed as dist

    from components.reward_losses import pair_mask

    n_here = float(pair_mask(b.ranks, b.mask).flatten(1).any(1).sum())
    correct = diag["accuracy"] * diag["pairs"] if diag["pairs"] else 0.0
    stats = torch.tensor([n_here, correct, diag["pairs"], float(b.mask.sum())], dtype=torch.float64, device=loss.device)
    dist.all_reduce(stats)
    n_all, correct, pairs, answers = stats.tolist()
    share = loss * (n_here / max(n_all, 1.0))
    total = share.detach().clone()
    dist.all_reduce(total)
    diag = {"accuracy": correct / pairs if pairs else float("nan"), "pairs": int(pairs)}
    return share, total.item(), diag, int(answers)


def all_reduce_grads(model) -> None:
    """Sum every trainable gradient over the ranks (each rank's loss is already its share)."""
    import torch.distributed as dist

    for p in model.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)


def train(model, train_items: list[dict], rc, pad_id: int, utilities: tuple[str, ...], seed: int, *,
          autocast, ckpt: Path | None = None, ckpt_key: dict | None = None, log=None) -> dict:
    """The K-wise training loop: each step takes ``prompts_per_batch`` whole prompts, runs one forward
    pass per answer, and minimises ``kwise_loss`` over every ranked pair of each prompt.

    ``ckpt``: a state file written every ``save_steps`` (model, optimiser, scheduler, RNGs, data order)
    and resumed from when its ``ckpt_key`` (params hash, data version) still matches. ``log(metrics,
    step)`` receives the metrics every ``logging_steps``. Returns seconds, steps, answers seen and the mean loss.

    Data-parallel when a process group is up (``accelerate launch``): every rank draws the same batch and
    trains on its whole prompts ``idx[rank::world]``; gradients are all-reduced, so N ranks take the steps
    one process would (rank 0 writes the checkpoints; ``log`` only on rank 0).
    """
    import torch.distributed as dist
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    from components import faults
    from components.reward_losses import kwise_loss

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if rc.prompts_per_batch < world:
        raise ConfigError(f"reward.prompts_per_batch={rc.prompts_per_batch} is less than the {world} processes: "
                          "each needs a whole prompt")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    total = rc.total_steps(len(train_items), rc.prompts_per_batch)
    head = [p for n, p in model.named_parameters() if n.startswith("score")]
    body = [p for n, p in model.named_parameters() if not n.startswith("score") and p.requires_grad]
    opt = torch.optim.AdamW([{"params": body, "lr": rc.lr}, {"params": head, "lr": rc.head_lr}],
                            weight_decay=rc.weight_decay)
    sched = get_linear_schedule_with_warmup(opt, math.ceil(rc.warmup_ratio * total), total)
    order: list[int] = []
    start, loss_sum, loss_from = 1, 0.0, 1  # loss_sum: the summed batch losses of steps loss_from..step
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        if all(state.get(k) == v for k, v in (ckpt_key or {}).items()):
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            rng.setstate(state["rng"])
            torch.set_rng_state(state["torch_rng"])
            order, start = state["order"], state["step"] + 1
            loss_sum, loss_from = (state["loss_sum"], 1) if "loss_sum" in state else (0.0, start)
            print(f"[reward] resuming from {ckpt} at step {start}", flush=True)
        else:
            print(f"[reward] ignoring {ckpt}: params or data changed since it was written", flush=True)
    if world > 1:  # every rank starts from rank 0's weights, as DDP does
        for p in model.parameters():
            dist.broadcast(p.data, src=0)
    model.train()
    t0, seen_answers = time.time(), 0
    for step in tqdm(range(start, total + 1), desc="reward", unit="step", mininterval=2):
        # batch: the next prompts_per_batch whole prompts of a seeded shuffle, reshuffled each epoch
        idx, order = next_indices(order, len(train_items), rc.prompts_per_batch, rng)
        idx = idx[rank::world]  # this rank's whole prompts (all of them in one process)
        b = collate([train_items[i] for i in idx]).to(model.device)
        with autocast():
            r = batch_rewards(model, b, pad_id, rc.micro_batch_tokens)  # (B, K): one forward pass per answer
        loss, diag = kwise_loss(r, b.ranks, b.mask, b.utility_ids, utilities, eps=rc.utility_eps)
        batch_loss, answers = loss.item(), int(b.mask.sum())
        if world > 1:
            loss, batch_loss, diag, answers = batch_share(loss, diag, b)
        if not math.isfinite(batch_loss):
            raise FloatingPointError(f"[reward] non-finite loss {batch_loss} at step {step}")
        loss.backward()
        if world > 1:
            all_reduce_grads(model)
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), rc.max_grad_norm)
        if not torch.isfinite(gnorm):
            raise FloatingPointError(f"[reward] non-finite gradient norm at step {step}")
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        seen_answers += answers
        loss_sum += batch_loss
        if log is not None and (step % rc.logging_steps == 0 or step == total):
            log({"loss": batch_loss, "train_accuracy": float(diag["accuracy"]), "grad_norm": float(gnorm),
                 "lr": sched.get_last_lr()[0], "answers_per_second": seen_answers / (time.time() - t0)}, step)
        if ckpt is not None and rank == 0 and step % rc.save_steps == 0 and step < total:
            save_checkpoint(ckpt, {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                                   "rng": rng.getstate(), "torch_rng": torch.get_rng_state(), "order": order,
                                   "step": step, "loss_sum": loss_sum, **(ckpt_key or {})})
            faults.checkpoint_written(step)
    return {"seconds": time.time() - t0, "steps": total, "answers": seen_answers,
            "loss": loss_sum / max(1, total - loss_from + 1)}


def run(cfg: Config) -> dict:
    """Train the reward model on comparisons; write ``outputs/reward``; register ``reward-model``."""
    from components import distributed
    from components.base_model import bf16_supported, save_model_dir
    from components.tracking import data_version, log_metrics, register_model, set_offline_env

    set_offline_env()
    rc = cfg.reward
    comps = read_jsonl(cfg.data_dir / FILES["comparisons"])
    train_recs, eval_recs = split_records(comps, cfg.common.eval_fraction, cfg.common.seed)
    train_recs = take(train_recs, rc.max_samples)
    if not train_recs:
        raise DataError(f"{cfg.data_dir / FILES['comparisons']}: no training comparisons after the user split (is the file empty?)")
    torch.manual_seed(cfg.common.seed)  # the fresh scalar head is drawn from the global RNG
    model, tokenizer = load_reward_backbone(cfg.out_dir("sft"))
    freeze_bottom(model, rc.freeze_layers)
    utilities, type_to_id = utilities_of(cfg)
    train_items, cut_train = encode_comparisons(train_recs, tokenizer, cfg, type_to_id)
    eval_items, cut_eval = encode_comparisons(eval_recs, tokenizer, cfg, type_to_id)
    if cut_train + cut_eval:
        print(f"[reward] warning: {cut_train + cut_eval} answers longer than reward.max_length={rc.max_length} "
              "tokens were left-truncated", flush=True)

    use_bf16 = cfg.common.bf16 and bf16_supported()
    autocast = autocast_for(use_bf16)
    model.to(distributed.state().device)  # joins the process group under `accelerate launch`
    n_answers = sum(len(it["ids"]) for it in train_items)
    print(f"[reward] {len(train_items)} train / {len(eval_items)} eval prompts ({n_answers} answers), "
          f"{rc.total_steps(len(train_items), rc.prompts_per_batch)} steps, utilities {dict(rc.utility)}, bf16={use_bf16}", flush=True)
    ckpt = cfg.out_dir("checkpoints") / STAGE / "state.pt"
    stats = train(model, train_items, rc, tokenizer.pad_token_id, utilities, cfg.common.seed, autocast=autocast,
                  ckpt=ckpt, ckpt_key={"params_hash": cfg.section_hash(STAGE), "data_version": data_version()},
                  log=(lambda m, step: log_metrics(STAGE, m, step=step)) if distributed.is_main() else None)
    seconds, seen_answers, total = stats["seconds"], stats["answers"], stats["steps"]
    if not distributed.is_main():  # another rank of `accelerate launch`: rank 0 scores, saves and registers
        return {}

    # InstructGPT: shift so that the demonstrations score mean 0 (in the space PPO will use).
    demos = read_jsonl(cfg.data_dir / FILES["demonstrations"])[:256]
    model.eval()
    with autocast():
        demo_raw = score_raw(model, tokenizer, [d["prompt"] for d in demos], [d["response"] for d in demos],
                             cfg.common.system_prompt, rc.max_length, rc.eval_batch_size)
    bias = float((torch.sigmoid(demo_raw) if rc.bounded else demo_raw).mean())
    model.config.rlhf_reward = {"bounded": rc.bounded, "bias": bias, "utility": dict(rc.utility)}

    ev = evaluate(model, eval_items or train_items[:64], tokenizer.pad_token_id, utilities, rc, autocast)
    per_prompt = ev.pop("per_prompt")
    curves, shapes = collapse_curves(per_prompt), collapse_curves(per_prompt, shape=True)
    distance = curve_distance(shapes)  # open vs closed, shape only
    plots = cfg.plots_dir(STAGE)
    csv, png = write_collapse_plot(curves, shapes, plots, f"reward collapse: {dict(rc.utility)}")
    out = cfg.out_dir(STAGE)
    save_model_dir(model, tokenizer, out)
    import mlflow

    mlflow.log_artifact(str(png), artifact_path="plots")
    mlflow.log_artifact(str(csv), artifact_path="plots")
    version = register_model(out, "reward-model", cfg, STAGE, task="text-classification", description=(
        f"K-wise reward model from sft; held-out pairwise accuracy {ev['accuracy']:.3f}; utilities {dict(rc.utility)}"))
    ckpt.unlink(missing_ok=True)  # finished: the checkpoint only matters for resuming
    metrics = {"val_accuracy": ev["accuracy"], "val_pairs": ev["pairs"], "val_loss": ev["loss"],
               "reward_mean": ev["reward_mean"], "reward_std": ev["reward_std"], "demo_bias": bias,
               "collapse_distance": distance, "collapse_distance_sigmoid": curve_distance(curves),
               **{f"two_point_share_{t}": v for t, v in two_point_share(per_prompt).items()},
               "train_loss": stats["loss"], "train_seconds": round(seconds, 1), "steps": total,
               "answers_per_second": seen_answers / seconds, "n_train": len(train_items), "n_eval": len(eval_items),
               "model_version": int(version.version)}
    print(f"[reward] held-out pairwise accuracy {ev['accuracy']:.3f} on {ev['pairs']} pairs; collapse distance "
          f"{distance:.3f}; plot {png}; registered reward-model v{version.version}", flush=True)
    return metrics


if __name__ == "__main__":
    from components.tracking import stage_main

    sys.exit(stage_main(STAGE, run))
