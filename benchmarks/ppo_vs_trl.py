"""Our PPO (components/stages/ppo.py) vs trl 1.12.0's experimental PPOTrainer, side by side: samples/s and peak RSS.

trl 1.16 (the project's) has no PPOTrainer; the experimental one was last shipped in trl 1.12.0. The
benchmark installs that version into a side folder (``pip install --no-deps --target``, default
benchmarks/.peer/trl-1.12.0, git-ignored) when it is missing, and runs each side in its own process:
the peer with PYTHONPATH=<side folder> first, so its trl shadows the venv's trl 1.16 only there.

    .venv/bin/python benchmarks/ppo_vs_trl.py --sft outputs/sft --reward outputs/reward      # SmolLM2, real run
    .venv/bin/python benchmarks/ppo_vs_trl.py --lora-rank 16 --value-freeze-layers 15       # the ppo stage's defaults
    .venv/bin/python benchmarks/ppo_vs_trl.py --tiny --updates 3 --out /tmp/ppo_vs_trl.json   # smoke test, ~1 min

Both sides get the same: policy and frozen reference loaded from the SFT folder, value model initialised
from the reward-model folder, a frozen reward model loaded from the same folder (all with
``components.core.models.load_model_dir``); the same RL prompts (training split of data/prompts.jsonl,
the first batch_size x updates; token ids built by ``components.core.encode.encode_prompts``, i.e. the chat
template as the ppo stage applies it, and checked equal by hash); batch (prompts per rollout, one
response each), minibatch (one optimiser step per minibatch), PPO epochs, max new tokens, temperature
(top-k/top-p off), number of updates, learning rate (policy and value alike: TRL has one optimiser for
both), KL coefficient and estimator, clip ranges, vf_coef, gamma, lambda, missing-EOS penalty, seed,
torch threads, malloc settings and precision (fp32 unless --bf16 and bf16 pays off on this machine:
components.core.models.bf16_supported). TRL: gradient checkpointing off, constant LR, no sample
generations, no saving, no reporting. ``--lora-rank R`` (default 0: full fine-tuning) makes the policy a
LoRA adapter on both sides with the ppo stage's alpha and target modules (ours: ``peft.get_peft_model``
as the stage does; TRL: ``peft_config``), the reference then being the policy with its adapter disabled
on both sides (no reference copy is loaded); ``--value-freeze-layers N`` freezes the value model's
embeddings and first N layers on both sides (``components.core.models.freeze_bottom``, the same model
object handed to TRL).

Measured: samples/s = responses (one per prompt) per second of the training loop (rollout +
scoring + optimisation, every update), model loading and trainer construction excluded and reported
apart as setup seconds; also with the first update (warm-up) excluded. Wall time per update is
stamped by each side's own per-update hook (ours: ``log``; TRL: ``TrainerCallback.on_step_end``).
Peak RSS is measured by this driver: ``os.wait4`` on each side's process returns its ru_maxrss (the
process's high-water mark, loading included, plus any child it waited for); each side also reports its
own ru_maxrss at the start of the loop (peak during setup).

Prints a table and writes JSON to benchmarks/results/ppo_vs_trl.json (suffixed _lora<R>, _vfreeze<N>, _tiny
as asked).
Target (issue): ours >= 1.5 x the peer's samples/s at <= the peer's peak RSS.

Shims for trl 1.12.0 in this stack (transformers 5.23, accelerate 1.15), found by running it on the tiny
model: one. PPOTrainer builds its own ``Accelerator()``, which reads the precision from
$ACCELERATE_MIXED_PRECISION; transformers 4.x's TrainingArguments exported that variable from ``bf16``,
5.x no longer does, so ``bf16=True`` was silently fp32 (accelerator.mixed_precision "no"). The peer's
worker sets the variable itself (bf16 or no) before building the trainer. Nothing else was needed: the
peer is called as documented, PPOTrainer(args, processing_class, model, ref_model, reward_model,
train_dataset, value_model), tokenizer left-padded, stop_token="eos".

What cannot be made equal (by construction of each implementation; see also "differences" in the JSON):
- sampling draws different tokens (different RNG use), so response lengths differ: both are reported;
- ours scores the decoded text re-encoded with the chat template (``RewardScorer``, the way the ppo
  stage does); TRL scores the sampled ids directly;
- both take the old log-probs from the generation (ours: its raw logits over the temperature; TRL: its
  processed scores), so neither runs a separate policy forward for them;
- ours clips gradients (max_grad_norm, per model); TRL's PPO loop does not clip;
- TRL's optimiser is transformers' default (reported as "optimizer"); ours is torch AdamW;
- with --bf16, ours autocasts every forward; TRL autocasts only the training forward (accelerate wraps
  the prepared model), generation, reference and reward passes stay fp32.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

T_START = time.time()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PEER = "trl==1.12.0"
PEER_DIR = ROOT / "benchmarks" / ".peer" / "trl-1.12.0"
TARGET_SPEEDUP = 1.5
SIDES = ("ours", "trl")


# ------------------------------------------------------------------------------------ workers
def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _load_models(s: dict):
    """Policy, frozen reference (None with LoRA: the adapter-disabled policy is the reference), value (from
    the reward model, bottom layers frozen as asked) and tokenizer: the same calls on both sides."""
    from components.core.models import freeze_bottom, load_model_dir

    policy, tok = load_model_dir(s["sft"])
    ref = None
    if not s["lora_rank"]:
        ref, _ = load_model_dir(s["sft"])
        ref.requires_grad_(False).eval()
    value, _ = load_model_dir(s["reward"], kind="sequence-classification")
    freeze_bottom(value, s["value_freeze_layers"])
    return policy, ref, value, tok


def _lora_config(s: dict):
    from peft import LoraConfig

    return LoraConfig(r=s["lora_rank"], lora_alpha=s["lora_alpha"], lora_dropout=0.0,
                      target_modules=list(s["lora_targets"]), bias="none")


def _count_generations(policy, tok, gens: list) -> None:
    """Wrap policy.generate to record each rollout's generated width, mean response tokens (up to EOS) and EOS rate."""
    import torch

    inner = policy.generate

    def generate(*a, **kw):
        out = inner(*a, **kw)
        seq = out if torch.is_tensor(out) else out.sequences
        resp = seq[:, kw["input_ids"].shape[1]:]
        eos = resp == tok.eos_token_id
        first = torch.where(eos.any(1), eos.float().argmax(1) + 1, resp.shape[1])  # tokens up to and incl. EOS
        gens.append((resp.shape[1], first.float().mean().item(), eos.any(1).float().mean().item()))
        return out

    policy.generate = generate


