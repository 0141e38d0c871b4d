"""Faults: a stage SIGKILLed mid-training resumes, when it is run again (what a Prefect retry or a
second `dvc repro` does), from its last checkpoint to the same weights and metrics as a run that was
never interrupted; a failing stage leaves the registry's earlier versions and aliases alone; and
retention (``common.keep_versions``) prunes old versions but never one holding an alias.

Real processes: two temporary project copies with the test profile, K (killed, then rerun) and U
(uninterrupted), the same data and base model. ``RLHF_KILL_AFTER_CHECKPOINT=N``
(components/core/faults.py) makes the stage SIGKILL itself right after its checkpoint N is on disk, so
the kill point is deterministic (no sleeps, no polling races).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from components.core.config import load_config, set_params
from components.core.faults import KILL_ENV, POINT_ENV
from components.core.retention import versions_to_prune
from components.core.registry import register_model, resolve_model

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]

# Longer than the test profile's 2 steps / 2 updates, with checkpoints to resume from. Passed on the
# command line (``python -m components.<stage> key=value``, highest precedence), because the test
# profile's own values would win over params.yaml. sft keeps logging_steps 5: the kill at step 4
# falls between two log lines, the case where a resumed run's mean train loss used to go wrong.
SFT = ["components.stages.sft", "sft.max_steps=6", "sft.save_steps=2"]
REWARD = ["components.stages.reward", "reward.max_steps=6", "reward.save_steps=2"]
PPO = ["components.stages.ppo", "ppo", "ppo.updates=4", "ppo.save_every=1"]
PPO_PTX = ["components.stages.ppo", "ppo_ptx", "ppo.updates=4", "ppo.save_every=1"]  # ppo_ptx = ppo + ptx_coef
DPO = ["components.stages.dpo", "dpo.max_steps=6", "dpo.save_steps=2"]
REGISTERED = ("sft", "reward-model", "policy")


def env_for(proj: Path, kill_at: int | None = None, point: str | None = None) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(proj),
           "MLFLOW_TRACKING_URI": f"sqlite:///{proj / 'mlflow.db'}", "PYTHONUNBUFFERED": "1"}
    for k in ("RLHF_PARENT_RUN_ID", KILL_ENV, POINT_ENV):
        env.pop(k, None)
    if kill_at is not None:
        env[KILL_ENV] = str(kill_at)
    if point is not None:
        env[POINT_ENV] = point
    return env


def start(proj: Path, args: list[str], kill_at: int | None = None, point: str | None = None) -> subprocess.Popen:
    killed = kill_at is not None or point is not None
    log = open(proj / f"{args[0].split('.')[-1]}-{'killed' if killed else 'run'}.log", "a")  # noqa: SIM115
    try:
        return subprocess.Popen([str(BIN / "python"), "-m", *args], cwd=proj, env=env_for(proj, kill_at, point),
                                stdout=log, stderr=subprocess.STDOUT, text=True)
    finally:
        log.close()


# A stage of the test profile takes a minute on an idle 2-core machine; the limits only catch a hang, and leave
# room for a loaded one (the first limits, 300 s and 120 s, were hit with other work on both cores)
STAGE_TIMEOUT, QUERY_TIMEOUT = 1200, 600


def finish(p: subprocess.Popen, proj: Path, expect: int | None = 0, timeout: int = STAGE_TIMEOUT) -> str:
    """Wait for p; its exit code must be ``expect`` (None: an error exit, > 0)."""
    rc = p.wait(timeout=timeout)
    out = "".join(f.read_text() for f in sorted(proj.glob("*.log")))
    assert (rc > 0) if expect is None else (rc == expect), f"{p.args} exited {rc}, expected {expect}\n{out[-5000:]}"
    return out


def run(proj: Path, args: list[str], kill_at: int | None = None, expect: int | None = 0, point: str | None = None) -> str:
    for f in proj.glob("*.log"):
        f.unlink()
    return finish(start(proj, args, kill_at, point), proj, expect)


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    import torch

    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def metrics(proj: Path, stage: str) -> dict:
    return json.loads((proj / "metrics" / f"{stage}.json").read_text())


def registry(proj: Path) -> dict:
    """{name: {"versions": [[version, source], ...], "aliases": {alias: version}}} of the copy's registry."""
    code = ("import json\n"
            "from mlflow import MlflowClient\n"
            "c = MlflowClient()\n"
            "out = {}\n"
            "for rm in c.search_registered_models():\n"
            "    vs = sorted(c.search_model_versions(f\"name='{rm.name}'\"), key=lambda v: int(v.version))\n"
            "    out[rm.name] = {'versions': [[str(v.version), v.source] for v in vs],\n"
            "                    'aliases': {a: str(v) for a, v in rm.aliases.items()}}\n"
            "print(json.dumps(out))\n")
    p = subprocess.run([str(BIN / "python"), "-c", code], cwd=proj, env=env_for(proj), text=True,
                       capture_output=True, timeout=QUERY_TIMEOUT)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def stage_runs(proj: Path, stage: str) -> list[dict]:
    """[{"id", "status", "failure"}] of the copy's MLflow runs of ``stage``, oldest first."""
    code = ("import json, mlflow\n"
            "from mlflow import MlflowClient\n"
            "c = MlflowClient()\n"
            "exps = [e.experiment_id for e in c.search_experiments()]\n"
            f"runs = c.search_runs(exps, \"tags.stage = '{stage}'\", order_by=['attributes.start_time ASC'])\n"
            "print(json.dumps([{'id': r.info.run_id, 'status': r.info.status,\n"
            "                   'failure': r.data.tags.get('rlhf_failure')} for r in runs]))\n")
    p = subprocess.run([str(BIN / "python"), "-c", code], cwd=proj, env=env_for(proj), text=True, capture_output=True,
                       timeout=QUERY_TIMEOUT)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def kill_rerun_and_compare(pair, args: list[str], kill_at: int, ckpt: Path, stage: str) -> dict:
    """K: run with the kill hook (exit -SIGKILL, checkpoint left), then rerun; U meanwhile runs uninterrupted.
    The killed stage's MLflow run, left RUNNING, is marked FAILED by the rerun, with the reason."""
    k, u = pair
    u_proc = start(u, args)
    try:
        k_out = run(k, args, kill_at=kill_at, expect=-signal.SIGKILL)
        assert f"SIGKILL after checkpoint {kill_at}" in k_out
        assert (k / ckpt).exists(), f"no checkpoint {ckpt} after the kill"
        assert not (k / "outputs" / stage).exists() and not (k / "metrics" / f"{stage}.json").exists()
        left = sorted(p.name for p in (k / "outputs" / "checkpoints" / stage).iterdir())
        assert stage_runs(k, stage)[-1]["status"] == "RUNNING"  # what a SIGKILL leaves
        rerun = run(k, args)
        killed, again = stage_runs(k, stage)[-2:]
        assert killed["status"] == "FAILED" and "no longer exists: it ended without closing this run" in killed["failure"]
        assert again["status"] == "FINISHED" and f"run {killed['id']} ({stage}) was left RUNNING" in rerun
    except BaseException:
        u_proc.kill()  # do not leave the uninterrupted run behind when K failed
        u_proc.wait()
        raise
    finish(u_proc, u)
    assert not (k / "outputs" / "checkpoints" / stage).exists() or not any((k / "outputs" / "checkpoints" / stage).iterdir())
    return {"rerun": rerun, "left": left}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """K and U: project copies with the test profile, the same data and the same tiny base model."""
    from test_pipeline import project_copy

    k = project_copy(tmp_path_factory.mktemp("killed"))
    u = project_copy(tmp_path_factory.mktemp("uninterrupted"))
    for proj in (k, u):
        set_params(proj / "params.yaml", ["common.profile=test"])
    run(k, ["components.apps.cli", "data", "synth"])  # the built-in data at the test profile's sizes
    run(k, ["components.stages.base_model"])
    shutil.copytree(k / "data", u / "data")
    shutil.copytree(k / "outputs" / "base_model", u / "outputs" / "base_model")
    return k, u


