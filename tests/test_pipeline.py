"""End to end on the test profile, in a temporary copy of the repository: the Prefect flow
(under prefect_test_harness) runs every stage through DVC; afterwards `dvc status` is clean,
the registry holds the models, a rerun skips every stage, and a changed param re-runs only
what depends on it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components.core.config import set_params
from components.core.procs import project_copy
from flows.rlhf import STAGES

pytestmark = pytest.mark.slow  # whole pipelines, processes or servers: the full tier (make test)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def sh(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(cwd),
           "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}
    env.pop("RLHF_PARENT_RUN_ID", None)
    p = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}\n--- stdout\n{p.stdout[-4000:]}\n--- stderr\n{p.stderr[-4000:]}")
    return p


FLOW = ("from prefect.testing.utilities import prefect_test_harness\n"
        "from flows.rlhf import rlhf_pipeline\n"
        "with prefect_test_harness(server_startup_timeout=120):\n"
        "    for r in rlhf_pipeline():\n"
        "        print('RESULT', r['stage'], r['status'])\n")


def py_json(proj: Path, code: str):
    """Run ``code`` with the project's Python in ``proj``; its last output line, parsed as JSON."""
    return json.loads(sh([str(BIN / "python"), "-c", code], proj).stdout.strip().splitlines()[-1])


def data_md5(proj: Path) -> str:
    """The data version: the md5 that ``data.dvc`` records."""
    return (proj / "data.dvc").read_text().split("md5: ")[1].split()[0]


def flow_statuses(stdout: str) -> dict[str, str]:
    return {l.split(None, 2)[1]: l.split(None, 2)[2] for l in stdout.splitlines() if l.startswith("RESULT")}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    proj = project_copy(tmp_path_factory.mktemp("project"))
    # + one lm-evaluation-harness task (local, offline) on 4 documents: the harness's path through the stage
    set_params(proj / "params.yaml", ["common.profile=test", "evaluate.lm_eval_tasks=[rlhf_truthfulqa_mc1]",
                                      "evaluate.lm_eval_limit=4"])
    first = sh([str(BIN / "python"), "-c", FLOW], proj)
    return proj, first


def test_flow_runs_every_stage_and_leaves_dvc_clean(project):
    proj, first = project
    ran = [l.split()[1] for l in first.stdout.splitlines() if l.startswith("RESULT") and l.endswith(" ran")]
    assert ran == ["validate", "base_model", "sft", "rank", "reward", "dpo", "ppo", "ppo_ptx", "evaluate", "promote"]
    logs = first.stdout + first.stderr  # the flow's prints go through Prefect's logger (log_prints)
    assert "Validation report:" in logs and "outputs/validate/report.html" in logs
    for stage in ("base_model", "sft", "reward", "dpo", "ppo", "ppo_ptx"):
        assert (proj / "outputs" / stage / "model.safetensors").exists()
    assert (proj / "plots" / "ppo_ptx" / "curves.csv").read_text().startswith("update,reward,")
    assert (proj / "plots" / "reward" / "collapse.png").exists()
    table = (proj / "outputs" / "evaluate" / "alignment_tax.md").read_text()
    assert "| metric | base | sft | dpo | ppo | ppo_ptx |" in table and "TruthfulQA MC1" in table, table
    assert "| lm-eval rlhf_truthfulqa_mc1_acc ↑ |" in table and " ± " in table, table
    assert (proj / "plots" / "evaluate" / "models.png").exists()
    assert "Promotion gate: policy v1" in (proj / "outputs" / "promote" / "report.md").read_text()
    status = sh([str(BIN / "dvc"), "status"], proj).stdout
    assert "Data and pipelines are up to date" in status, status


