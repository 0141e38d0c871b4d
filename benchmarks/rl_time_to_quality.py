"""Time to quality, side by side: each RL trainer's gold win rate vs SFT against its wall-clock training time.

Trainers (``--trainers``, each in its own process, one after another: run it on an otherwise idle machine):

    ours-ppo       components.stages.ppo.train with the ``ppo`` params section (LoRA policy, frozen value layers)
    ours-ppo-ptx   the same with the ``ppo_ptx`` section (the pretraining mix)
    trl-grpo-lora  TRL's GRPOTrainer as ``rl.algorithm: grpo`` runs it (components.core.trl_rl, its documented
                   mapping of the ppo section): the ppo section's LoRA adapter and lr, no value model
    trl-rloo-lora  TRL's RLOOTrainer likewise (``rl.algorithm: rloo``)
    trl-grpo, trl-rloo
                   the same with full fine-tuning (``ppo.lora_rank=0``) at ``--full-lr`` (default 1e-5, what
                   params.yaml gives full fine-tuning; the LoRA lr 3e-4 on every weight wrecks the policy)
    trl-ppo        trl 1.12.0's experimental PPOTrainer (side-installed, as benchmarks/ppo_vs_trl.py does) with
                   the ppo section's settings and the same LoRA policy and frozen value layers as ours

All start from the same SFT folder, score with the same reward model (``--outputs``/sft and /reward), train
on the same RL prompts (the training split of data/prompts.jsonl) with ``common.seed``, and get the same
``--budget`` seconds of training wall time. Every ``--every`` seconds (and at the end) the worker copies
the policy's trainable parameters to disk; the copy's time is taken off the clock. Then, in this process,
every snapshot answers the held-out prompts (the evaluation split, all of them unless ``--eval-prompts``;
greedy, ``ppo.max_new_tokens``) and the simulated labeler's gold reward (``synth.gold_reward``) compares
each answer with SFT's own greedy answer: win rate (ties half) with its standard error and a seeded
bootstrap 95% interval (``components.maths.stats``), and the mean gold reward. SFT against itself ties
everywhere: the curves start at 0.5 at time 0.

    .venv/bin/python benchmarks/rl_time_to_quality.py                                # 15 min per trainer
    .venv/bin/python benchmarks/rl_time_to_quality.py --budget 120 --every 60 --trainers ours-ppo,trl-grpo

Output: JSON (benchmarks/results/rl_time_to_quality.json) and a PNG of win rate against minutes, one curve
per trainer with its interval band, and each worker's peak RSS (``os.wait4``). Target (issue): ours
reaches the best peer's final win rate in <= 0.5x the time that peer took to reach it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

TRAINERS = ("ours-ppo", "ours-ppo-ptx", "trl-grpo", "trl-rloo", "trl-grpo-lora", "trl-rloo-lora", "trl-ppo")
OURS = ("ours-ppo", "ours-ppo-ptx")
FOREVER = 10 ** 6  # updates asked of a trainer: the clock stops it


class OutOfTime(Exception):
    """Raised from our loop's per-update hook when the budget is spent."""


class Clock:
    """Training wall time, with snapshot writing taken off it; snapshots at every ``every`` seconds and at the end."""

    def __init__(self, budget: float, every: float, out: Path, params):
        self.budget, self.every, self.out, self.params = budget, every, out, params
        self.t0, self.paused, self.next, self.snaps = time.time(), 0.0, every, []

    def elapsed(self) -> float:
        return time.time() - self.t0 - self.paused

    def tick(self, step: int) -> bool:
        """After an update: snapshot when a mark is passed; True when the budget is spent (last snapshot taken)."""
        import torch

        e = self.elapsed()
        done = e >= self.budget
        if e >= self.next or done:
            t = time.time()
            path = self.out / f"snapshot-{len(self.snaps):03d}.pt"
            torch.save(self.params(), path)
            self.snaps.append({"seconds": round(e, 1), "update": step, "path": str(path)})
            while self.next <= e:
                self.next += self.every
            self.paused += time.time() - t
        return done


