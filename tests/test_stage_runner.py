"""flows/stage_runner.py: a stage command forked from the warm interpreter behaves like `python -m`
(output, exit codes, signals, environment, working directory), other commands are refused, and `reproduce` leaves DVC exactly
where `dvc repro --single-item` would (lock written, outputs cached, `dvc status` clean)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows import stage_runner

DVC = str(Path(sys.executable).with_name("dvc"))
MODULE = '''
import os, sys
from pathlib import Path
print("argv", sys.argv[1:])
print("cwd", os.getcwd())
print("env", os.environ.get("STAGE_RUNNER_TEST"))
sys.stderr.write("bar:  50%|#    | 1/2\\rbar: 100%|##| 2/2\\n")
mode = sys.argv[1] if len(sys.argv) > 1 else "ok"
if mode == "write":
    Path("out").mkdir(exist_ok=True)
    Path("out/model.txt").write_text(os.environ.get("STAGE_RUNNER_TEST", ""))
elif mode == "exit3":
    sys.exit(3)
elif mode == "raise":
    raise ValueError("boom in the stage")
elif mode == "kill":
    import signal
    os.kill(os.getpid(), signal.SIGKILL)
'''


@pytest.fixture
def project(tmp_path):
    (tmp_path / "srmod.py").write_text(MODULE)
    return tmp_path


def run(project: Path, cmd: str, **env) -> tuple[int, list[str]]:
    lines: list[str] = []
    code = stage_runner.run_command(cmd, {**os.environ, **env}, project, lines.append)
    return code, lines


def test_python_module_commands_are_recognised_others_go_to_a_shell():
    assert stage_runner.python_module("python -m components.stages.ppo ppo_ptx") == ("components.stages.ppo", ["ppo_ptx"])
    assert stage_runner.python_module("python -m components.stages.sft") == ("components.stages.sft", [])
    assert stage_runner.python_module("python script.py") is None
    assert stage_runner.python_module("dvc repro && python -m x") is None


@pytest.mark.slow
def test_forked_stage_sees_args_cwd_env_and_streams_every_line(project):
    code, lines = run(project, "python -m srmod ok", STAGE_RUNNER_TEST="hello")
    assert code == 0
    assert lines[:3] == ["argv ['ok']", f"cwd {project}", "env hello"]
    assert lines[3:] == ["bar:  50%|#    | 1/2", "bar: 100%|##| 2/2"]  # "\r" ends a line, as tqdm redraws


@pytest.mark.slow
@pytest.mark.parametrize("mode, expected", [("exit3", 3), ("raise", 1), ("kill", -9)])
def test_exit_codes_match_python_dash_m(project, mode, expected):
    code, lines = run(project, f"python -m srmod {mode}")
    plain = subprocess.run([sys.executable, "-m", "srmod", mode], cwd=project, capture_output=True, text=True)
    assert code == expected == plain.returncode
    if mode == "raise":
        assert any("ValueError: boom in the stage" in line for line in lines)


@pytest.mark.slow
def test_other_commands_are_refused_not_given_to_a_shell(project):
    with pytest.raises(ValueError, match=r"'echo one && rm -rf x'.*python -m"):
        run(project, "echo one && rm -rf x")


@pytest.mark.slow
def test_reproduce_writes_the_lock_like_dvc_repro_then_skips_and_keeps_the_lock_on_failure(project):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    for cmd in (["git", "init", "-q"], [DVC, "init", "-q"]):
        subprocess.run(cmd, cwd=project, check=True, env=env)
    (project / "params.yaml").write_text("train:\n  mode: write\n")
    (project / "dvc.yaml").write_text("stages:\n  train:\n    cmd: python -m srmod ${train.mode}\n"
                                      "    deps: [srmod.py]\n    params: [train.mode]\n    outs: [out]\n")

    def runner(cmd):
        code, _ = run(project, cmd, STAGE_RUNNER_TEST="v1")
        if code:
            raise RuntimeError(f"exit {code}")

    assert stage_runner.reproduce(project, "train", runner) == "ran"
    assert (project / "out/model.txt").read_text() == "v1"
    status = subprocess.run([DVC, "status", "--json"], cwd=project, env=env, capture_output=True, text=True, check=True)
    assert json.loads(status.stdout) == {}
    lock = (project / "dvc.lock").read_text()
    assert "mode: write" in lock and "out" in lock
    assert stage_runner.reproduce(project, "train", runner) == "up to date (skipped)"

    (project / "params.yaml").write_text("train:\n  mode: exit3\n")
    with pytest.raises(RuntimeError, match="exit 3"):
        stage_runner.reproduce(project, "train", runner)
    assert (project / "dvc.lock").read_text() == lock  # the failed run records nothing
    assert not (project / "out").exists()  # its outputs were removed before it ran, as dvc repro does

    (project / "params.yaml").write_text("train:\n  mode: write\n")
    assert stage_runner.reproduce(project, "train", runner) == "restored from the DVC run cache"
    assert (project / "out/model.txt").read_text() == "v1" and (project / "dvc.lock").read_text() == lock
