"""Soak: the tiny pipeline (test profile) N times in a row in a temporary copy of the project, with
memory and disk measured after every iteration. Retention (``common.keep_versions``) must keep the
registry's model artifacts bounded; nothing else may grow but run history (MLflow's run records).

Each iteration runs every stage of dvc.yaml, in order, with ``dvc repro --force --single-item
<stage>`` (what the Prefect flow runs, forced, so that every stage trains and every registering stage
adds a model version). Measured per iteration: wall time; each stage's peak RSS (exact: the kernel's
maxrss of the stage's process tree, from wait4) and the peak sum over its process tree (sampled every
0.2 s); this driver's own RSS; bytes on disk under mlartifacts/ (models and run artifacts apart),
mlflow.db, .dvc/cache, outputs/ (checkpoints apart), and the number of registered versions.

    python benchmarks/soak.py                       # 10 iterations, keep_versions 2
    python benchmarks/soak.py --iterations 3 --keep-versions 1

Prints one line per iteration and writes benchmarks/results/soak.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def env_for(proj: Path) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(proj),
           "MLFLOW_TRACKING_URI": f"sqlite:///{proj / 'mlflow.db'}", "PYTHONUNBUFFERED": "1"}
    env.pop("RLHF_PARENT_RUN_ID", None)
    env.pop("RLHF_KILL_AFTER_CHECKPOINT", None)
    return env


def size(path: Path, exclude: Path | None = None) -> int:
    """Bytes of the regular files under path (apparent size), leaving out the subtree ``exclude``."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        if exclude is not None and Path(dirpath) == exclude.parent and exclude.name in dirnames:
            dirnames.remove(exclude.name)
        for name in filenames:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
    return total


def disk(proj: Path) -> dict[str, int]:
    art = proj / "mlartifacts"
    out = proj / "outputs"
    return {
        "mlartifacts_models": size(art / "models") if (art / "models").exists() else 0,
        "mlartifacts_runs": size(art, exclude=art / "models") if art.exists() else 0,
        "mlflow_db": size(proj / "mlflow.db") if (proj / "mlflow.db").exists() else 0,
        "dvc_cache": size(proj / ".dvc" / "cache") if (proj / ".dvc" / "cache").exists() else 0,
        "outputs": size(out, exclude=out / "checkpoints") if out.exists() else 0,
        "checkpoints": size(out / "checkpoints") if (out / "checkpoints").exists() else 0,
        "project_total": size(proj),
    }


def registry(proj: Path) -> dict[str, list[str]]:
    code = ("import json\n"
            "from mlflow import MlflowClient\n"
            "c = MlflowClient()\n"
            "print(json.dumps({m.name: sorted(str(v.version) for v in c.search_model_versions(f\"name='{m.name}'\"))\n"
            "                  for m in c.search_registered_models()}))\n")
    p = subprocess.run([str(BIN / "python"), "-c", code], cwd=proj, env=env_for(proj), text=True,
                       capture_output=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def run_measured(cmd: list[str], proj: Path, log: Path) -> dict:
    """Run cmd; its peak RSS (kernel maxrss of the largest process of its tree) and the peak sum of RSS
    over its tree (sampled every 0.2 s). Raises if it fails."""
    peak = {"tree": 0}
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=proj, env=env_for(proj), stdout=out, stderr=subprocess.STDOUT)
    done = threading.Event()

    def sample():
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            rss = []
            for p in procs:
                try:
                    rss.append(p.memory_info().rss)
                except psutil.NoSuchProcess:
                    continue
            peak["tree"] = max(peak["tree"], sum(rss))
            done.wait(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t0 = time.time()
    t.start()
    _, status, usage = os.wait4(proc.pid, 0)  # usage covers the reaped children too: ru_maxrss = largest process
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    t.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}; see {log}:\n" + log.read_text()[-4000:])
    return {"seconds": round(time.time() - t0, 1), "peak_rss_tree": peak["tree"], "peak_rss_process": usage.ru_maxrss * 1024}


def mb(n: int) -> float:
    return round(n / 2**20, 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--keep-versions", type=int, default=2, help="common.keep_versions in the copy")
    ap.add_argument("--workdir", default="", help="where the project copy goes (default: a new temp folder)")
    ap.add_argument("--keep-workdir", action="store_true", help="leave the copy (default: deleted at the end)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "soak.json"))
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    from components.core.config import set_params
    from components.core.procs import project_copy

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="rlhf-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    proj = project_copy(work / "project")
    set_params(proj / "params.yaml", ["common.profile=test", f"common.keep_versions={args.keep_versions}"])
    log = work / "soak.log"
    subprocess.run([str(BIN / "python"), "-m", "components.apps.cli", "data", "synth"], cwd=proj, env=env_for(proj),
                   check=True, capture_output=True)
    import yaml

    stages = list(yaml.safe_load((proj / "dvc.yaml").read_text())["stages"])
    me = psutil.Process()
    rows = []
    print(f"soak: {args.iterations} x `dvc repro --force --single-item` of {len(stages)} stages (test profile, "
          f"keep_versions {args.keep_versions}) in {proj}", flush=True)
    print("iter   s  peak tree MB  peak proc MB  driver MB  models MB  runs MB  db MB  dvc cache MB  outputs MB  ckpt MB  versions",
          flush=True)
    for i in range(1, args.iterations + 1):
        per_stage = {st: run_measured([str(BIN / "dvc"), "repro", "--force", "--single-item", st], proj, log)
                     for st in stages}
        m = {"seconds": round(sum(r["seconds"] for r in per_stage.values()), 1),
             "peak_rss_tree": max(r["peak_rss_tree"] for r in per_stage.values()),
             "peak_rss_process": max(r["peak_rss_process"] for r in per_stage.values())}
        d = disk(proj)
        reg = registry(proj)
        row = {"iteration": i, **m, "driver_rss": me.memory_info().rss, **d,
               "versions": reg, "n_versions": sum(len(v) for v in reg.values()),
               "stage_peak_rss_mb": {st: mb(r["peak_rss_process"]) for st, r in per_stage.items()},
               "stage_seconds": {st: r["seconds"] for st, r in per_stage.items()}}
        rows.append(row)
        print(f"{i:4d} {m['seconds']:5.0f} {mb(m['peak_rss_tree']):13.0f} {mb(m['peak_rss_process']):13.0f} "
              f"{mb(row['driver_rss']):10.0f} {mb(d['mlartifacts_models']):10.1f} {mb(d['mlartifacts_runs']):8.2f} "
              f"{mb(d['mlflow_db']):6.2f} {mb(d['dvc_cache']):13.1f} {mb(d['outputs']):11.1f} {mb(d['checkpoints']):8.1f}"
              f"  {row['n_versions']}", flush=True)
        print("     peak RSS MB per stage: " + ", ".join(f"{st} {v:.0f}" for st, v in row["stage_peak_rss_mb"].items()),
              flush=True)

    def growth(key: str) -> int:
        # from the first iteration after which retention deletes (iteration keep_versions + 1) to the last
        steady = rows[min(len(rows) - 1, args.keep_versions)]
        return rows[-1][key] - steady[key]

    result = {
        "date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(), "iterations": args.iterations, "keep_versions": args.keep_versions,
        "command": "dvc repro --force --single-item <stage>, every stage in order (test profile)", "rows": rows,
        "growth_after_steady_state_bytes": {k: growth(k) for k in
                                            ("mlartifacts_models", "mlartifacts_runs", "mlflow_db", "dvc_cache",
                                             "outputs", "checkpoints", "project_total")} if rows else {},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}; log {log}")
    if not args.keep_workdir:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