@pytest.fixture(scope="module")
def sft_done(pair):
    return kill_rerun_and_compare(pair, SFT, 4, Path("outputs/checkpoints/sft/checkpoint-4"), "sft")


@pytest.fixture(scope="module")
def reward_done(pair, sft_done):
    return kill_rerun_and_compare(pair, REWARD, 4, Path("outputs/checkpoints/reward/step-4/state.pt"), "reward")


@pytest.fixture(scope="module")
def ppo_done(pair, reward_done):
    return kill_rerun_and_compare(pair, PPO, 2, Path("outputs/checkpoints/ppo/update-2/state.pt"), "ppo")


@pytest.fixture(scope="module")
def ppo_ptx_done(pair, reward_done):
    return kill_rerun_and_compare(pair, PPO_PTX, 2, Path("outputs/checkpoints/ppo_ptx/update-2/state.pt"), "ppo_ptx")


@pytest.fixture(scope="module")
def dpo_done(pair, sft_done):
    return kill_rerun_and_compare(pair, DPO, 4, Path("outputs/checkpoints/dpo/checkpoint-4"), "dpo")


@pytest.mark.slow
def test_sft_killed_after_a_checkpoint_resumes_to_the_uninterrupted_weights(pair, sft_done):
    k, u = pair
    assert [n for n in sft_done["left"] if n.startswith("checkpoint-")] == ["checkpoint-2", "checkpoint-4"]  # save_total_limit 2
    assert "resuming from" in sft_done["rerun"] and "checkpoint-4" in sft_done["rerun"]
    assert_same_weights(k / "outputs" / "sft", u / "outputs" / "sft")
    mk, mu = metrics(k, "sft"), metrics(u, "sft")
    # train_loss: the mean over all 6 steps in both (Trainer's own covers the 2 resumed steps only)
    assert mk["train_loss"] == pytest.approx(mu["train_loss"], rel=1e-6)
    assert mk["eval_loss"] == mu["eval_loss"]