def _prompt_hash(ids: list[list[int]]) -> str:
    return hashlib.sha1(json.dumps(ids).encode()).hexdigest()[:12]


def worker_ours(s: dict) -> dict:
    import torch

    from components.stages import ppo
    from components.core.config import PPOConfig
    from components.core.scoring import RewardScorer
    from components.core.encode import encode_prompts
    from components.core.models import autocast_for

    torch.manual_seed(s["seed"])
    policy, ref, value, tok = _load_models(s)
    if s["lora_rank"]:
        from peft import get_peft_model

        policy = get_peft_model(policy, _lora_config(s))  # as ppo.load_models does
    scorer = RewardScorer(s["reward"], s["system_prompt"])  # fed and scaled as its own config says, as in the stage
    scorer.model.requires_grad_(False)
    if torch.cuda.is_available():
        for model in (policy, ref, value, scorer.model):
            if model is not None:
                model.cuda()
    m = ppo.Models(policy, ref, value, scorer, tok)
    pc = PPOConfig(updates=s["updates"], batch_size=s["batch_size"], minibatch_size=s["minibatch_size"],
                   ppo_epochs=s["ppo_epochs"], lr=s["lr"], value_lr=s["lr"], max_prompt_length=s["max_prompt_length"],
                   max_new_tokens=s["max_new_tokens"], temperature=s["temperature"], top_k=0, top_p=1.0,
                   missing_eos_penalty=s["missing_eos_penalty"], kl_coef=s["kl_coef"], kl_estimator=s["kl_estimator"],
                   target_kl=None, gamma=s["gamma"], gae_lambda=s["gae_lambda"], whiten_advantages=True,
                   clip_coef=s["clip_coef"], clip_range_value=s["clip_range_value"], vf_coef=s["vf_coef"], ent_coef=0.0,
                   max_grad_norm=s["max_grad_norm"])
    ids, _ = encode_prompts(tok, s["prompts"], s["system_prompt"], s["max_prompt_length"])  # what train() builds
    gens, stamps = [], []
    _count_generations(policy, tok, gens)
    setup = time.time() - T_START
    rss_setup = _rss_mb()
    t0 = time.time()
    ppo.train(m, s["prompts"], [], pc, seed=s["seed"], system_prompt=s["system_prompt"],
              autocast=autocast_for(s["bf16"]), log=lambda metrics, step: stamps.append(time.time()))
    return _figures(setup, t0, time.time(), stamps, gens, rss_setup, _prompt_hash(ids), "torch.optim.AdamW (x2)", s)