def test_promotion_sets_candidate_and_records_the_verdict(project):
    proj, _ = project
    code = ("import json\n"
            "from mlflow import MlflowClient\n"
            "c = MlflowClient()\n"
            "v = c.get_model_version_by_alias('policy', 'candidate')\n"
            "try:\n"
            "    champ = str(c.get_model_version_by_alias('policy', 'champion').version)\n"
            "except Exception:\n"
            "    champ = None\n"
            "runs = c.search_runs([c.get_experiment_by_name('rlhf').experiment_id], \"tags.evaluated_model = 'ppo'\")\n"
            "print(json.dumps([str(v.version), v.tags.get('promotion'), champ, len(runs)]))\n")
    version, verdict, champion, eval_runs = py_json(proj, code)
    promoted = json.loads((proj / "metrics" / "promote.json").read_text())["promoted"]
    assert version == "1" and eval_runs == 1
    assert (verdict == "champion" and champion == "1") if promoted else (verdict.startswith("rejected: ") and champion is None)
    # the verdict is the gate's, recomputed here from the evaluation files and the params
    from components.core.config import load_config
    from components.stages.promote import gate

    cand, ref = (json.loads((proj / "outputs" / "evaluate" / f"{m}.json").read_text()) for m in ("ppo", "sft"))
    cfg = load_config(proj / "params.yaml")
    # the test profile holds out RL prompts (data.n_eval_prompts 8): the win rate is measured, on
    # evaluate.win_rate_prompts (4) of them
    assert cand["preference_n"] == cfg.evaluate.win_rate_prompts == 4
    checks = gate(cand, ref, cfg.promote)
    assert promoted == all(ok for _, ok, _ in checks)
    if not promoted:
        assert verdict == "rejected: " + "; ".join(why for _, ok, why in checks if not ok)


def test_models_are_registered_with_lineage_under_one_parent_run(project):
    proj, _ = project
    code = ("import mlflow, json\n"
            "from mlflow import MlflowClient\n"
            "c = MlflowClient()\n"
            "out = {}\n"
            "for name in ('sft', 'reward-model', 'dpo-policy', 'policy', 'policy-ptx'):\n"
            "    v = c.search_model_versions(f\"name='{name}'\")[0]\n"
            "    run = c.get_run(v.run_id)\n"
            "    out[name] = [v.tags.get('data_version'), v.tags.get('params_hash'), run.data.tags.get('mlflow.parentRunId')]\n"
            "print(json.dumps(out))\n")
    got = py_json(proj, code)
    md5 = data_md5(proj)
    parents = {v[2] for v in got.values()}
    assert len(parents) == 1 and None not in parents  # nested under the pipeline's parent run
    assert all(v[0] == md5 and v[1] for v in got.values())


def changed_stages(proj: Path) -> set[str]:
    """The stages `dvc status` lists as changed."""
    import re

    return set(re.findall(r"^(\w+):$", sh([str(BIN / "dvc"), "status"], proj).stdout, re.M))


def test_an_edit_to_shared_code_reruns_exactly_the_stages_that_import_it(project):
    """dvc.yaml's code deps are what each stage imports, so DVC (and the flow's cache key, the same
    deps) sees an edit to any module a stage runs: the stages importing it, and none other."""
    proj, _ = project
    assert changed_stages(proj) == set()
    for module, stages in (("components/core/scoring.py", {"reward", "ppo", "ppo_ptx", "evaluate"}),
                           ("components/datasets/synth.py",  # gold_reward, the simulated labeler
                            {"rank", "reward", "dpo", "ppo", "ppo_ptx", "evaluate"}),
                           ("components/core/encode.py", set(STAGES))):  # validate: the control-token check
        path = proj / module
        before = path.read_text()
        path.write_text(before + "\n# an edit\n")
        try:
            assert changed_stages(proj) == stages, module
        finally:
            path.write_text(before)
    assert changed_stages(proj) == set()


