"""rl.algorithm = rloo | grpo: the `ppo` stage trains with TRL's RLOOTrainer / GRPOTrainer against our
reward model. Upstream outputs (base_model, sft, reward) are built once, in temporary folders, on the
test profile; each algorithm then runs the real stage entry point (`python -m components.stages.ppo ppo`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from components.core.errors import ConfigError
from components.core.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_unknown_algorithm_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"rl\.algorithm"):
        load_config(overrides=["rl.algorithm=a2c"])
    with pytest.raises(ConfigError, match=r"rl\.num_generations"):
        load_config(overrides=["rl.num_generations=1"])
    assert load_config().rl.algorithm == "ppo"


def test_num_generations_must_divide_the_batch(tmp_path):
    from components.core.trl_rl import trl_config

    cfg = load_config(overrides=["rl.algorithm=grpo", "rl.num_generations=3", "ppo.batch_size=8"])
    with pytest.raises(ConfigError, match=r"rl\.num_generations=3 must divide ppo\.batch_size=8"):
        trl_config(cfg, tmp_path, use_bf16=False)
    args = trl_config(load_config(overrides=["rl.algorithm=grpo", "ppo.kl_coef=0.07"]), tmp_path, use_bf16=False)
    assert args.beta == 0.07 and args.num_generations == 2 and args.max_steps == load_config().ppo.updates


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """data, base_model, sft and reward of the test profile in temporary folders; MLflow store there too."""
    from components.stages import base_model
    from components.stages import reward
    from components.stages import sft
    from components.datasets.synth import write_builtin
    from components.core.stage import stage_main

    tmp = tmp_path_factory.mktemp("rl_trl")
    overrides = ["common.profile=test", f"common.data_dir={tmp / 'data'}", f"common.outputs_dir={tmp / 'outputs'}",
                 f"common.metrics_dir={tmp / 'metrics'}", f"common.plots_dir={tmp / 'plots'}"]
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "RLHF_PARENT_RUN_ID": None}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v) if v else mp.delenv(k, raising=False)
        write_builtin(load_config(overrides=overrides), tmp / "data")
        for stage, module in (("base_model", base_model), ("sft", sft), ("reward", reward)):
            assert stage_main(stage, module.run, overrides) == 0, stage
    return tmp, overrides


@pytest.mark.slow
def test_reward_func_gives_the_scorers_reward_in_trls_formats(project):
    from components.core.scoring import RewardScorer
    from components.core.trl_rl import RewardFunc

    tmp, overrides = project
    cfg = load_config(overrides=overrides)
    scorer = RewardScorer(cfg.out_dir("reward"), "")
    eos = scorer.tokenizer.eos_token_id
    prompts, answers = ["What is 2 + 3?", "Name a colour."], ["5", "Blue, like the sky."]
    want = scorer.score(prompts, answers)
    f = RewardFunc(scorer, eos, missing_eos_penalty=0.25)
    # conversational (what the stage gives TRL): messages in, [assistant message] out
    conv = f(prompts=[[{"role": "user", "content": p}] for p in prompts],
             completions=[[{"role": "assistant", "content": a}] for a in answers], completion_ids=[[7, eos], [7, 8]])
    assert conv == pytest.approx([want[0].item(), want[1].item() - 0.25], abs=1e-6)  # the 2nd never ended
    # standard (plain strings)
    assert f(prompts=prompts, completions=answers, completion_ids=[[eos], [eos]]) == pytest.approx(want.tolist(), abs=1e-6)
    logged = {}
    g = RewardFunc(scorer, eos, 0.0, gold=lambda p, r: 1.0)
    g(prompts=prompts, completions=answers, log_metric=lambda k, v: logged.setdefault(k, v))
    assert logged == pytest.approx({"score": want.mean().item(), "gold_reward": 1.0})  # PPO's `reward`, the gold one


@pytest.mark.slow
@pytest.mark.parametrize("algorithm,lora", [("rloo", True), ("grpo", True), ("grpo", False)])
def test_ppo_stage_trains_with_trl(project, algorithm, lora):
    """The policy is what the ppo section makes it: its LoRA adapter (saved merged), or every weight."""
    from mlflow import MlflowClient
    from safetensors.torch import load_file

    tmp, overrides = project
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"}
    env.pop("RLHF_PARENT_RUN_ID", None)
    p = subprocess.run([sys.executable, "-m", "components.stages.ppo", "ppo", *overrides, f"rl.algorithm={algorithm}",
                        *([] if lora else ["ppo.lora_rank=0", "ppo.lr=1e-5"])],
                       cwd=ROOT, env=env, text=True, capture_output=True, timeout=600)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    assert ("LoRA rank 16" if lora else "full fine-tuning above 0 frozen layers") in p.stdout
    metrics = json.loads((tmp / "metrics" / "ppo.json").read_text())
    assert metrics["algorithm"] == algorithm and metrics["updates"] == 2
    assert isinstance(metrics["final_reward"], float) and metrics["train_seconds"] > 0
    assert (tmp / "plots" / "ppo" / "curves.csv").read_text().startswith("update,reward,kl,")
    assert not (tmp / "outputs" / "checkpoints" / "ppo").exists()  # dropped once registered

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    version = client.get_model_version("policy", str(metrics["model_version"]))
    assert version.tags["algorithm"] == algorithm and version.tags["stage"] == "ppo"
    run = client.get_run(version.run_id)
    assert run.data.params["rl.algorithm"] == algorithm  # the rl section is logged with the stage's params
    assert run.data.metrics["ppo/score"] == pytest.approx(metrics["final_reward"])  # the RM score, as PPO's

    sft = load_file(tmp / "outputs" / "sft" / "model.safetensors")
    new = load_file(tmp / "outputs" / "ppo" / "model.safetensors")
    assert sft.keys() == new.keys()  # a plain model: an adapter is merged into the weights it wraps
    assert any(not torch.equal(sft[k], new[k]) for k in sft), "the policy's weights did not change"


@pytest.mark.slow
def test_trl_starts_from_the_same_lora_adapter_as_our_ppo(project, tmp_path):
    """Same ppo section, same seed: TRL's policy adapter starts where ours does, whatever the global RNG held (TRL seeds
    from trl_config's seed=common.seed before peft draws the adapter; ours seeds in ppo.load_models)."""
    from components.core.models import load_model_dir
    from components.core.scoring import RewardScorer
    from components.core.trl_rl import build_trainer
    from components.stages import ppo

    tmp, overrides = project
    cfg = load_config(overrides=[*overrides, "rl.algorithm=grpo"])

    def lora_a(model) -> dict[str, torch.Tensor]:
        return {k.split("base_model.model.", 1)[-1]: v.detach().clone() for k, v in model.named_parameters()
                if "lora_A" in k}

    torch.manual_seed(1)
    ours = lora_a(ppo.load_models(cfg, cfg.ppo).policy)
    torch.manual_seed(2)
    policy, tok = load_model_dir(cfg.out_dir("sft"))
    trainer = build_trainer(cfg, policy, tok, ["What is 2 + 3?", "Name a colour."], RewardScorer(cfg.out_dir("reward"), ""),
                            tmp_path, save_strategy="no", report_to=[])
    theirs = lora_a(trainer.model)
    assert ours and ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
