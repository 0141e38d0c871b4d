"""Stage reward — the reward model (InstructGPT step 2), trained on K-wise rankings.

A labeler ranked K = 2..9 answers to one prompt. All C(K,2) comparisons of that prompt form
ONE batch element: the model runs one forward pass per answer (not per pair), and the loss
(``reward_losses.kwise_loss``) compares every pair with different ranks. With the
reward-collapse paper's prompt-aware utilities, rewards are squashed to (0, 1) and each prompt
type gets its own U (``reward.utility``), so closed prompts learn a two-point reward and open
ones a spread.

Backbone = the SFT model + a scalar head (``AutoModelForSequenceClassification``, num_labels=1).
After training, a bias makes the demonstrations score mean 0 (InstructGPT); it is stored in the
model's config (``rlhf_reward``) with the max length and micro-batch size the model is fed with,
and applied by ``core.scoring.RewardScorer``, which PPO and evaluation use.
"""

from __future__ import annotations

import math
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from components.core import checkpoints, distributed, faults
from components.core.config import Config
from components.core.data import FILES, next_indices, read_jsonl
from components.core.encode import encode_pair
from components.core.env import set_offline_env
from components.core.errors import ConfigError, DataError, ModelError
from components.core.models import autocast_for, bf16_supported, freeze_bottom, load_model_dir, save_model_dir
from components.core.plots import PROMPT_TYPES, write_collapse_plot
from components.core.registry import register_model
from components.core.scoring import raw_rewards, score_raw
from components.core.stage import stage_main
from components.core.tracking import data_version, file_md5, log_metrics, params_hash_of
from components.datasets import preferences, synth
from components.maths.collapse import collapse_curves, curve_distance, two_point_share
from components.maths.reward_losses import kwise_loss, pair_mask, pairwise_accuracy

STAGE = "reward"


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


def batch_rewards(model, batch: Batch, pad_id: int, max_tokens: int = 2048) -> torch.Tensor:
    """(B, K) raw rewards of a batch of whole prompts (padded slots are 0 and masked out)."""
    r = raw_rewards(model, batch.seqs, pad_id, max_tokens)
    return r[batch.slot] * batch.mask


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
        task = synth.parse_task(rec["prompt"])
        groups = (rec.get(preferences.SOURCE, "data"), *((task.family,) if task else ()))
        items.append({"ids": ids, "ranks": rec["ranks"], "utility_id": type_to_id[ptype], "prompt_type": ptype,
                      "groups": groups})
    return items, truncated