def worker_trl(s: dict) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback, set_seed

    from components.core.models import load_model_dir
    from components.core.encode import encode_prompts

    if trl.__version__ != "1.12.0":
        raise RuntimeError(f"peer: expected trl 1.12.0 first on PYTHONPATH, got {trl.__version__} from {trl.__file__}")
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    set_seed(s["seed"])
    policy, ref, value, tok = _load_models(s)
    reward_model, _ = load_model_dir(s["reward"], kind="sequence-classification")
    reward_model.requires_grad_(False).eval()
    tok.padding_side = "left"  # TRL's PPO expects left-padded queries
    ids, _ = encode_prompts(tok, s["prompts"], s["system_prompt"], s["max_prompt_length"])
    b, mb = s["batch_size"], s["minibatch_size"]
    # per_device_train_batch_size = the whole rollout, num_mini_batches = b / mb, no accumulation:
    # one optimiser step per minibatch of mb responses, as ours
    cfg = PPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=b, gradient_accumulation_steps=1,
                    num_mini_batches=b // mb, num_ppo_epochs=s["ppo_epochs"], total_episodes=b * s["updates"],
                    local_rollout_forward_batch_size=b, response_length=s["max_new_tokens"],
                    temperature=s["temperature"], stop_token="eos", missing_eos_penalty=s["missing_eos_penalty"],
                    kl_coef=s["kl_coef"], kl_estimator=s["kl_estimator"], cliprange=s["clip_coef"],
                    cliprange_value=s["clip_range_value"], vf_coef=s["vf_coef"], gamma=s["gamma"], lam=s["gae_lambda"],
                    whiten_rewards=False, learning_rate=s["lr"], lr_scheduler_type="constant", warmup_steps=0,
                    weight_decay=0.0, max_grad_norm=s["max_grad_norm"], gradient_checkpointing=False,
                    bf16=s["bf16"], use_cpu=not torch.cuda.is_available(), report_to="none", save_strategy="no",
                    logging_steps=1, disable_tqdm=True, num_sample_generations=0, seed=s["seed"],
                    dataloader_num_workers=0)
    # shim: transformers 5 no longer exports the precision for the Accelerator() PPOTrainer builds itself
    os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16" if s["bf16"] else "no"
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.time())

    trainer = PPOTrainer(args=cfg, processing_class=tok, model=policy, ref_model=ref, reward_model=reward_model,
                         train_dataset=Dataset.from_dict({"input_ids": ids}), value_model=value, callbacks=[Stamp()],
                         peft_config=_lora_config(s) if s["lora_rank"] else None)
    if trainer.accelerator.mixed_precision != ("bf16" if s["bf16"] else "no"):
        raise RuntimeError(f"peer: accelerator precision {trainer.accelerator.mixed_precision!r}, bf16={s['bf16']} asked")
    gens: list = []
    _count_generations(policy, tok, gens)
    setup = time.time() - T_START
    rss_setup = _rss_mb()
    t0 = time.time()
    trainer.train()
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    return _figures(setup, t0, time.time(), stamps, gens, rss_setup, _prompt_hash(ids),
                    f"{type(opt).__module__}.{type(opt).__name__} (args.optim={cfg.optim})", s)