@pytest.mark.slow
def test_reward_model_killed_after_a_checkpoint_resumes_to_the_uninterrupted_weights(pair, reward_done):
    k, u = pair
    assert "resuming from" in reward_done["rerun"] and "at step 5" in reward_done["rerun"]
    assert_same_weights(k / "outputs" / "reward", u / "outputs" / "reward")
    mk, mu = metrics(k, "reward"), metrics(u, "reward")
    for key in ("val_accuracy", "val_loss", "demo_bias", "reward_mean", "train_loss"):
        assert mk.get(key) == mu.get(key), key


@pytest.mark.slow
def test_ppo_killed_after_a_checkpoint_resumes_to_the_uninterrupted_weights(pair, ppo_done):
    k, u = pair
    assert ppo_done["left"] == ["update-2"]  # save_total_limit 1
    assert "resuming from" in ppo_done["rerun"] and "at update 3" in ppo_done["rerun"]
    assert_same_weights(k / "outputs" / "ppo", u / "outputs" / "ppo")
    mk, mu = metrics(k, "ppo"), metrics(u, "ppo")
    for key in ("final_kl", "final_reward", "heldout_lm_loss"):
        assert mk[key] == mu[key], key
    assert curves(k, "ppo") == curves(u, "ppo")


def curves(proj: Path, stage: str) -> list[list[str]]:
    """plots/<stage>/curves.csv: every per-update metric but the throughput."""
    rows = [line.split(",") for line in (proj / "plots" / stage / "curves.csv").read_text().splitlines()]
    drop = rows[0].index("tokens_per_second")
    return [[c for i, c in enumerate(r) if i != drop] for r in rows]


@pytest.mark.slow
def test_dpo_killed_after_a_checkpoint_resumes_to_the_uninterrupted_weights(pair, dpo_done):
    k, u = pair
    assert "resuming from" in dpo_done["rerun"] and "checkpoint-4" in dpo_done["rerun"]
    assert_same_weights(k / "outputs" / "dpo", u / "outputs" / "dpo")
    mk, mu = metrics(k, "dpo"), metrics(u, "dpo")
    assert mk["train_loss"] == pytest.approx(mu["train_loss"], rel=1e-6)
    for key in ("val_loss", "val_pair_accuracy", "val_reward_margin"):
        assert mk.get(key) == mu.get(key), key


