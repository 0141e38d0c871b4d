"""Failure modes (issue 6, items 1, 3 and 5): bad input, the numerical guard, and security defaults.

Every failure must name the thing (file, record, key, step), exit non-zero, register nothing in
MLflow and leave no output that looks finished (model folder, metrics file). The data rules of the
validation gate are tested in test_validate_rules.py; the README's "Failure modes" table points at
those tests and at these.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from components.core.config import ROOT, load_config, redact_uri, uri_has_secret
from components.core.errors import ConfigError
from components.core import models
from components.core import encode
from components.core.errors import ModelError

PY = sys.executable
RLHF = str(Path(sys.executable).with_name("rlhf"))


# ----------------------------------------------------------------------------------------- helpers

def run_cmd(args: list[str], env_extra: dict[str, str] | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "RLHF_NO_MALLOC_TUNING": "1", **(env_extra or {})}
    env.pop("RLHF_PARENT_RUN_ID", None)
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def stage_dirs(tmp_path: Path) -> list[str]:
    """Overrides that keep every stage output, metric and plot under tmp_path (profile test: tiny sizes)."""
    return ["common.profile=test", f"common.outputs_dir={tmp_path / 'outputs'}",
            f"common.metrics_dir={tmp_path / 'metrics'}", f"common.plots_dir={tmp_path / 'plots'}",
            f"common.data_dir={tmp_path / 'data'}", "common.experiment=failure-modes"]


def synth(tmp_path: Path) -> Path:
    from components.datasets.synth import write_builtin

    out = tmp_path / "data"
    write_builtin(load_config(overrides=["common.profile=test"]), out, force=True)
    return out


def registered_models(uri: str) -> list[str]:
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return []
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(uri)
    return [m.name for m in MlflowClient().search_registered_models()]


def run_statuses(uri: str, experiment: str = "failure-modes") -> list[str]:
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return []
    import mlflow

    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return [r.info.status for r in mlflow.search_runs([exp.experiment_id], output_format="list")]


def assert_nothing_done(tmp_path: Path, stage: str, uri: str) -> None:
    """No model folder, no metrics file, no half-written temp folder, nothing registered; any run FAILED."""
    outputs = tmp_path / "outputs"
    assert not (outputs / stage).exists()
    assert not list(outputs.glob(f".{stage}.*")) if outputs.exists() else True
    assert not (tmp_path / "metrics" / f"{stage}.json").exists()
    assert registered_models(uri) == []
    assert all(s == "FAILED" for s in run_statuses(uri))


def copy_model(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


# ------------------------------------------------------------------------ 1. bad input: parameters

@pytest.mark.parametrize("key", ["sft.lr", "dpo.lr", "reward.lr", "reward.head_lr", "ppo.lr", "ppo.value_lr"])
def test_negative_or_zero_learning_rate_is_refused_naming_the_key(key):
    for value in ("-1e-4", "0"):
        with pytest.raises(ConfigError, match=rf"{key}: Input should be greater than 0"):
            load_config(overrides=[f"{key}={value}"])


@pytest.mark.parametrize("override", ["label.k=10", "data.k_max=10", "data.k_min=10"])
def test_k_above_9_is_refused_in_params(override):
    with pytest.raises(ConfigError, match=rf"{override.split('=')[0]}: Input should be less than or equal to 9"):
        load_config(overrides=[override])


def test_k_above_9_is_refused_by_rlhf_sample(tmp_path, capsys):
    from components.apps.cli import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "p1", "prompt": "Hi"}\n')
    assert main(["sample", "--model", str(tmp_path), "--prompts", str(prompts), "--k", "10"]) == 3  # bad input: exit 3, as a stage
    assert "k = 10: the data format allows 2 <= K <= 9" in capsys.readouterr().err


def test_params_file_missing_or_not_utf8_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'nope.yaml'}: file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_bytes(b"common:\n  experiment: caf\xe9\n")
    with pytest.raises(ConfigError, match=rf"{bad}: not valid UTF-8 \(byte 25\)"):
        load_config(bad)


@pytest.mark.parametrize("override, fragment", [
    ("sft.lrr=1", "unknown key 'sft.lrr' (did you mean 'sft.lr'?)"),
    ("data.n_users=abc", "data.n_users: Input should be a valid integer"),
    ("sft.lr=-1e-4", "sft.lr: Input should be greater than 0"),
    ("label.k=10", "label.k: Input should be less than or equal to 9"),
], ids=["unknown_key", "wrong_type", "negative_lr", "k_10"])
@pytest.mark.slow
def test_rlhf_cli_refuses_bad_params_with_exit_2(override, fragment):
    p = run_cmd([RLHF, "params", "-S", override])
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("error: ") and fragment in p.stderr and "Traceback" not in p.stderr
    assert p.stdout == ""


@pytest.mark.slow
def test_stage_refuses_bad_params_before_any_mlflow_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    p = run_cmd([PY, "-m", "components.stages.sft", *stage_dirs(tmp_path), "sft.lr=-1"], {"MLFLOW_TRACKING_URI": uri})
    assert p.returncode == 2, p.stderr
    assert "error: [sft]" in p.stderr and "sft.lr: Input should be greater than 0" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run was even opened
    assert_nothing_done(tmp_path, "sft", uri)


# ------------------------------------------------------------------- 1. bad input: files and models

@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing_data_file", "empty_data_file", "truncated_checkpoint"])
def test_stage_with_bad_input_fails_cleanly_and_leaves_nothing(case, tmp_path, tiny_model_dir):
    """`python -m components.stages.sft` (what DVC runs) on bad input: exit 1, one error line naming the
    file, the MLflow run FAILED, nothing registered, no model folder, no metrics file."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data = synth(tmp_path)
    base = copy_model(tiny_model_dir, tmp_path / "outputs" / "base_model")
    if case == "missing_data_file":
        (data / "demonstrations.jsonl").unlink()
        expected = f"{data / 'demonstrations.jsonl'}: file not found"
    elif case == "empty_data_file":
        (data / "demonstrations.jsonl").write_text("")
        expected = f"{data / 'demonstrations.jsonl'}: no training demonstrations"
    else:
        w = base / "model.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
        expected = f"{w}: truncated or corrupt safetensors file"
    p = run_cmd([PY, "-m", "components.stages.sft", *stage_dirs(tmp_path)], {"MLFLOW_TRACKING_URI": uri})
    assert p.returncode == 3, p.stderr[-3000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: [sft] ") and expected in last, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    assert run_statuses(uri) == ["FAILED"]
    assert_nothing_done(tmp_path, "sft", uri)
    assert not (tmp_path / "outputs" / "checkpoints" / "sft").exists()


@pytest.mark.slow
def test_validate_stage_on_non_utf8_bytes_names_file_and_line(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data = synth(tmp_path)
    demos = data / "demonstrations.jsonl"
    lines = demos.read_bytes().splitlines(keepends=True)
    demos.write_bytes(b"".join(lines[:2]) + b'{"id": "bad", "prompt": "caf\xe9", "response": "x"}\n' + b"".join(lines[2:]))
    p = run_cmd([PY, "-m", "components.stages.validate", *stage_dirs(tmp_path)], {"MLFLOW_TRACKING_URI": uri})
    assert p.returncode == 3, p.stderr[-3000:]
    assert "error: [validate] data validation failed" in p.stderr
    assert f"{demos}:3 valid_utf8 — not valid UTF-8 (byte 28" in p.stderr
    assert "Traceback" not in p.stderr
    assert run_statuses(uri) == ["FAILED"]
    assert not (tmp_path / "metrics" / "validate.json").exists()
    assert registered_models(uri) == []


def test_base_model_stage_refuses_a_truncated_source_naming_the_file(tmp_path, tiny_model_dir):
    from components.stages import base_model

    src = copy_model(tiny_model_dir, tmp_path / "src")
    w = src / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    cfg = load_config(overrides=[*stage_dirs(tmp_path), "base_model.tiny=false", f"base_model.source={src}"])
    with pytest.raises(ModelError, match=f"{w}: truncated or corrupt safetensors file"):
        base_model.run(cfg)
    assert not (tmp_path / "outputs" / "base_model").exists()
    assert not list((tmp_path / "outputs").glob(".base_model.*")) if (tmp_path / "outputs").exists() else True


def test_a_failed_save_leaves_the_previous_model_folder_and_no_partial_one(tmp_path):
    from components.core.models import save_model_dir

    out = tmp_path / "outputs" / "sft"
    out.mkdir(parents=True)
    (out / "model.safetensors").write_text("previous, complete")

    class Model:
        def save_pretrained(self, d, safe_serialization=True):
            (Path(d) / "model.safetensors").write_text("new, half written")

    class Tokenizer:
        def save_pretrained(self, d):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_model_dir(Model(), Tokenizer(), out)
    assert (out / "model.safetensors").read_text() == "previous, complete"
    assert sorted(p.name for p in out.parent.iterdir()) == ["sft"]  # no .sft.* temp folder left


def test_long_sequences_are_truncated_with_a_warning_or_refused(tiny_model_dir, tmp_path, capsys):
    """Per params: <stage>.max_length (tokens) truncates with a warning naming the rows; a prompt that
    fills max_length leaves no answer token (dropped, warned); none left is refused. The validation
    gate refuses prompts over validate.max_prompt_chars (test_validate_rules)."""
    from components.core import trainers as tu
    from components.core.models import load_model_dir
    from components.core.errors import DataError

    _, tok = load_model_dir(tiny_model_dir)
    src = tmp_path / "demonstrations.jsonl"

    def row(prompt, answer):
        return {"prompt": [{"role": "user", "content": prompt}], "completion": [{"role": "assistant", "content": answer}]}

    long = "word " * 200
    rows = [row("Hi", "Hello."), row("Hi", long), row(long, "ok")]
    assert tu.check_lengths("sft", tok, rows, 64, src, ids=["d1", "d2", "d3"]) == {"truncated": 1, "dropped": 1}
    out = capsys.readouterr().out
    assert f"[sft] warning: 1 of 3 training rows of {src} are longer than sft.max_length=64 tokens" in out
    assert "(first: d2)" in out and "no answer token is left, they are dropped (first: d3)" in out
    with pytest.raises(DataError, match=rf"{src}: every training prompt fills sft.max_length=64 tokens"):
        tu.check_lengths("sft", tok, [row(long, "ok")], 64, src)
    dpo_row = {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": long}],
               "rejected": [{"role": "assistant", "content": "no"}]}
    assert tu.check_lengths("dpo", tok, [dpo_row], 64, src) == {"truncated": 1, "dropped": 0}
    # reward and PPO: left-truncated (the answer's end / the prompt's end is kept), counted, warned in run()/train()
    ids, cut = encode.encode_pair(tok, long, "ok", "", 64)
    assert cut and len(ids) == 64
    pids, n_cut = encode.encode_prompts(tok, ["Hi", long], "", 32)
    assert n_cut == 1 and len(pids[1]) == 32


# --------------------------------------------------------------------------- 3. numerical guard

def nan_after(model, n_calls: int):
    """Make the model's final norm output NaN from its n-th forward call on (loss -> NaN, grads -> NaN)."""
    calls = {"n": 0}

    def hook(module, inputs, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] >= n_calls else output

    model.model.norm.register_forward_hook(hook)
    return calls


def test_sft_stops_at_the_first_nan_and_keeps_the_last_good_checkpoint(tmp_path, tiny_model_dir, isolated_mlflow,
                                                                       monkeypatch, capsys):
    from components.stages import sft
    from components.core.stage import stage_main

    synth(tmp_path)
    copy_model(tiny_model_dir, tmp_path / "outputs" / "base_model")
    real_load = models.load_model_dir

    def load_poisoned(path, **kw):
        model, tok = real_load(path, **kw)
        nan_after(model, 3)  # the forward pass of step 3 (one micro-batch per step)
        return model, tok

    monkeypatch.setattr(sft, "load_model_dir", load_poisoned)
    rc = stage_main("sft", sft.run, [*stage_dirs(tmp_path), "sft.max_steps=4", "sft.save_steps=2",
                                     "sft.logging_steps=1", "sft.save_total_limit=5"])
    err = capsys.readouterr().err
    assert rc == 3
    ckpts = tmp_path / "outputs" / "checkpoints" / "sft"
    assert f"error: [sft] non-finite training loss (nan) at step 3; the weights were not updated with it; " \
           f"last good checkpoint: {ckpts / 'checkpoint-2'}" in err
    assert sorted(p.name for p in ckpts.glob("checkpoint-*")) == ["checkpoint-2"]  # kept, and no checkpoint of the bad step
    from safetensors.torch import load_file

    weights = load_file(ckpts / "checkpoint-2" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert_nothing_done(tmp_path, "sft", isolated_mlflow)
    assert run_statuses(isolated_mlflow) == ["FAILED"]


def test_dpo_stops_at_a_non_finite_loss(tmp_path, tiny_model_dir, monkeypatch):
    from components.stages import dpo
    from components.core.tracking import stage_run

    synth(tmp_path)
    copy_model(tiny_model_dir, tmp_path / "outputs" / "sft")
    real_load = models.load_model_dir

    def load_poisoned(path, **kw):
        model, tok = real_load(path, **kw)
        nan_after(model, 1)
        return model, tok

    monkeypatch.setattr(dpo, "load_model_dir", load_poisoned)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = load_config(overrides=[*stage_dirs(tmp_path), "dpo.max_steps=2", "dpo.max_samples=8"])
    with pytest.raises(FloatingPointError, match=r"\[dpo\] non-finite (training loss|gradient norm) \(nan\) at step 1"):
        with stage_run(cfg, "dpo"):
            dpo.run(cfg)
    assert_nothing_done(tmp_path, "dpo", f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_dpo_freeze_layers_trains_only_the_layers_above(tmp_path, tiny_model_dir, monkeypatch):
    """dpo.freeze_layers = 1: the embeddings and layer 0 come out exactly as SFT's, the top layer moved."""
    from safetensors.torch import load_file

    from components.core.tracking import stage_run
    from components.stages import dpo

    synth(tmp_path)
    copy_model(tiny_model_dir, tmp_path / "outputs" / "sft")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = load_config(overrides=[*stage_dirs(tmp_path), "dpo.max_steps=2", "dpo.max_samples=8", "dpo.freeze_layers=1",
                                 "dpo.lr=1e-3"])
    with stage_run(cfg, "dpo"):
        dpo.run(cfg)
    before = load_file(tmp_path / "outputs" / "sft" / "model.safetensors")
    after = load_file(tmp_path / "outputs" / "dpo" / "model.safetensors")
    frozen = [k for k in before if "embed_tokens" in k or ".layers.0." in k]
    top = [k for k in before if f".layers.{cfg.base_model.tiny_layers - 1}." in k and k.endswith("proj.weight")]
    assert frozen and top
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert all(not torch.equal(before[k], after[k]) for k in top)


def test_trainer_guard_checks_loss_gradient_and_log_and_trainer_keeps_nan_visible(tmp_path):
    """The callback SFT and DPO train with (trainer_utils.nonfinite_callback), each check alone; and
    Trainer's logging_nan_inf_filter (which would hide a NaN step loss) is off."""
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState

    from components.core import trainers as tu

    assert tu.trainer_kwargs(load_config(), load_config().sft, tmp_path, 10)["logging_nan_inf_filter"] is False
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("{}")
    model = torch.nn.Linear(2, 1)
    model.weight.grad = torch.ones_like(model.weight)
    trainer = SimpleNamespace(_tr_loss=torch.tensor(1.5), model=model)
    guard = tu.nonfinite_callback(trainer, tmp_path, "sft")
    state, control = TrainerState(global_step=5), TrainerControl()
    guard.on_pre_optimizer_step(None, state, control, model=model)  # all finite: nothing happens
    guard.on_log(None, state, control, logs={"loss": 1.5, "grad_norm": 0.3})
    model.weight.grad[0, 1] = float("inf")
    with pytest.raises(FloatingPointError, match=rf"\[sft\] non-finite gradient norm \(inf\) at step 6; the weights were "
                                                 rf"not updated with it; last good checkpoint: {tmp_path / 'checkpoint-4'}"):
        guard.on_pre_optimizer_step(None, state, control, model=model)
    trainer._tr_loss = torch.tensor(float("nan"))
    with pytest.raises(FloatingPointError, match=r"non-finite training loss \(nan\) at step 6"):
        guard.on_pre_optimizer_step(None, state, control, model=model)
    with pytest.raises(FloatingPointError, match=r"non-finite grad_norm \(nan\) in the log at step 5; last good"):
        guard.on_log(None, state, control, logs={"loss": 1.0, "grad_norm": float("nan")})


def _reward_items(tok, n=8):
    answers = ["good good", "good", "bad"]
    return [{"ids": [encode.encode_pair(tok, f"Item {i}?", a, "", 48)[0] for a in answers], "ranks": [0, 1, 2],
             "utility_id": 0, "prompt_type": "unknown"} for i in range(n)]


@pytest.mark.parametrize("what", ["loss", "gradient"])
def test_reward_training_stops_at_a_non_finite_value_and_keeps_its_checkpoint(what, tiny_model_dir, tmp_path, monkeypatch):
    from components.stages import reward
    from components.maths import reward_losses
    from components.core.config import RewardConfig

    model, tok = reward.load_reward_backbone(tiny_model_dir)
    rc = RewardConfig(max_steps=4, save_steps=2, prompts_per_batch=2, warmup_ratio=0.0,
                      utility={"closed": "logsigmoid", "open": "logsigmoid", "unknown": "logsigmoid"})
    calls = {"n": 0}
    if what == "loss":
        real = reward_losses.kwise_loss

        def kwise_loss(*a, **kw):
            calls["n"] += 1
            loss, diag = real(*a, **kw)
            return (loss * float("nan") if calls["n"] == 3 else loss), diag

        monkeypatch.setattr(reward, "kwise_loss", kwise_loss)
        expected = r"\[reward\] non-finite loss nan at step 3"
    else:
        def poison(grad):
            calls["n"] += 1
            return grad * float("nan") if calls["n"] == 3 else grad

        model.score.weight.register_hook(poison)
        expected = r"\[reward\] non-finite gradient norm at step 3"
    ckpt = tmp_path / "ckpt"
    with pytest.raises(FloatingPointError, match=expected):
        reward.train(model, _reward_items(tok), rc, tok.pad_token_id, ("logsigmoid",), 0,
                     autocast=models.autocast_for(False), ckpt_dir=ckpt)
    state = torch.load(ckpt / "step-2" / "state.pt", weights_only=False)
    assert state["step"] == 2  # the last good checkpoint is kept
    assert all(torch.isfinite(t).all() for t in state["model"].values())


class _Scorer:
    def __init__(self, nan_at_call: int | None = None):
        self.calls, self.nan_at = 0, nan_at_call

    def score(self, prompts, responses):
        self.calls += 1
        r = torch.full((len(prompts),), 0.5)
        if self.calls == self.nan_at:
            r[1] = float("nan")
        return r


@pytest.mark.parametrize("what", ["reward", "loss", "gradient"])
def test_ppo_stops_at_a_non_finite_value_and_keeps_its_checkpoint(what, tiny_model_dir, tmp_path, monkeypatch, capsys):
    from components.stages import ppo
    from components.maths import ppo_losses
    from components.core.models import load_model_dir
    from components.core.config import PPOConfig
    from components.stages.reward import load_reward_backbone

    torch.manual_seed(0)
    policy, tok = load_model_dir(tiny_model_dir)
    ref, _ = load_model_dir(tiny_model_dir)
    ref.requires_grad_(False)
    value, _ = load_reward_backbone(tiny_model_dir)
    scorer = _Scorer(nan_at_call=2 if what == "reward" else None)
    updates = {"n": 0}
    if what == "loss":
        real = ppo_losses.ppo_ptx_objective

        def objective(*a, **kw):
            updates["n"] += 1
            out = real(*a, **kw)
            return out * float("nan") if updates["n"] == 2 else out  # one minibatch per update here

        monkeypatch.setattr(ppo_losses, "ppo_ptx_objective", objective)
    elif what == "gradient":
        def poison(grad):
            updates["n"] += 1
            return grad * float("nan") if updates["n"] == 2 else grad

        policy.lm_head.weight.register_hook(poison)
    expected = {"reward": r"\[ppo\] non-finite reward nan from the reward model at update 2 \(response 1",
                "loss": r"\[ppo\] non-finite loss at update 2", "gradient": r"\[ppo\] non-finite gradient at update 2"}[what]
    pc = PPOConfig(updates=3, batch_size=2, minibatch_size=2, ppo_epochs=1, max_new_tokens=4, save_every=1,
                   max_prompt_length=48)
    prompts = ["Tell me a number.", "Say hi. " * 40]  # the second is longer than max_prompt_length
    ckpt = tmp_path / "ckpt"
    with pytest.raises(FloatingPointError, match=expected):
        ppo.train(ppo.Models(policy, ref, value, scorer, tok), prompts, [], pc, seed=0, ckpt_dir=ckpt)
    assert "[ppo] warning: 1 prompts longer than ppo.max_prompt_length=48 tokens were left-truncated" in capsys.readouterr().out
    assert sorted(p.name for p in ckpt.iterdir()) == ["update-1"]  # the last good checkpoint is kept
    state = torch.load(ckpt / "update-1" / "state.pt", weights_only=False)
    assert all(torch.isfinite(t).all() for t in state["policy"].values())


# --------------------------------------------------------------------------------- 5. security

def test_servers_bind_127_0_0_1_unless_told_otherwise(monkeypatch, tmp_path):
    from components.apps import cli
    from components.apps import label

    parser = cli.build_parser()
    for argv in (["ui"], ["serve"], ["label"]):
        assert parser.parse_args(argv).host == "127.0.0.1", argv
    seen = {}
    from components.apps import serve

    monkeypatch.setattr(serve, "start", lambda cmd, **kw: seen.setdefault("ui", cmd) and subprocess.Popen(["true"]))
    assert cli.main(["ui"]) == 0
    assert seen["ui"][seen["ui"].index("--host") + 1] == "127.0.0.1"
    monkeypatch.setattr(label, "make_app", lambda *a, **kw: "app")
    monkeypatch.setattr(label, "serve", lambda app, host, port: seen.setdefault("label", host))
    assert cli.main(["label", "--queue", str(tmp_path / "q.jsonl")]) == 0
    assert seen["label"] == "127.0.0.1"

    from flows import schedule

    class Started(Exception):
        pass

    def start(cmd, **kw):
        seen["prefect"] = cmd
        raise Started

    monkeypatch.setattr(schedule, "start", start)
    monkeypatch.setattr(schedule, "configured_api_url", lambda: None)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    with pytest.raises(Started):
        with schedule.prefect_server(port=schedule.free_port()):
            pass
    assert seen["prefect"][seen["prefect"].index("--host") + 1] == "127.0.0.1"


def test_trust_remote_code_is_off_and_shipped_code_never_runs(tiny_model_dir, tmp_path):
    from components.stages import base_model

    assert load_config().base_model.trust_remote_code is False
    src = copy_model(tiny_model_dir, tmp_path / "remote")
    marker = tmp_path / "code_ran"
    (src / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n"
                                 "from transformers import LlamaConfig\nclass EvilConfig(LlamaConfig):\n"
                                 "    model_type = 'evil-custom'\n")
    conf = json.loads((src / "config.json").read_text())
    conf.update(model_type="evil-custom", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"})
    (src / "config.json").write_text(json.dumps(conf))
    cfg = load_config(overrides=[*stage_dirs(tmp_path), "base_model.tiny=false", f"base_model.source={src}"])
    with pytest.raises(ModelError, match=rf"base_model.source='{src}': cannot load: .*trust_remote_code"):
        base_model.run(cfg)
    assert not marker.exists()
    assert not (tmp_path / "outputs" / "base_model").exists()


def test_pickle_weights_are_refused_unless_allow_pickle(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from components.stages import base_model

    src = copy_model(tiny_model_dir, tmp_path / "pickled")
    torch.save(load_file(src / "model.safetensors"), src / "pytorch_model.bin")
    (src / "model.safetensors").unlink()
    over = [*stage_dirs(tmp_path), "base_model.tiny=false", f"base_model.source={src}"]
    with pytest.raises(ModelError, match=rf"{src}: no .safetensors weights .*base_model.allow_pickle=true"):
        base_model.run(load_config(overrides=over))
    assert not (tmp_path / "outputs" / "base_model").exists()
    with pytest.raises(ModelError, match="pickle weights need base_model.allow_pickle=true"):
        models.load_model_dir(src)  # what every later stage calls
    base_model.run(load_config(overrides=[*over, "base_model.allow_pickle=true"]))  # the user opted in
    out = tmp_path / "outputs" / "base_model"
    assert (out / "model.safetensors").exists() and not (out / "pytorch_model.bin").exists()


@pytest.mark.parametrize("uri, shown", [
    ("http://bob:s3cret@mlflow.example:5000", "http://bob:***@mlflow.example:5000"),
    ("https://tok3n@mlflow.example/", "https://***@mlflow.example/"),
    ("postgresql://u:s3cret@db/mlflow?sslmode=require", "postgresql://u:***@db/mlflow?sslmode=require"),
    ("https://mlflow.example/?token=s3cret&x=1", "https://mlflow.example/?token=***&x=1"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ("", ""),
])
def test_tracking_uri_credentials_are_masked(uri, shown):
    assert redact_uri(uri) == shown
    assert "s3cret" not in redact_uri(uri) and "tok3n" not in redact_uri(uri)


@pytest.mark.slow
def test_credentials_are_refused_in_params_and_never_echoed(tmp_path):
    for uri in ("http://bob:s3cret@mlflow.example:5000", "https://mlflow.example/?api_key=s3cret"):
        assert uri_has_secret(uri)
        with pytest.raises(ConfigError) as e:
            load_config(overrides=[f"common.tracking_uri={uri}"])
        assert "common.tracking_uri" in str(e.value) and "MLFLOW_TRACKING_URI" in str(e.value)
        assert "s3cret" not in str(e.value)
    assert load_config(overrides=["common.tracking_uri=http://mlflow.example:5000"]).common.tracking_uri
    p = run_cmd([RLHF, "params", "-S", "common.tracking_uri=http://bob:s3cret@h:5000"])
    assert p.returncode == 2 and "s3cret" not in p.stderr + p.stdout
    from components.core.config import set_params# what `rlhf run -S` calls: validated before anything is written

    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "profiles").mkdir()
    with pytest.raises(ConfigError):
        set_params(params, ["common.tracking_uri=http://bob:s3cret@h:5000"])
    assert "s3cret" not in params.read_text()


def test_rlhf_ui_prints_the_store_with_the_password_masked(monkeypatch, capsys):
    from components.apps import cli, serve

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://bob:s3cret@mlflow.example:5000")
    seen = {}
    monkeypatch.setattr(serve, "start", lambda cmd, **kw: seen.update(cmd=cmd, env=kw["env"]) or subprocess.Popen(["true"]))
    assert cli.main(["ui"]) == 0
    out = capsys.readouterr().out
    assert "http://bob:***@mlflow.example:5000" in out and "s3cret" not in out
    # the store goes to `mlflow ui` through its environment, not argv (which `ps` shows every user)
    assert not any("s3cret" in a for a in seen["cmd"]) and "s3cret" in seen["env"]["MLFLOW_BACKEND_STORE_URI"]


def test_secret_env_vars_never_reach_mlflow(isolated_mlflow, monkeypatch, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    from components.core import tracking

    secret = "tok-0123456789-secret"
    for name in ("HF_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MY_SERVICE_TOKEN", "DB_PASSWORD"):
        monkeypatch.setenv(name, secret)
    cfg = load_config(overrides=["common.experiment=failure-modes-secrets"])
    with tracking.stage_run(cfg, "sft") as run:
        tracking.log_metrics("sft", {"loss": 1.0})
    got = MlflowClient().get_run(run.info.run_id)
    text = json.dumps({"params": got.data.params, "tags": got.data.tags})
    art = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path / "art")))
    text += "".join(p.read_text() for p in art.rglob("*") if p.is_file())
    assert "common.seed" in text and secret not in text


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else (f"{getattr(f.value, 'id', '?')}.{f.attr}" if isinstance(f, ast.Attribute) else "")
            yield name, node


def test_text_from_data_is_never_executed():
    """No eval/exec, no shell=True, no os.system, YAML read with safe_load, every torch.load explicit
    about weights_only; the ranking page sets data with textContent only (the validation report
    escapes HTML: test_validate_rules.py::test_write_report_escapes_html)."""
    files = sorted((ROOT / "components").rglob("*.py")) + sorted((ROOT / "flows").glob("*.py"))
    assert len(files) > 40  # every package of the tree, not just the top folder
    problems = []
    for path in files:
        for name, node in _calls(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if name in ("eval", "exec", "compile", "os.system", "os.popen", "yaml.load", "yaml.unsafe_load",
                        "pickle.load", "pickle.loads", "marshal.loads"):
                problems.append(f"{where}: {name}()")
            if any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                   for k in node.keywords):
                problems.append(f"{where}: shell=")
            if name == "torch.load" and not any(k.arg == "weights_only" for k in node.keywords):
                problems.append(f"{where}: torch.load without weights_only")
    assert problems == []
    from components.apps.label_page import PAGE

    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in PAGE


def test_every_test_the_failure_modes_table_names_exists():
    """docs/failure-modes.md names a test for each case: each `tests/<file>.py::<name>[<id>]` is a test
    function of that file (and a parametrized one when an id is given)."""
    import re

    table = (ROOT / "docs" / "failure-modes.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(tests/[\w/]+\.py)::(\w+)(\[[^\]`]*\])?`", table))
    assert len(named) > 60
    missing = []
    for path, name, param in sorted(named):
        source = (ROOT / path).read_text(encoding="utf-8") if (ROOT / path).exists() else ""
        tree = ast.parse(source) if source else None
        fns = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)} if tree else {}
        if name not in fns or (param and not any("parametrize" in ast.unparse(d) for d in fns[name].decorator_list)):
            missing.append(f"{path}::{name}{param}")
    assert not missing, f"docs/failure-modes.md names tests that do not exist: {missing}"


def test_a_long_prompt_keeps_its_end_so_the_answer_fits(tiny_model_dir, tmp_path, capsys):
    """SFT and DPO rows: a prompt that would leave the answer no room (dropped) or cut it is left-truncated
    (its latest turns kept, after '… ') down to what lets the answer fit, never below half of max_length."""
    from components.core import trainers as tu
    from components.core.encode import chat_ids
    from components.core.models import load_model_dir

    _, tok = load_model_dir(tiny_model_dir)
    convo = " ".join(f"Human: question {i}? Assistant: answer {i}." for i in range(40)) + " Human: the last question?"
    row = {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": convo}],
           "completion": [{"role": "assistant", "content": "The last answer."}]}
    full = len(chat_ids(tok, row["prompt"] + row["completion"]))
    assert full > 128
    new, cut = tu.fit_prompt(tok, row, 128)
    assert cut and new["prompt"][0] == row["prompt"][0] and new["completion"] == row["completion"]
    text = new["prompt"][1]["content"]
    assert text.startswith("… ") and text.endswith("Human: the last question?") and convo.endswith(text[2:])
    assert len(chat_ids(tok, new["prompt"] + new["completion"])) <= 128  # the whole answer is trained on now
    assert tu.check_lengths("sft", tok, [new], 128, tmp_path / "d.jsonl") == {"truncated": 0, "dropped": 0}
    # a long answer: the prompt keeps at least half of max_length, TRL cuts the answer's end as before
    long_answer = {**row, "completion": [{"role": "assistant", "content": "word " * 300}]}
    new, cut = tu.fit_prompt(tok, long_answer, 128)
    p = len(chat_ids(tok, new["prompt"], add_generation_prompt=True))
    assert cut and 64 - 4 <= p <= 64
    # rows that fit, and a long answer after a short prompt, are left as they are
    short = {**row, "prompt": [{"role": "user", "content": "Hi"}]}
    assert tu.fit_prompt(tok, short, 128) == (short, False)
    assert tu.fit_prompt(tok, {**long_answer, "prompt": short["prompt"]}, 128)[1] is False
    dpo = {"prompt": row["prompt"], "chosen": row["completion"], "rejected": [{"role": "assistant", "content": "No."}]}
    rows = tu.fit_prompts("dpo", tok, [dpo, short], 128)
    assert rows[1] is short and len(chat_ids(tok, rows[0]["prompt"] + rows[0]["chosen"])) <= 128
    assert "[dpo] 1 of 2 rows are longer than dpo.max_length=128 tokens: their prompt keeps its end" in capsys.readouterr().out