def _figures(setup, t0, t1, stamps, gens, rss_setup, prompt_hash, optimizer, s) -> dict:
    import torch

    b, n = s["batch_size"], len(stamps)
    if n != s["updates"]:
        raise RuntimeError(f"expected {s['updates']} updates, the per-update hook fired {n} times")
    per_update = [round(t - u, 3) for t, u in zip(stamps, [t0] + stamps[:-1])]
    loop = t1 - t0
    rest = loop - per_update[0]
    return {"setup_s": round(setup, 2), "loop_s": round(loop, 2), "updates": n, "samples": b * n,
            "samples_per_s": round(b * n / loop, 4),
            "samples_per_s_excl_first": round(b * (n - 1) / rest, 4) if n > 1 else None,
            "update_s": per_update, "first_update_s": per_update[0],
            "mean_update_s_excl_first": round(rest / (n - 1), 3) if n > 1 else None,
            "rss_at_loop_start_mb": rss_setup, "rss_self_end_mb": _rss_mb(),
            "generated_width_mean": round(sum(g[0] for g in gens) / max(1, len(gens)), 2),
            "response_tokens_mean": round(sum(g[1] for g in gens) / max(1, len(gens)), 2),
            "eos_rate": round(sum(g[2] for g in gens) / max(1, len(gens)), 3), "rollouts": len(gens),
            "prompt_ids_sha1": prompt_hash, "optimizer": optimizer, "torch_threads": torch.get_num_threads()}


def worker(side: str, settings: Path, result: Path) -> None:
    import torch

    from components.core.env import set_offline_env

    set_offline_env()
    s = json.loads(settings.read_text())
    torch.set_num_threads(s["threads"])
    out = worker_ours(s) if side == "ours" else worker_trl(s)
    result.write_text(json.dumps(out))


# ------------------------------------------------------------------------------------ driver
def ensure_peer(peer_dir: Path) -> str:
    """trl 1.12.0 in peer_dir, installed there (no dependencies: the venv's serve) when missing."""
    if not list(peer_dir.glob("trl-1.12.0.dist-info")):
        print(f"installing {PEER} into {peer_dir} ...", flush=True)
        p = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(peer_dir), "--timeout", "20",
                            "--retries", "1", PEER],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"error: cannot install the peer ({PEER}) into {peer_dir}:\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return str(peer_dir)


def tiny_models(d: Path, seed: int) -> tuple[str, str]:
    """A tiny random SmolLM2-family causal LM (the real tokenizer) and a reward model built from it."""
    from components.stages.base_model import SMOLLM2, build_model, load_tokenizer
    from components.core.models import save_model_dir
    from components.core.config import BaseModelConfig
    from components.stages.reward import load_reward_backbone

    tok = load_tokenizer(SMOLLM2)
    save_model_dir(build_model(BaseModelConfig(tiny=True), tok, seed), tok, d / "sft")
    rm, tok = load_reward_backbone(d / "sft")  # fresh scalar head, seeded by build_model's manual_seed
    save_model_dir(rm, tok, d / "reward")
    return str(d / "sft"), str(d / "reward")


def run_side(side: str, settings: Path, work: Path, logs: Path, peer_dir: str | None, malloc: bool) -> dict:
    """Run one side in its own process; its peak RSS comes from os.wait4 on that process."""
    from components.core.env import MALLOC_ENV

    result, log = work / f"{side}.json", logs / f"{side}.log"
    path = os.pathsep.join([peer_dir, str(ROOT)] if side == "trl" else [str(ROOT)])
    env = {**os.environ, "PYTHONPATH": path, "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false",
           "RLHF_NO_MALLOC_TUNING": "1", **(MALLOC_ENV if malloc else {})}
    if not malloc:
        env = {k: v for k, v in env.items() if k not in MALLOC_ENV}
    cmd = [sys.executable, __file__, "--worker", side, "--settings", str(settings), "--result", str(result)]
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0 or not result.exists():
        raise RuntimeError(f"{side} worker failed (exit {p.returncode}); last lines of its output:\n"
                           f"{log.read_text()[-4000:]}")
    return {**json.loads(result.read_text()), "peak_rss_mb": round(ru.ru_maxrss / 1024, 1)}


def _versions(peer_dir: str) -> dict:
    import accelerate
    import torch
    import transformers

    from components.core.tracking import git_commit

    return {"torch": torch.__version__, "transformers": transformers.__version__, "accelerate": accelerate.__version__,
            "peer": PEER, "peer_dir": peer_dir, "python": platform.python_version(), "commit": git_commit()}


DIFFERENCES = [
    "sampling draws different tokens on each side (different RNG use): response lengths differ, see "
    "response_tokens_mean / generated_width_mean",
    "ours scores the decoded text re-encoded with the chat template (RewardScorer, as the ppo stage); TRL scores "
    "the sampled ids",
    "ours clips gradients (max_grad_norm, policy and value apart); TRL's PPO loop does not clip",
    "optimiser: ours torch AdamW per model; TRL one optimiser from transformers' defaults over policy + value",
    "bf16 (when on): ours autocasts every forward; TRL only the training forward (generation, ref, reward in fp32)",
    "prompt order: ours a seeded shuffle of the pool, TRL its DataLoader shuffle; same pool, each prompt once "
    "per pass",
]