def test_deleted_outputs_are_restored_not_trusted_to_the_cache(project):
    """A stage whose outputs were deleted, inputs unchanged, is not skipped by the Prefect cache:
    DVC says it changed, the flow refreshes its cache entry and the stage's outputs come back from
    DVC's run cache (its own run, not a retrain); what depends on them, their bytes back, stays cached."""
    proj, _ = project
    shutil.rmtree(proj / "outputs" / "dpo")
    assert changed_stages(proj) == {"dpo", "evaluate"}  # dpo's out is gone, and it is a dep of evaluate
    statuses = flow_statuses(sh([str(BIN / "python"), "-c", FLOW], proj).stdout)
    assert statuses["dpo"] == "restored from the DVC run cache", statuses
    assert all(v == "cached (inputs unchanged)" for k, v in statuses.items() if k != "dpo"), statuses
    assert (proj / "outputs" / "dpo" / "model.safetensors").exists()
    assert changed_stages(proj) == set()


def test_blind_ab_judgements_rerun_only_validate_and_promote(project):
    """`rlhf label --compare` judgements of the candidate vs SFT go to data/ (versioned with `--commit`), but
    they train nothing: the next run reruns validate (the data changed, its report did not) and promote,
    which reads them; every training stage stays cached."""
    proj, _ = project
    rlhf = str(BIN / "rlhf")
    out = sh([rlhf, "label", "--compare", "models:/policy@candidate", "models:/sft/1", "--simulated",
              "-S", "label.ab_prompts=8"], proj).stdout
    assert "models:/policy/1 vs models:/sft/1: win rate of A" in out, out
    sh([rlhf, "label", "--commit"], proj)
    assert changed_stages(proj) == {"validate", "promote"}
    statuses = flow_statuses(sh([str(BIN / "python"), "-c", FLOW], proj).stdout)
    assert statuses["validate"] == statuses["promote"] == "ran", statuses
    assert all(v == "cached (inputs unchanged)" for k, v in statuses.items() if k not in ("validate", "promote")), statuses
    report = json.loads((proj / "outputs" / "promote" / "judgements" / "report.json").read_text())
    assert report["success"] and report["files"]["judgements.jsonl"]["records"] >= 1  # the gate read them
    assert changed_stages(proj) == set()


def test_rerun_is_cached_and_a_param_change_reruns_only_dependents(project):
    proj, _ = project
    again = sh([str(BIN / "python"), "-c", FLOW], proj).stdout
    statuses = flow_statuses(again)
    assert list(statuses) == list(STAGES) and set(statuses.values()) == {"cached (inputs unchanged)"}, again
    repro = sh([str(BIN / "dvc"), "repro"], proj).stdout
    assert "Data and pipelines are up to date" in repro, repro  # plain `dvc repro` is a no-op too
    set_params(proj / "params.yaml", ["dpo.beta=0.2"])
    status = sh([str(BIN / "dvc"), "status"], proj).stdout
    assert "dpo:" in status and "sft:" not in status and "reward:" not in status, status
    assert "ppo:" not in status and "ppo_ptx:" not in status, status
    third = flow_statuses(sh([str(BIN / "python"), "-c", FLOW], proj).stdout)  # the Prefect cache agrees with DVC
    assert third["dpo"] == third["evaluate"] == "ran", third
    assert all(third[s] == "cached (inputs unchanged)" for s in STAGES[:4] + ("ppo", "ppo_ptx")), third
    set_params(proj / "params.yaml", ["ppo.kl_coef=0.02"])  # both RL variants read the ppo section
    status = sh([str(BIN / "dvc"), "status"], proj).stdout
    assert "ppo:" in status and "ppo_ptx:" in status and "reward:" not in status, status


def final_gold(proj: Path) -> float:
    """The simulated labeler's gold reward of the PPO rollouts at the last update (plots/ppo/curves.csv)."""
    import csv

    rows = list(csv.DictReader((proj / "plots" / "ppo" / "curves.csv").open()))
    return float(rows[-1]["gold_reward"])


