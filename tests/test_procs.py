"""core.procs.project_copy: a test's project is what a fresh clone holds, even after `rlhf run`."""

import subprocess

from components.core.procs import project_copy


def git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_a_copy_leaves_out_an_earlier_runs_metrics_plots_and_lock_but_keeps_work_in_progress(tmp_path):
    src = tmp_path / "src"
    (src / "metrics").mkdir(parents=True)
    (src / "plots" / "ppo").mkdir(parents=True)
    (src / "code.py").write_text("x = 1\n")
    (src / ".gitignore").write_text("/outputs/\n")
    git(src, "init", "-q")
    git(src, "add", "-A")
    git(src, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "c")
    (src / "new.py").write_text("y = 2\n")            # untracked work in progress: copied
    (src / "metrics" / "sft.json").write_text("{}")   # a run's records: not copied
    (src / "plots" / "ppo" / "curves.csv").write_text("update\n")
    (src / "dvc.lock").write_text("schema: '2.0'\n")
    (src / "outputs").mkdir()
    (src / "outputs" / "model.bin").write_text("w")   # ignored: not copied
    dest = project_copy(tmp_path / "dest", src)
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file() and ".git" not in p.parts)
    assert got == [".gitignore", "code.py", "new.py"]