def main() -> None:
    from components.core.config import load_config

    cfg = load_config()
    pc = cfg.ppo
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sft", default=str(ROOT / "outputs" / "sft"), help="policy / reference model folder")
    ap.add_argument("--reward", default=str(ROOT / "outputs" / "reward"), help="reward model folder (value model init)")
    ap.add_argument("--data", default=str(ROOT / cfg.common.data_dir / "prompts.jsonl"), help="RL prompts (JSONL)")
    ap.add_argument("--tiny", action="store_true", help="tiny random models built here instead of --sft/--reward")
    ap.add_argument("--updates", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=pc.batch_size, help="prompts per rollout (one response each)")
    ap.add_argument("--minibatch-size", type=int, default=pc.minibatch_size, help="responses per optimiser step")
    ap.add_argument("--ppo-epochs", type=int, default=pc.ppo_epochs)
    ap.add_argument("--max-new-tokens", type=int, default=pc.max_new_tokens, help="response length")
    ap.add_argument("--temperature", type=float, default=pc.temperature)
    ap.add_argument("--lr", type=float, default=pc.lr, help="policy and value learning rate (both sides)")
    ap.add_argument("--seed", type=int, default=cfg.common.seed)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides if it pays off here")
    ap.add_argument("--lora-rank", type=int, default=0,
                    help=f"LoRA policy of this rank on both sides (0: full fine-tuning; the ppo stage uses {pc.lora_rank})")
    ap.add_argument("--value-freeze-layers", type=int, default=0,
                    help=f"freeze the value model's first N layers on both sides (the ppo stage freezes {pc.value_freeze_layers})")
    ap.add_argument("--no-malloc-tuning", action="store_true",
                    help="glibc malloc defaults on both sides (default: the project's MALLOC_ENV on both, as its stages run)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--peer-dir", default=str(PEER_DIR), help="side folder holding trl 1.12.0 (installed when missing)")
    ap.add_argument("--logs", default=None, help="folder to keep each side's output in (default: a temporary one)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/ppo_vs_trl[_lora<R>][_vfreeze<N>][_tiny].json)")
    ap.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--settings", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, Path(args.settings), Path(args.result))
        return
    from components.core.models import bf16_supported
    from components.core.data import read_jsonl, split_records
    from components.core.env import set_offline_env

    set_offline_env()
    if args.batch_size % args.minibatch_size:
        raise SystemExit(f"error: --batch-size {args.batch_size} must be a multiple of --minibatch-size "
                         f"{args.minibatch_size} (TRL splits a rollout into equal minibatches)")
    if pc.kl_estimator not in ("k1", "k3"):
        raise SystemExit(f"error: ppo.kl_estimator={pc.kl_estimator}: TRL's PPOTrainer supports k1 and k3 only")
    if not Path(args.data).exists():
        raise SystemExit(f"error: {args.data}: no RL prompts file (build the data first, or pass --data)")
    peer_dir = ensure_peer(Path(args.peer_dir))
    train_p, _ = split_records(read_jsonl(args.data), cfg.common.eval_fraction, args.seed)
    prompts = [r["prompt"] for r in train_p][: args.batch_size * args.updates]
    if len(prompts) < args.batch_size:
        raise SystemExit(f"error: {args.data}: {len(prompts)} training prompts, fewer than --batch-size {args.batch_size}")
    bf16 = args.bf16 and bf16_supported()
    if args.bf16 and not bf16:
        print("--bf16: bf16 does not pay off on this machine (components.core.models.bf16_supported); fp32 on both sides")
    variant = (f"_lora{args.lora_rank}" if args.lora_rank else "") + \
        (f"_vfreeze{args.value_freeze_layers}" if args.value_freeze_layers else "") + ("_tiny" if args.tiny else "")
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"ppo_vs_trl{variant}.json")
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        logs = Path(args.logs) if args.logs else work
        logs.mkdir(parents=True, exist_ok=True)
        sft, reward = tiny_models(work, args.seed) if args.tiny else (args.sft, args.reward)
        settings = {"sft": str(Path(sft).resolve()), "reward": str(Path(reward).resolve()), "tiny": args.tiny,
                    "prompts_file": str(args.data), "n_prompts": len(prompts), "updates": args.updates,
                    "batch_size": args.batch_size, "minibatch_size": args.minibatch_size, "ppo_epochs": args.ppo_epochs,
                    "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "lr": args.lr,
                    "seed": args.seed, "bf16": bf16, "threads": args.threads, "malloc_tuning": not args.no_malloc_tuning,
                    "lora_rank": args.lora_rank, "lora_alpha": pc.lora_alpha, "lora_targets": list(pc.lora_targets),
                    "value_freeze_layers": args.value_freeze_layers,
                    "max_prompt_length": pc.max_prompt_length, "missing_eos_penalty": pc.missing_eos_penalty,
                    "kl_coef": pc.kl_coef, "kl_estimator": pc.kl_estimator, "clip_coef": pc.clip_coef,
                    "clip_range_value": pc.clip_range_value, "vf_coef": pc.vf_coef, "gamma": pc.gamma,
                    "gae_lambda": pc.gae_lambda, "max_grad_norm": pc.max_grad_norm,
                    "system_prompt": cfg.common.system_prompt}
        (work / "settings.json").write_text(json.dumps({**settings, "prompts": prompts}))
        res = {}
        for side in SIDES:
            print(f"running {side} ...", flush=True)
            try:
                res[side] = run_side(side, work / "settings.json", work, logs, peer_dir, not args.no_malloc_tuning)
            except RuntimeError as e:
                raise SystemExit(f"error: {e}")
    o, t = res["ours"], res["trl"]
    if o["prompt_ids_sha1"] != t["prompt_ids_sha1"]:
        raise SystemExit(f"error: the two sides encoded different prompt ids ({o['prompt_ids_sha1']} vs {t['prompt_ids_sha1']})")

    def ratio(key):
        return round(o[key] / t[key], 3) if o.get(key) and t.get(key) else None

    ratios = {"samples_per_s": ratio("samples_per_s"), "samples_per_s_excl_first": ratio("samples_per_s_excl_first"),
              "peak_rss": ratio("peak_rss_mb")}
    rss_ok = o["peak_rss_mb"] <= t["peak_rss_mb"]
    targets = {"speedup_min": TARGET_SPEEDUP, "rss": "ours <= peer",
               "speed_met": ratios["samples_per_s"] >= TARGET_SPEEDUP, "rss_met": rss_ok,
               "met": ratios["samples_per_s"] >= TARGET_SPEEDUP and rss_ok,
               "met_excl_first": None if ratios["samples_per_s_excl_first"] is None
               else ratios["samples_per_s_excl_first"] >= TARGET_SPEEDUP and rss_ok}
    rows = [("setup s", "setup_s", ".1f"), ("loop s", "loop_s", ".1f"), ("samples", "samples", "d"),
            ("samples/s", "samples_per_s", ".3f"), ("samples/s excl. 1st", "samples_per_s_excl_first", ".3f"),
            ("first update s", "first_update_s", ".2f"), ("mean update s excl. 1st", "mean_update_s_excl_first", ".2f"),
            ("response tokens (mean)", "response_tokens_mean", ".1f"), ("generated width (mean)", "generated_width_mean", ".1f"),
            ("RSS at loop start MB", "rss_at_loop_start_mb", ".0f"), ("peak RSS MB", "peak_rss_mb", ".0f")]
    print(f"\n{'':26} {'ours':>10} {'trl 1.12.0':>11} {'ours/trl':>9}")
    for label, key, fmt in rows:
        a, b = o.get(key), t.get(key)
        cell = (lambda v: f"{v:{fmt}}" if v is not None else "-")
        r = f"{a / b:.2f}x" if a is not None and b else ""
        print(f"{label:26} {cell(a):>10} {cell(b):>11} {r:>9}")
    word = {True: "met", False: "NOT met", None: "n/a"}
    print(f"target: samples/s >= {TARGET_SPEEDUP}x at <= peer RSS: {word[targets['met']]} "
          f"(excluding the first update: {word[targets['met_excl_first']]})")
    report = {"date": date.today().isoformat(),
              "machine": f"{platform.machine()}, {platform.processor() or platform.platform()}",
              "cpu_count": os.cpu_count(), "versions": _versions(peer_dir), "settings": settings,
              "ours": o, "trl": t, "ratio_ours_over_trl": ratios, "targets": targets, "differences": DIFFERENCES}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