def trainable(model) -> dict:
    """The parameters a trainer changes (a LoRA adapter's, or all of a fully fine-tuned model's), on the CPU."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def lora_of(pc) -> dict:
    return {"r": pc.lora_rank, "alpha": pc.lora_alpha, "targets": list(pc.lora_targets)}


def peft_config(lora: dict):
    from components.core.models import lora_config

    return lora_config(lora["r"], lora["alpha"], lora["targets"])


# ------------------------------------------------------------------------------------ workers
def worker_ours(s: dict, clock_of) -> dict:
    import torch

    from components.core.config import load_config
    from components.core.models import autocast_for, bf16_supported
    from components.datasets import synth
    from components.stages import ppo

    cfg = load_config(overrides=s["overrides"])
    stage = "ppo" if s["trainer"] == "ours-ppo" else "ppo_ptx"
    pc = cfg.section(stage).model_copy(update={"updates": FOREVER, "save_every": FOREVER})
    m = ppo.load_models(cfg, pc)
    if torch.cuda.is_available():
        for model in (m.policy, m.ref, m.value, m.scorer.model):
            if model is not None:
                model.cuda()
    train_t = ppo.pretrain_texts(cfg, pc)[0] if pc.ptx_coef > 0 else []
    clock = clock_of(lambda: trainable(m.policy))

    def log(metrics, step):
        if clock.tick(step):
            raise OutOfTime

    try:
        ppo.train(m, s["prompts"], train_t, pc, seed=cfg.common.seed, system_prompt=cfg.common.system_prompt,
                  autocast=autocast_for(cfg.common.bf16 and bf16_supported()), log=log, gold=synth.gold_reward,
                  stage=stage)
    except OutOfTime:
        pass
    return {"snapshots": clock.snaps, "lora": lora_of(pc) if pc.lora_rank else None, "stage": stage}


def worker_trl_group(s: dict, clock_of) -> dict:
    """GRPO / RLOO through components.core.trl_rl, as ``rl.algorithm`` runs them (no checkpoints here); the
    ``-lora`` variants train the ppo section's LoRA adapter instead of every weight."""
    import torch
    from transformers import TrainerCallback

    from components.core import trl_rl
    from components.core.config import load_config
    from components.core.models import load_model_dir
    from components.core.scoring import RewardScorer
    from components.datasets import synth

    algo = s["trainer"].split("-")[1]
    full = [] if s["trainer"].endswith("-lora") else ["ppo.lora_rank=0", f"ppo.lr={s['full_lr']}"]
    cfg = load_config(overrides=[*s["overrides"], f"rl.algorithm={algo}", *full])
    lora = lora_of(cfg.ppo) if cfg.ppo.lora_rank else None
    policy, tok = load_model_dir(cfg.out_dir("sft"))
    scorer = RewardScorer(cfg.out_dir("reward"), cfg.common.system_prompt)
    scorer.model.requires_grad_(False)
    if torch.cuda.is_available():
        scorer.model.cuda()
    box = {}

    class Budget(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if box["clock"].tick(state.global_step):
                control.should_training_stop = True

    trainer = trl_rl.build_trainer(cfg, policy, tok, s["prompts"], scorer, tempfile.mkdtemp(), synth.gold_reward,
                                   callbacks=[Budget()], max_steps=FOREVER, save_strategy="no")
    wrapped = trainer.model  # the peft-wrapped policy when LoRA: its names are what policy_from rebuilds
    box["clock"] = clock_of(lambda: trainable(wrapped))  # the clock starts with training, as ours
    trainer.train()
    return {"snapshots": box["clock"].snaps, "lora": lora}


def worker_trl_ppo(s: dict, clock_of) -> dict:
    """trl 1.12.0's PPOTrainer with the ppo section's settings and our LoRA / frozen value layers (see
    benchmarks/ppo_vs_trl.py for the settings that map one to one and its one shim)."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback, set_seed

    from components.core.config import load_config
    from components.core.encode import encode_prompts
    from components.core.models import bf16_supported, freeze_bottom, load_model_dir

    if trl.__version__ != "1.12.0":
        raise RuntimeError(f"peer: expected trl 1.12.0 first on PYTHONPATH, got {trl.__version__} from {trl.__file__}")
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    cfg = load_config(overrides=s["overrides"])
    pc, seed = cfg.ppo, cfg.common.seed
    set_seed(seed)
    policy, tok = load_model_dir(cfg.out_dir("sft"))
    ref = None
    if not pc.lora_rank:
        ref, _ = load_model_dir(cfg.out_dir("sft"))
        ref.requires_grad_(False).eval()
    value, _ = load_model_dir(cfg.out_dir("reward"), kind="sequence-classification")
    freeze_bottom(value, pc.value_freeze_layers)
    reward_model, _ = load_model_dir(cfg.out_dir("reward"), kind="sequence-classification")
    reward_model.requires_grad_(False).eval()
    tok.padding_side = "left"
    ids, _ = encode_prompts(tok, s["prompts"], cfg.common.system_prompt, pc.max_prompt_length)
    bf16 = cfg.common.bf16 and bf16_supported()
    args = PPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=pc.batch_size,
                     gradient_accumulation_steps=1, num_mini_batches=pc.batch_size // pc.minibatch_size,
                     num_ppo_epochs=pc.ppo_epochs, total_episodes=pc.batch_size * FOREVER,
                     local_rollout_forward_batch_size=pc.batch_size, response_length=pc.max_new_tokens,
                     temperature=pc.temperature, stop_token="eos", missing_eos_penalty=pc.missing_eos_penalty,
                     kl_coef=pc.kl_coef, kl_estimator=pc.kl_estimator if pc.kl_estimator in ("k1", "k3") else "k1",
                     cliprange=pc.clip_coef, cliprange_value=pc.clip_range_value, vf_coef=pc.vf_coef, gamma=pc.gamma,
                     lam=pc.gae_lambda, whiten_rewards=False, learning_rate=pc.lr, lr_scheduler_type="constant",
                     warmup_steps=0, weight_decay=0.0, max_grad_norm=pc.max_grad_norm, gradient_checkpointing=False,
                     bf16=bf16, use_cpu=not torch.cuda.is_available(), report_to="none", save_strategy="no",
                     logging_steps=1, disable_tqdm=True, num_sample_generations=0, seed=seed, dataloader_num_workers=0)
    os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16" if bf16 else "no"  # the shim of ppo_vs_trl.py
    lora = lora_of(pc) if pc.lora_rank else None
    box = {}

    class Budget(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if box["clock"].tick(state.global_step):
                raise OutOfTime  # PPOTrainer's own loop does not read control.should_training_stop

    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=reward_model,
                         train_dataset=Dataset.from_dict({"input_ids": ids}), value_model=value, callbacks=[Budget()],
                         peft_config=peft_config(lora) if lora else None)
    wrapped = trainer.model.policy  # the peft-wrapped policy when LoRA: its names are what ours saves
    box["clock"] = clock_of(lambda: trainable(wrapped))
    try:
        trainer.train()
    except OutOfTime:
        pass
    return {"snapshots": box["clock"].snaps, "lora": lora}


WORKERS = {"ours-ppo": worker_ours, "ours-ppo-ptx": worker_ours, "trl-grpo": worker_trl_group,
           "trl-rloo": worker_trl_group, "trl-grpo-lora": worker_trl_group, "trl-rloo-lora": worker_trl_group,
           "trl-ppo": worker_trl_ppo}


def worker(settings: Path, result: Path) -> None:
    import torch

    from components.core.env import set_offline_env

    set_offline_env()
    s = json.loads(settings.read_text())
    torch.set_num_threads(s["threads"])
    out = Path(s["snap_dir"])
    out.mkdir(parents=True, exist_ok=True)
    res = WORKERS[s["trainer"]](s, lambda params: Clock(s["budget"], s["every"], out, params))
    result.write_text(json.dumps(res))


# ------------------------------------------------------------------------------------ evaluation
def policy_from(sft: str, snap: dict, lora: dict | None):
    """SFT's model with a snapshot's trained parameters in it (a LoRA adapter merged into the weights)."""
    import torch

    from components.core.models import load_model_dir

    model, _ = load_model_dir(sft)
    params = torch.load(snap["path"], map_location="cpu")
    if lora:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config(lora))
    missing = set(params) - set(dict(model.named_parameters()))
    if missing:
        raise RuntimeError(f"{snap['path']}: {len(missing)} parameters the model does not have, e.g. {sorted(missing)[:3]}")
    model.load_state_dict(params, strict=False)
    return model.merge_and_unload() if lora else model


def answers(model, tok, prompts: list[str], cfg) -> list[str]:
    import torch

    from components.core.encode import encode_prompts
    from components.core.models import generate

    if torch.cuda.is_available():
        model.cuda()
    ids, _ = encode_prompts(tok, prompts, cfg.common.system_prompt, cfg.ppo.max_prompt_length)
    return generate(model, tok, ids, cfg.ppo.max_new_tokens, batch=cfg.evaluate.batch_size, by_length=True)


def curve_point(prompts, gold_sft, texts, seconds, update) -> dict:
    from components.datasets import synth
    from components.maths import stats

    g = [synth.gold_reward(p, r) for p, r in zip(prompts, texts)]
    wr = stats.win_rate_summary([stats.compare(a, b) for a, b in zip(g, gold_sft)])
    return {"seconds": seconds, "update": update, "win_rate": wr["rate"], "se": wr["se"], "lo": wr["lo"],
            "hi": wr["hi"], "n": wr["n"], "gold": stats.mean(g)}


def time_to(points: list[dict], rate: float) -> float | None:
    """Training seconds of the first snapshot whose win rate is at least ``rate`` (None: never)."""
    return next((p["seconds"] for p in points if p["win_rate"] >= rate), None)


def plot(curves: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, pts in curves.items():
        x = [p["seconds"] / 60 for p in pts]
        ax.plot(x, [p["win_rate"] for p in pts], marker="o", label=name)
        ax.fill_between(x, [p["lo"] for p in pts], [p["hi"] for p in pts], alpha=0.15)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("training wall time (min)")
    ax.set_ylabel("gold win rate vs SFT (95% interval)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------ driver
def run_worker(settings: Path, log: Path, peer_dir: str | None) -> tuple[dict, float]:
    from components.core.env import MALLOC_ENV

    path = os.pathsep.join([peer_dir, str(ROOT)] if peer_dir else [str(ROOT)])
    env = {**os.environ, "PYTHONPATH": path, "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false",
           **MALLOC_ENV}
    result = settings.with_suffix(".result.json")
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, __file__, "--worker", "--settings", str(settings), "--result", str(result)],
                             env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, ru = os.wait4(p.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0 or not result.exists():
        raise SystemExit(f"error: worker {settings.stem} failed (exit {code}); last lines of {log}:\n{log.read_text()[-4000:]}")
    return json.loads(result.read_text()), round(ru.ru_maxrss / 1024, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trainers", default=",".join(TRAINERS), help=f"comma-separated, of {', '.join(TRAINERS)}")
    ap.add_argument("--budget", type=float, default=900, help="training wall-clock seconds per trainer")
    ap.add_argument("--every", type=float, default=180, help="seconds of training between snapshots")
    ap.add_argument("--outputs", default=str(ROOT / "outputs"), help="folder holding sft/ and reward/")
    ap.add_argument("--eval-prompts", type=int, default=0, help="held-out prompts evaluated (0: all)")
    ap.add_argument("-S", "--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="params override for every trainer (e.g. common.profile=quick)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--full-lr", type=float, default=1e-5, help="learning rate of trl-grpo / trl-rloo (full fine-tuning)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the curves of trainers not run now from --out (each curve records its commit)")
    ap.add_argument("--logs", default=None, help="folder to keep each worker's output in (default: a temporary one)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rl_time_to_quality.json"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--settings", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(Path(args.settings), Path(args.result))
        return

    import torch

    from components.core.config import load_config
    from components.core.data import FILES, read_jsonl, split_records
    from components.core.env import set_offline_env
    from components.core.models import load_model_dir
    from components.core.tracking import git_commit
    from components.datasets import synth

    set_offline_env()
    torch.set_num_threads(args.threads)
    trainers = [t.strip() for t in args.trainers.split(",") if t.strip()]
    unknown = [t for t in trainers if t not in TRAINERS]
    if unknown:
        raise SystemExit(f"error: --trainers: unknown {', '.join(unknown)} (known: {', '.join(TRAINERS)})")
    outputs = Path(args.outputs).resolve()
    for d in ("sft", "reward"):
        if not (outputs / d).is_dir():
            raise SystemExit(f"error: {outputs / d}: no model folder (run the pipeline's sft and reward stages, or pass --outputs)")
    overrides = [*args.set, f"common.outputs_dir={outputs}"]
    cfg = load_config(overrides=overrides)
    prompts_file = cfg.data_dir / FILES["prompts"]
    train_p, eval_p = split_records(read_jsonl(prompts_file), cfg.common.eval_fraction, cfg.common.seed)
    held = [r["prompt"] for r in eval_p][: args.eval_prompts or None]
    if not held or any(synth.parse_task(p) is None for p in held):
        raise SystemExit(f"error: {prompts_file}: the held-out prompts must be the built-in tasks (gold reward needs them)")
    peer_dir = None
    if "trl-ppo" in trainers:
        from ppo_vs_trl import PEER_DIR, ensure_peer

        peer_dir = ensure_peer(PEER_DIR)

    results = {}
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        logs = Path(args.logs) if args.logs else work
        logs.mkdir(parents=True, exist_ok=True)
        for t in trainers:
            settings = work / f"{t}.json"
            settings.write_text(json.dumps({"trainer": t, "overrides": overrides, "budget": args.budget,
                                            "every": args.every, "threads": args.threads, "snap_dir": str(work / t),
                                            "full_lr": args.full_lr,
                                            "prompts": [r["prompt"] for r in train_p]}))
            print(f"training {t} for {args.budget:.0f} s ...", flush=True)
            res, rss = run_worker(settings, logs / f"{t}.log", peer_dir if t == "trl-ppo" else None)
            results[t] = {**res, "peak_rss_mb": rss, "commit": git_commit(),
                          "full_lr": None if res["lora"] else args.full_lr}
            print(f"  {len(res['snapshots'])} snapshots, last at update {res['snapshots'][-1]['update']}, "
                  f"peak RSS {rss:.0f} MB", flush=True)

        sft_model, tok = load_model_dir(cfg.out_dir("sft"))
        print(f"evaluating on {len(held)} held-out prompts: SFT ...", flush=True)
        sft_texts = answers(sft_model, tok, held, cfg)
        gold_sft = [synth.gold_reward(p, r) for p, r in zip(held, sft_texts)]
        del sft_model
        curves = {}
        for t, res in results.items():
            pts = [curve_point(held, gold_sft, sft_texts, 0.0, 0)]  # SFT against itself: every prompt ties
            for snap in res["snapshots"]:
                print(f"  {t} at {snap['seconds']:.0f} s (update {snap['update']}) ...", flush=True)
                texts = answers(policy_from(str(cfg.out_dir("sft")), snap, res["lora"]), tok, held, cfg)
                pts.append(curve_point(held, gold_sft, texts, snap["seconds"], snap["update"]))
            curves[t] = pts

    out = Path(args.out)
    if args.merge and out.exists():  # the other trainers' curves from an earlier run of the same comparison
        old = json.loads(out.read_text())
        same = {"budget_s": args.budget, "every_s": args.every, "held_out_prompts": len(held),
                "sft_gold": sum(gold_sft) / len(gold_sft)}
        differ = {k: (old.get(k), v) for k, v in same.items() if old.get(k) != v}
        if differ:
            raise SystemExit(f"error: --merge: {out} is another comparison ({differ}: theirs, ours)")
        for t in old["curves"]:
            if t not in curves:
                curves[t] = old["curves"][t]
                results[t] = {"peak_rss_mb": old["peak_rss_mb"][t], "lora": old["lora"][t],
                              "commit": old.get("commits", {}).get(t, old["commit"]),
                              "full_lr": old.get("full_lr", {}).get(t)}
        order = [t for t in TRAINERS if t in curves]
        curves, results = {t: curves[t] for t in order}, {t: results[t] for t in order}

    ours = [t for t in curves if t in OURS]
    peers = [t for t in curves if t not in OURS]
    target = {}
    if ours and peers:
        best = max(peers, key=lambda t: curves[t][-1]["win_rate"])
        rate = curves[best][-1]["win_rate"]
        t_peer = time_to(curves[best], rate)
        reach = {t: time_to(curves[t], rate) for t in ours}
        fastest = min((v for v in reach.values() if v is not None), default=None)
        target = {"best_peer": best, "best_peer_final_win_rate": rate, "best_peer_seconds_to_it": t_peer,
                  "ours_seconds_to_it": reach, "ratio": None if fastest is None or not t_peer else round(fastest / t_peer, 3),
                  "met": fastest is not None and bool(t_peer) and fastest <= 0.5 * t_peer}
    print(f"\n{'trainer':14} {'updates':>7} {'minutes':>7} {'win rate':>9} {'95% interval':>15} {'gold':>6} {'peak RSS MB':>11}")
    for t, pts in curves.items():
        p = pts[-1]
        print(f"{t:14} {p['update']:7d} {p['seconds'] / 60:7.1f} {p['win_rate']:9.3f} "
              f"[{p['lo']:.3f}, {p['hi']:.3f}]  {p['gold']:6.3f} {results[t]['peak_rss_mb']:11.0f}")
    print(f"SFT gold {sum(gold_sft) / len(gold_sft):.3f} on {len(held)} prompts")
    if target:
        print(f"target: ours reaches {target['best_peer']}'s final win rate {target['best_peer_final_win_rate']:.3f} "
              f"in <= 0.5x its {target['best_peer_seconds_to_it']} s: {'met' if target['met'] else 'NOT met'} "
              f"(ours: {target['ours_seconds_to_it']})")
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    plot(curves, png, f"gold win rate vs SFT, {len(held)} held-out prompts, {args.budget:.0f} s each, "
                      f"{os.cpu_count()} CPUs")
    out.write_text(json.dumps({
        "date": date.today().isoformat(), "machine": f"{platform.machine()}, {platform.processor() or platform.platform()}",
        "cpu_count": os.cpu_count(), "commit": git_commit(), "budget_s": args.budget, "every_s": args.every,
        "overrides": args.set, "outputs": str(outputs), "held_out_prompts": len(held),
        "sft_gold": sum(gold_sft) / len(gold_sft), "curves": curves,
        "peak_rss_mb": {t: r["peak_rss_mb"] for t, r in results.items()},
        "lora": {t: r["lora"] for t, r in results.items()}, "full_lr": {t: r["full_lr"] for t, r in results.items()},
        "commits": {t: r["commit"] for t, r in results.items()}, "target": target}, indent=2) + "\n")
    print(f"wrote {out} and {png}")


if __name__ == "__main__":
    main()