@pytest.mark.slow
def test_ppo_ptx_killed_after_a_checkpoint_resumes_to_the_uninterrupted_weights(pair, ppo_ptx_done):
    k, u = pair
    assert ppo_ptx_done["left"] == ["update-2"]
    assert "resuming from" in ppo_ptx_done["rerun"] and "at update 3" in ppo_ptx_done["rerun"]
    assert_same_weights(k / "outputs" / "ppo_ptx", u / "outputs" / "ppo_ptx")
    mk, mu = metrics(k, "ppo_ptx"), metrics(u, "ppo_ptx")
    for key in ("final_kl", "final_reward", "heldout_lm_loss"):
        assert mk[key] == mu[key], key
    rows = curves(k, "ppo_ptx")
    assert rows == curves(u, "ppo_ptx")
    assert "ptx_loss" in rows[0] and all(float(r[rows[0].index("ptx_loss")]) > 0 for r in rows[1:])  # the mix is on


@pytest.mark.slow
def test_a_trainer_checkpoint_is_not_resumed_after_a_param_changed(pair, dpo_done):
    """Kill, change a param, rerun: the checkpoint of the old params is dropped and the run starts over."""
    k, _ = pair
    run(k, DPO, kill_at=4, expect=-signal.SIGKILL)
    assert (k / "outputs" / "checkpoints" / "dpo" / "checkpoint-4" / "rlhf_resume_key.json").exists()
    out = run(k, DPO + ["dpo.lr=2e-5"])
    assert "resuming from" not in out
    assert "checkpoint-4: params or data changed since it was written; deleting it" in out
    assert not (k / "outputs" / "checkpoints" / "dpo").exists()  # the new run finished and dropped its own


@pytest.mark.slow
def test_a_kill_during_registration_leaves_no_half_registered_version_and_the_alias_alone(pair, dpo_done):
    k, _ = pair
    latest = registry(k)["dpo-policy"]["versions"][-1][0]
    code = f"from mlflow import MlflowClient\nMlflowClient().set_registered_model_alias('dpo-policy', 'champion', '{latest}')\n"
    subprocess.run([str(BIN / "python"), "-c", code], cwd=k, env=env_for(k), check=True, capture_output=True)
    before = registry(k)
    # 1. killed after the model's files were logged, before the version: nothing registered
    out = run(k, DPO, point="register:logged", expect=-signal.SIGKILL)
    assert "RLHF_KILL_AT=register:logged: SIGKILL" in out
    assert registry(k) == before
    # 2. killed right after the version was created: it is complete (tags, files), no alias moved
    run(k, DPO, point="register:created", expect=-signal.SIGKILL)
    after = registry(k)
    assert after["dpo-policy"]["aliases"] == before["dpo-policy"]["aliases"] == {"champion": latest}
    new = [v for v in after["dpo-policy"]["versions"] if v not in before["dpo-policy"]["versions"]]
    assert len(new) == 1 and {n: r for n, r in after.items() if n != "dpo-policy"} == \
        {n: r for n, r in before.items() if n != "dpo-policy"}
    code = ("import json\n"
            "from mlflow import MlflowClient\n"
            "from components.core.config import load_config\n"
            "from components.core.registry import resolve_model\n"
            f"v = MlflowClient().get_model_version('dpo-policy', '{new[0][0]}')\n"
            f"print(json.dumps([str(resolve_model('models:/dpo-policy/{new[0][0]}', load_config())), v.tags]))\n")
    p = subprocess.run([str(BIN / "python"), "-c", code], cwd=k, env=env_for(k), text=True, capture_output=True)
    assert p.returncode == 0, p.stderr[-3000:]
    folder, tags = json.loads(p.stdout.strip().splitlines()[-1])
    assert (Path(folder) / "model.safetensors").exists() and (Path(folder) / "tokenizer.json").exists()
    assert {"git_commit", "data_version", "params_hash", "stage", "model_dir"} <= set(tags)
    # 3. the rerun finishes the stage: one more version, the alias still where the gate put it
    run(k, DPO + ["common.keep_versions=0"])  # (no pruning: the count of versions is the check)
    final = registry(k)
    assert len(final["dpo-policy"]["versions"]) == len(after["dpo-policy"]["versions"]) + 1
    assert final["dpo-policy"]["aliases"] == {"champion": latest}
    assert [r["status"] for r in stage_runs(k, "dpo")[-3:]] == ["FAILED", "FAILED", "FINISHED"]


