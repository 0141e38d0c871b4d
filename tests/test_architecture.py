"""The layout's rules hold: the import contract (and it catches a violation), dvc.yaml's code deps
are what each stage imports, each stage reads only what dvc.yaml declares, the flow body names every
stage in order, and names or defaults are written in one place."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components.core import codedeps, pipeline
from components.core.config import ROOT, load_config
from components.core.errors import ConfigError
from components.core.stage import stage_config

LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, text=True, capture_output=True, timeout=300)


def test_the_layering_contract_holds():
    p = lint(ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Contracts: 4 kept, 0 broken." in p.stdout, p.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("components/core/models.py", "from components.stages import sft", "Layers"),            # core -> stage
    ("components/maths/stats.py", "from components.core import config", "Layers"),           # maths -> core
    ("components/stages/evaluate.py", "from components.stages import ppo", "never imports"), # stage -> stage
    ("components/maths/stats.py", "import numpy", "torch and the standard library"),          # maths -> numpy
    ("components/core/errors.py", "from components.core import config", "No import cycles"),  # config <-> errors
])
def test_a_deliberate_violation_breaks_the_contract(tmp_path, module, line, contract):
    for part in ("components", "flows", "pyproject.toml"):
        src = ROOT / part
        (shutil.copytree(src, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir()
         else shutil.copy(src, tmp_path / part))
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # deliberately against the contract\n")
    p = lint(tmp_path)
    assert p.returncode != 0, p.stdout
    broken = p.stdout.split("Broken contracts")[-1]
    assert contract in broken, p.stdout


def test_dvc_yaml_code_deps_are_what_each_stage_imports():
    for stage in pipeline.stages():
        want = codedeps.code_deps(codedeps.stage_module(stage))
        assert codedeps.declared_code_deps(stage) == want, (
            f"dvc.yaml stage {stage}: code deps differ from its imports; run `python -m components.core.codedeps --write`")


def test_code_deps_follow_imports_transitively_and_declared_data_dirs():
    deps = codedeps.code_deps("components.stages.evaluate")
    assert "components/stages/evaluate.py" in deps and "components/core/scoring.py" in deps
    assert "components/maths/ppo_losses.py" in deps  # evaluate -> core.scoring -> maths.ppo_losses (ptx_loss)
    assert "components/datasets/evalsets" in deps and "components/core/hf_metrics/squad_em_f1" in deps  # DATA_DIRS
    assert "components/stages/ppo.py" not in deps and "components/__init__.py" not in deps  # docstring-only package
    assert "components/datasets/synth.py" not in codedeps.code_deps("components.stages.sft")


def test_a_stage_reads_only_the_params_dvc_yaml_declares():
    cfg = stage_config(load_config(), "promote")  # params: common.profile, evaluate.reference, promote
    assert cfg.promote.min_win_rate == 0.5 and cfg.evaluate.reference == "sft" and cfg.common.profile == "default"
    assert cfg.out_dir("promote") == ROOT / "outputs" / "promote"  # paths are not params
    with pytest.raises(ConfigError, match=r"stage 'promote' reads params section 'ppo', which its params in dvc.yaml"):
        cfg.ppo
    with pytest.raises(ConfigError, match=r"stage 'promote' reads evaluate.models"):
        cfg.evaluate.models
    with pytest.raises(ConfigError, match=r"stage 'promote' reads common.seed"):
        cfg.common.seed
    sft = stage_config(load_config(), "sft")
    assert sft.sft.lr == 1e-4 and sft.common.seed == 0
    with pytest.raises(ConfigError, match="reads params section 'base_model'"):
        sft.base_model


def test_every_stage_is_one_module_with_run_and_a_main_that_calls_stage_main():
    for stage in pipeline.stages():
        module = codedeps.stage_module(stage)
        assert module == f"components.stages.{'ppo' if stage == 'ppo_ptx' else stage}", (stage, module)
        tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == "run" for n in tree.body), stage
        main = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
        assert main and "stage_main(" in ast.unparse(main[0]), stage


def test_the_flow_body_names_every_stage_in_dvc_yaml_order():
    tree = ast.parse((ROOT / "flows" / "rlhf.py").read_text())
    flow = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "rlhf_pipeline")
    steps = [c.args[0].value for c in ast.walk(flow)
             if isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id == "step"]
    assert steps == pipeline.stages()


def test_registered_model_names_are_written_only_in_the_registry_table():
    """Stages, core and flows take registered names from core.registry.MODELS (the apps' documented
    default, models:/policy@champion, is a user-facing example). Checked on the names no other word
    spells (a plain 'policy' is also a state-dict key)."""
    from components.core.registry import MODELS

    names = {m.registered for m in MODELS.values() if m.registered and "-" in m.registered}
    assert names == {"reward-model", "dpo-policy", "policy-ptx"}
    files = [f for part in ("stages", "core", "maths", "datasets") for f in (ROOT / "components" / part).rglob("*.py")]
    for f in sorted(files) + sorted((ROOT / "flows").glob("*.py")):
        if f.name == "registry.py":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                uri = node.value.startswith("models:/") and node.value != "models:/"  # a registry URI with a name
                assert node.value not in names and not uri, f"{f.relative_to(ROOT)}: {node.value!r} (use core.registry)"
