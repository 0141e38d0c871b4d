"""The whole pipeline on real rankings: a slice of the shared oasst2 trees, imported with `rlhf data import`
(every file the pipeline needs), run by the flow on the tiny model; the gate says why it cannot promote."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import conftest
import pytest
from test_pipeline import FLOW, sh  # the flow under Prefect's test harness; the project's Python in a copy

from components.core.config import set_params
from components.core.procs import project_copy

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def test_the_pipeline_runs_on_imported_oasst_rankings_and_the_gate_says_why_it_cannot_promote(tmp_path):
    src = conftest.shared_file("oasst2", "oasst2_filtered.jsonl")
    proj = project_copy(tmp_path / "project")
    # the test profile, with room for real (long) conversations
    set_params(proj / "params.yaml", ["common.profile=test", "sft.max_length=256", "reward.max_length=256",
                                      "dpo.max_length=256"])
    out = sh([str(BIN / "rlhf"), "data", "import", "oasst", str(src), "--out", "data", "--force", "--limit", "80"],
             proj).stdout
    for name in ("comparisons", "demonstrations", "prompts", "pretrain"):
        assert f"data/{name}.jsonl" in out, out
    run = sh([str(BIN / "python"), "-c", FLOW], proj, timeout=1500)
    status = {l.split()[1]: l.split()[2] for l in run.stdout.splitlines() if l.startswith("RESULT")}
    assert list(status) == ["validate", "base_model", "sft", "rank", "reward", "dpo", "ppo", "ppo_ptx", "evaluate",
                            "promote"] and set(status.values()) == {"ran"}, run.stdout
    rank = json.loads((proj / "metrics" / "rank.json").read_text())
    # no gold reward for real prompts: the simulated labeler ranks nothing, and says so
    assert rank["items"] == 0 and rank["prompts_without_gold"] > 0, rank
    reward = json.loads((proj / "metrics" / "reward.json").read_text())
    # the reward model trained on the human rankings alone, none on-policy, no corruption
    assert reward["n_train_human"] > 0 and reward["n_train"] == reward["n_train_human"], reward
    report = (proj / "outputs" / "promote" / "report.md").read_text()
    assert "no preference measure for both models" in report and "evaluate.judge" in report, report
    table = (proj / "outputs" / "evaluate" / "alignment_tax.md").read_text()
    assert "gold reward" not in table and "TruthfulQA MC1" in table, table