def test_feedback_loop_second_iteration_trains_on_the_new_rankings(project):
    """InstructGPT's loop, unattended: the candidate answers the RL prompts (K = 4), the simulated
    labeler ranks them through the labeling path, the gate validates and `dvc add`s the grown data,
    and the next run retrains reward model and policy on it; gold reward reported per iteration."""
    proj, _ = project
    rlhf = str(BIN / "rlhf")
    gold_1 = final_gold(proj)
    n_before = len((proj / "data" / "comparisons.jsonl").read_text().splitlines())
    sh([rlhf, "sample", "--model", "models:/policy@candidate", "--prompts", "data/prompts.jsonl", "--k", "4"], proj)
    sh([rlhf, "label", "--simulated"], proj)
    sh([rlhf, "label", "--commit"], proj)
    n_after = len((proj / "data" / "comparisons.jsonl").read_text().splitlines())
    assert n_after > n_before
    second = sh([str(BIN / "python"), "-c", FLOW], proj).stdout
    ran = [l.split()[1] for l in second.splitlines() if l.startswith("RESULT") and l.endswith(" ran")]
    assert {"validate", "reward", "ppo", "evaluate", "promote"} <= set(ran), second
    gold_2 = final_gold(proj)
    assert 0 <= gold_1 <= 1 and 0 <= gold_2 <= 1
    print(f"gold reward of the PPO rollouts at the last update: iteration 1 {gold_1:.3f}, iteration 2 {gold_2:.3f}")
    code = ("import json\n"
            "from mlflow import MlflowClient\n"
            "c = MlflowClient()\n"
            "vs = sorted(c.search_model_versions(\"name='reward-model'\"), key=lambda v: int(v.version))\n"
            "print(json.dumps([v.tags.get('data_version') for v in vs]))\n")
    versions = py_json(proj, code)
    md5 = data_md5(proj)
    assert len(versions) == 2 and versions[0] != versions[1] and versions[1] == md5  # two iterations, two data versions
    assert "Data and pipelines are up to date" in sh([str(BIN / "dvc"), "status"], proj).stdout


def test_two_runs_at_once_queue_on_the_project_lock(project, tmp_path):
    """Two `rlhf run -S ppo.kl_coef=...` started together in one project: the second waits on the
    project lock (flows.rlhf.project_lock), so neither edits params.yaml, outputs/ or the registry
    under the other; each pipeline run trains and registers with its own params."""
    proj, _ = project
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(proj),
           "MLFLOW_TRACKING_URI": f"sqlite:///{proj / 'mlflow.db'}", "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("RLHF_PARENT_RUN_ID", None)
    values = ("0.011", "0.012")
    procs = [subprocess.Popen([str(BIN / "rlhf"), "run", "-S", f"ppo.kl_coef={v}"], cwd=proj, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for v in values]
    outs = [p.communicate(timeout=1200)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n=====\n".join(o[-3000:] for o in outs)
    waited = [i for i, o in enumerate(outs) if "waiting for it to finish" in o]
    assert len(waited) == 1, outs
    second = values[waited[0]]
    assert f"kl_coef: {second}" in (proj / "params.yaml").read_text()  # the run that went second edited last
    code = ("import json\n"
            "from mlflow import MlflowClient\n"
            "c = MlflowClient()\n"
            "exp = c.get_experiment_by_name('rlhf').experiment_id\n"
            "out = []\n"
            "for p in c.search_runs([exp], \"tags.stage = 'pipeline'\", order_by=['start_time DESC'], max_results=2):\n"
            "    kids = c.search_runs([exp], f\"tags.mlflow.parentRunId = '{p.info.run_id}'\")\n"
            "    ppo = [k for k in kids if k.data.tags.get('stage') == 'ppo']\n"
            "    versions = [v.version for v in c.search_model_versions(\"name='policy'\") if ppo and v.run_id == ppo[0].info.run_id]\n"
            "    out.append([p.data.params['ppo.kl_coef'], ppo[0].data.params['ppo.kl_coef'] if ppo else None, versions])\n"
            "print(json.dumps(out))\n")
    runs = py_json(proj, code)
    assert sorted(r[0] for r in runs) == list(values), runs
    for parent_kl, stage_kl, versions in runs:  # each stage saw its own run's params and registered one version
        assert stage_kl == parent_kl and len(versions) == 1, runs
    assert runs[0][2] != runs[1][2], runs
    assert "Data and pipelines are up to date" in sh([str(BIN / "dvc"), "status"], proj).stdout