@pytest.mark.slow
def test_a_failing_stage_leaves_earlier_versions_and_the_champion_alias_alone(pair, ppo_done):
    k, _ = pair
    code = ("from mlflow import MlflowClient\n"
            "c = MlflowClient()\n"
            "for a in ('champion', 'candidate'):\n"
            "    c.set_registered_model_alias('policy', a, '1')\n")
    subprocess.run([str(BIN / "python"), "-c", code], cwd=k, env=env_for(k), check=True, capture_output=True)
    before = registry(k)
    assert before["policy"]["aliases"] == {"champion": "1", "candidate": "1"}
    assert all(len(before[name]["versions"]) == 1 for name in REGISTERED)

    # 1. killed in the middle of training
    run(k, PPO, kill_at=2, expect=-signal.SIGKILL)
    assert registry(k) == before
    # 2. an error: the reward model it needs is missing
    (k / "outputs" / "reward").rename(k / "outputs" / "reward.away")
    try:
        out = run(k, PPO, expect=None)
    finally:
        (k / "outputs" / "reward.away").rename(k / "outputs" / "reward")
    assert "error: [ppo]" in out
    assert registry(k) == before
    # the champion's files are still there and load
    code = ("from components.core.config import load_config\n"
            "from components.core.registry import resolve_model\n"
            "print(resolve_model('models:/policy@champion', load_config()))\n")
    p = subprocess.run([str(BIN / "python"), "-c", code], cwd=k, env=env_for(k), text=True, capture_output=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (Path(p.stdout.strip().splitlines()[-1]) / "model.safetensors").exists()


def test_partly_written_trainer_checkpoint_is_not_resumed_from(tmp_path):
    from components.core.trainers import KEY_FILE, last_checkpoint

    key = {"stage": "sft", "params_hash": "p1", "data_version": "d1"}
    for step, complete in ((2, True), (4, True), (6, False)):  # a kill while checkpoint-6 was being written
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"")
        if complete:
            (d / "trainer_state.json").write_text("{}")
            (d / KEY_FILE).write_text(json.dumps(key))
    assert last_checkpoint(tmp_path) == last_checkpoint(tmp_path, key) == tmp_path / "checkpoint-4"
    (tmp_path / "checkpoint-4" / KEY_FILE).unlink()  # killed after Trainer's files, before the key: not resumed
    assert last_checkpoint(tmp_path, key) == tmp_path / "checkpoint-2"
    assert last_checkpoint(tmp_path / "absent") is None


@pytest.mark.parametrize("changed", ["params_hash", "data_version"])
def test_a_trainer_checkpoint_of_other_params_or_data_is_dropped_not_resumed(tmp_path, capsys, changed):
    from components.core.trainers import KEY_FILE, drop_stale_checkpoints, last_checkpoint

    run_key = {"stage": "dpo", "params_hash": "p1", "data_version": "d1"}
    for step, key in ((2, run_key), (4, {**run_key, changed: "other"}), (6, None)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "trainer_state.json").write_text("{}")
        if key:
            (d / KEY_FILE).write_text(json.dumps(key))
    assert last_checkpoint(tmp_path, run_key) == tmp_path / "checkpoint-2"
    assert drop_stale_checkpoints(tmp_path, run_key, "dpo") == [tmp_path / "checkpoint-4", tmp_path / "checkpoint-6"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]
    out = capsys.readouterr().out
    assert "checkpoint-4: params or data changed since it was written; deleting it" in out
    assert "checkpoint-6: it carries no resume key; deleting it" in out


def test_whole_run_loss_of_a_resumed_run():
    from types import SimpleNamespace

    from components.core.trainers import whole_run_loss

    # steps 1..6 with losses 6,5,4,3,2,1; logs at 2 (save), 4 (save) and 5 (logging_steps); killed after 4
    history = [{"loss": 5.5, "step": 2}, {"loss": 3.5, "step": 4}, {"loss": 2.0, "step": 5}, {"loss": 1.0, "step": 6}]
    resumed = SimpleNamespace(training_loss=1.5)  # Trainer's own: the mean of steps 5 and 6
    assert whole_run_loss(resumed, history, 4, 6, "sft") == pytest.approx(3.5)
    assert whole_run_loss(SimpleNamespace(training_loss=3.5), history, 0, 6, "sft") == 3.5  # not resumed: unchanged