def load_reward_backbone(path: Path):
    """SFT causal-LM folder -> sequence classifier with a fresh scalar head (num_labels = 1)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    load_model_dir(path)  # the same checks as every stage (safetensors, tokenizer fits)
    tokenizer = AutoTokenizer.from_pretrained(path)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, use_safetensors=True)
    except Exception as e:
        raise ModelError(f"{path}: cannot build a reward model from it: {type(e).__name__}: {e}") from e
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


@torch.no_grad()
def evaluate(model, items: list[dict], pad_id: int, utilities, rc, autocast) -> dict:
    """Pairwise accuracy (ties excluded) over ``items``, overall and per group (each item's
    ``groups``: its source and task family), loss, reward stats and per-prompt rewards."""
    from tqdm.auto import tqdm

    model.eval()
    correct = total = 0
    by_group: dict[str, list[int]] = {}
    losses, all_r, per_prompt = [], [], []
    bs = rc.prompts_per_batch
    for i in tqdm(range(0, len(items), bs), desc="reward (held-out accuracy)", unit="batch", mininterval=2):
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
            ck, tk = pairwise_accuracy(r[k: k + 1], b.ranks[k: k + 1], b.mask[k: k + 1])
            for g in it.get("groups", ()):
                acc = by_group.setdefault(g, [0, 0])
                acc[0], acc[1] = acc[0] + ck, acc[1] + tk
    model.train()
    t = torch.tensor(all_r) if all_r else torch.zeros(1)
    return {"accuracy": correct / total if total else float("nan"), "pairs": total,
            "loss": sum(losses) / max(1, len(items)), "reward_mean": float(t.mean()), "reward_std": float(t.std()),
            "per_prompt": per_prompt,
            "groups": {g: (c / n if n else float("nan"), n) for g, (c, n) in sorted(by_group.items())}}


def batch_share(loss: torch.Tensor, diag: dict, b: Batch) -> tuple[torch.Tensor, float, dict, int]:
    """Data-parallel step: this rank's share of the whole batch's loss, so that the ranks' gradients SUM
    (all-reduced) to the gradient one process gets on the whole batch. ``kwise_loss`` is a mean over the
    prompts with a ranked pair, so a rank with n of the batch's N such prompts scales its loss by n / N.
    Returns (share, the batch loss, the batch's diag, the batch's answers)."""
    import torch.distributed as dist

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


def train(model, train_items: list[dict], rc, pad_id: int, utilities: tuple[str, ...], seed: int, *,
          autocast, ckpt_dir: Path | None = None, ckpt_key: dict | None = None, log=None) -> dict:
    """The K-wise training loop: each step takes ``prompts_per_batch`` whole prompts, runs one forward
    pass per answer, and minimises ``kwise_loss`` over every ranked pair of each prompt.

    ``ckpt_dir``: a checkpoint written every ``save_steps`` (model, optimiser, scheduler, RNGs, data order;
    ``core.checkpoints``) and resumed from when its ``ckpt_key`` (params hash, data version) still matches. ``log(metrics,
    step)`` receives the metrics every ``logging_steps``. Returns seconds, steps, answers seen and the mean loss.

    Data-parallel when a process group is up (``accelerate launch``): every rank draws the same batch and
    trains on its whole prompts ``idx[rank::world]``; gradients are all-reduced, so N ranks take the steps
    one process would (rank 0 writes the checkpoints; ``log`` only on rank 0).
    """
    import torch.distributed as dist
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

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
    start, loss_sum = 1, 0.0  # loss_sum: the summed batch losses of steps 1..step
    if (state := checkpoints.resume(ckpt_dir, ckpt_key or {}, STAGE)) is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        order, start, loss_sum = state["order"], state["step"] + 1, state["loss_sum"]
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
            distributed.all_reduce_grads(model)
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
        if ckpt_dir is not None and rank == 0 and step % rc.save_steps == 0 and step < total:
            checkpoints.save(ckpt_dir, step, {
                "model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "rng": rng.getstate(), "torch_rng": torch.get_rng_state(), "order": order, "step": step,
                "loss_sum": loss_sum, **(ckpt_key or {})})
            faults.checkpoint_written(step)
    return {"seconds": time.time() - t0, "steps": total, "answers": seen_answers, "loss": loss_sum / max(1, total)}


def _md5_or_none(path) -> str | None:
    return file_md5(path) if path.exists() else None


def run(cfg: Config) -> dict:
    """Train the reward model on comparisons; write ``outputs/reward``; register ``reward-model``."""
    set_offline_env()
    rc = cfg.reward
    sources = preferences.sources(cfg.data_dir / FILES["comparisons"], cfg.out_dir("rank") / FILES["comparisons"])
    train_recs, eval_recs = preferences.training_split(sources, cfg.common.eval_fraction, cfg.common.seed,
                                                       rc.corruption_share, rc.max_samples)
    if not train_recs:
        raise DataError(f"{cfg.data_dir / FILES['comparisons']}: no training comparisons after the user split (is the file empty?)")
    counts = {name: sum(r[preferences.SOURCE] == name for r in train_recs) for name in sources}
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
    print(f"[reward] {len(train_items)} train prompts ({', '.join(f'{k} {v}' for k, v in counts.items())}; "
          f"{n_answers} answers) / {len(eval_items)} held out, "
          f"{rc.total_steps(len(train_items), rc.prompts_per_batch)} steps, utilities {dict(rc.utility)}, bf16={use_bf16}", flush=True)
    ckpt_dir = cfg.out_dir("checkpoints") / STAGE
    stats = train(model, train_items, rc, tokenizer.pad_token_id, utilities, cfg.common.seed, autocast=autocast,
                  ckpt_dir=ckpt_dir, ckpt_key={"params_hash": params_hash_of(cfg, STAGE), "data_version": data_version(),
                                               "rankings": _md5_or_none(cfg.out_dir("rank") / FILES["comparisons"])},
                  log=(lambda m, step: log_metrics(STAGE, m, step=step)) if distributed.is_main() else None)
    seconds, seen_answers, total = stats["seconds"], stats["answers"], stats["steps"]
    if not distributed.is_main():  # another rank of `accelerate launch`: rank 0 scores, saves and registers
        return {}

    # InstructGPT: shift so that the demonstrations score mean 0 (in the space PPO will use).
    demos = read_jsonl(cfg.data_dir / FILES["demonstrations"])[:256]
    model.eval()
    with autocast():
        demo_raw = score_raw(model, tokenizer, [d["prompt"] for d in demos], [d["response"] for d in demos],
                             cfg.common.system_prompt, rc.max_length, rc.eval_batch_size * rc.max_length)
    bias = float((torch.sigmoid(demo_raw) if rc.bounded else demo_raw).mean())
    # how downstream stages must feed and scale this model (core.scoring.RewardScorer reads it)
    model.config.rlhf_reward = {"bounded": rc.bounded, "bias": bias, "utility": dict(rc.utility),
                                "max_length": rc.max_length, "micro_batch_tokens": rc.eval_batch_size * rc.max_length}

    # accuracy on held-out users' rankings; named train_subset_* (never val_*) when nothing is held out
    heldout = bool(eval_items)
    if not heldout:
        print("[reward] warning: no held-out comparisons (too few users for common.eval_fraction): the accuracy below "
              "is on 64 training prompts, reported as train_subset_accuracy", flush=True)
    ev = evaluate(model, eval_items if heldout else train_items[:64], tokenizer.pad_token_id, utilities, rc, autocast)
    per_prompt, groups = ev.pop("per_prompt"), ev.pop("groups")
    acc = "val" if heldout else "train_subset"
    curves, shapes = collapse_curves(per_prompt), collapse_curves(per_prompt, shape=True)
    distance = curve_distance(shapes)  # open vs closed, shape only
    plots = cfg.plots_dir(STAGE)
    csv, png = write_collapse_plot(curves, shapes, plots, f"reward collapse: {dict(rc.utility)}")
    out = cfg.out_dir(STAGE)
    save_model_dir(model, tokenizer, out)
    import mlflow

    mlflow.log_artifact(str(png), artifact_path="plots")
    mlflow.log_artifact(str(csv), artifact_path="plots")
    version = register_model(out, cfg, STAGE, description=(
        f"K-wise reward model from sft; {acc} pairwise accuracy {ev['accuracy']:.3f}; utilities {dict(rc.utility)}"))
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # finished: the checkpoint only matters for resuming
    metrics = {f"{acc}_accuracy": ev["accuracy"], f"{acc}_pairs": ev["pairs"], f"{acc}_loss": ev["loss"],
               **{f"{acc}_accuracy_{g}": a for g, (a, _) in groups.items()},
               **{f"{acc}_pairs_{g}": n for g, (_, n) in groups.items()},
               **{f"n_train_{k}": v for k, v in counts.items()},
               "reward_mean": ev["reward_mean"], "reward_std": ev["reward_std"], "demo_bias": bias,
               "collapse_distance": distance, "collapse_distance_sigmoid": curve_distance(curves),
               **{f"two_point_share_{t}": v for t, v in two_point_share(per_prompt).items()},
               "train_loss": stats["loss"], "train_seconds": round(seconds, 1), "steps": total,
               "answers_per_second": seen_answers / seconds, "n_train": len(train_items), "n_eval": len(eval_items),
               "model_version": int(version.version)}
    print(f"[reward] {'held-out' if heldout else 'training-subset'} pairwise accuracy {ev['accuracy']:.3f} on "
          f"{ev['pairs']} pairs (" + ", ".join(f"{g} {a:.3f}/{n}" for g, (a, n) in groups.items()) + f"); collapse "
          f"distance {distance:.3f}; plot {png}; registered reward-model v{version.version}", flush=True)
    return metrics


if __name__ == "__main__":
    sys.exit(stage_main(STAGE, run))