# ---------------------------------------------------------------------------------------- retention
def test_retention_keeps_the_newest_and_every_aliased_version():
    vs = [(1, {"champion"}), (2, set()), (3, {"candidate"}), (4, set()), (5, set()), (6, set())]
    assert versions_to_prune(vs, keep=2) == [2, 4]
    assert versions_to_prune(vs, keep=1) == [2, 4, 5]
    assert versions_to_prune(vs, keep=6) == []
    assert versions_to_prune(vs, keep=0) == []  # 0: keep everything
    # an alias on an old version keeps it; the alias on the newest one does not add another
    assert versions_to_prune([(1, set()), (2, set()), (3, {"champion"})], keep=1) == [1, 2]
    assert versions_to_prune([], keep=3) == []


def test_registering_past_keep_versions_deletes_old_unaliased_versions_and_their_files(isolated_mlflow, tiny_model_dir,
                                                                                         tmp_path):
    import mlflow
    from mlflow import MlflowClient

    from components.core import tracking

    cfg = load_config(overrides=["common.experiment=test-retention", "common.keep_versions=2",
                                 f"common.outputs_dir={tmp_path / 'outputs'}"])
    tracking.setup(cfg)
    client = MlflowClient()
    sources = {}
    for i in range(1, 5):
        with tracking.stage_run(cfg, "base_model"):
            v = register_model(tiny_model_dir, cfg, "base_model", name="kept")
        sources[int(v.version)] = client.get_logged_model(v.source[len("models:/"):]).artifact_location
        if i == 1:
            client.set_registered_model_alias("kept", "champion", v.version)
            cached = resolve_model("models:/kept/1", cfg)
        if i == 2:
            cached = resolve_model("models:/kept/2", cfg)  # a local copy of v2 (rlhf sample does this)
    left = sorted(int(v.version) for v in client.search_model_versions("name='kept'"))
    assert left == [1, 3, 4]  # v1 holds champion; v3, v4 are the newest two
    assert str(client.get_model_version_by_alias("kept", "champion").version) == "1"

    def local(uri):
        from mlflow.utils.file_utils import local_file_uri_to_path

        return Path(local_file_uri_to_path(uri))

    assert not local(sources[2]).exists() and not cached.exists()  # v2's artifacts and local copy are gone
    assert all((local(sources[v]) / "model").is_dir() for v in (1, 3, 4))
    assert mlflow.pyfunc.load_model("models:/kept@champion") is not None


def test_temporary_folders_of_passing_tests_are_deleted_and_a_failing_tests_kept(tmp_path):
    """The project copies, stores and model folders the tests make (GBs for the pipeline tests) do not pile up
    in the system temporary directory: with the project's pytest settings (``tmp_path_retention_policy``) a
    passing test's folders go at once and a passing session's whole base folder at its end; a failing test's
    stay, for debugging."""
    (tmp_path / "test_inner.py").write_text(
        "import os, pytest\n"
        "@pytest.fixture(scope='module')\n"
        "def copy(tmp_path_factory):\n"
        "    d = tmp_path_factory.mktemp('copy')\n"
        "    (d / 'big.bin').write_bytes(b'x' * 2**20)\n"
        "    return d\n"
        "def test_passes(tmp_path, copy):\n"
        "    (tmp_path / 'weights.bin').write_bytes(b'x' * 2**20)\n"
        "def test_fails(tmp_path):\n"
        "    (tmp_path / 'weights.bin').write_bytes(b'x' * 2**20)\n"
        "    assert os.environ.get('INNER_FAIL') != '1'\n")
    root = tmp_path / "temproot"
    root.mkdir()

    def inner(fail: bool) -> list[Path]:
        env = {**os.environ, "PYTEST_DEBUG_TEMPROOT": str(root), "INNER_FAIL": "1" if fail else "0"}
        p = subprocess.run([str(BIN / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
                            str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")],
                           cwd=tmp_path, env=env, text=True, capture_output=True, timeout=300)
        assert p.returncode == (1 if fail else 0), p.stdout[-3000:] + p.stderr[-3000:]
        return sorted(f.relative_to(root) for f in root.rglob("*.bin"))

    assert inner(fail=False) == []
    kept = {f.parts[-2] for f in inner(fail=True)}  # a failing session keeps its fixtures' folders (copy0) too
    assert "test_fails0" in kept and "test_passes0" not in kept
