"""Orchestration overhead: the tiny pipeline (profile `test`) through the Prefect flow vs the same
component functions called directly, each in a fresh copy of the project, one after the other.

  direct        one Python process calls each stage's entry point (tracking.stage_main) in turn
  processes     `python -m components.<stage>` per stage, what dvc.yaml runs, without DVC
  dvc repro     the whole dvc.yaml, no Prefect
  flow          `rlhf run` against a Prefect server started beforehand (its start-up reported apart);
                its per-stage seconds (the table it prints) against the direct calls' per-stage seconds
  flow, cached  `rlhf run` again: every stage comes from the Prefect cache
  dvc no-op     `dvc repro` once everything is up to date

    .venv/bin/python benchmarks/orchestration_overhead.py [--profile test] [--out benchmarks/results/orchestration_overhead.json]

Run it on an idle machine: the variants run one after the other, so load from elsewhere skews them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.core.config import set_params# noqa: E402
from components.core.procs import project_copy# noqa: E402
from flows.rlhf import STAGES# noqa: E402

BIN = Path(sys.executable).parent
MAKE_DATA = "from components.datasets.synth import ensure_data\nfrom components.core.config import load_config\nensure_data(load_config())"
DIRECT = ("import sys, time, json, importlib\n"
          "from components.datasets.synth import ensure_data\n"
          "from components.core.config import load_config\n"
          "from components.core.env import set_offline_env\n"
          "from components.core.stage import stage_main\n"
          "set_offline_env()\n"
          "t0 = time.time(); ensure_data(load_config()); out = {'data': time.time() - t0}\n"
          "for stage in sys.argv[1:]:\n"
          "    t = time.time()\n"
          "    if stage in ('ppo', 'ppo_ptx'):  # one module, two stages (dvc.yaml: python -m components.stages.ppo <stage>)\n"
          "        from components.stages import ppo\n"
          "        stage_main(stage, lambda cfg, s=stage: ppo.run(cfg, s), argv=[])\n"
          "    else:\n"
          "        stage_main(stage, importlib.import_module(f'components.stages.{stage}').run, argv=[])\n"
          "    out[stage] = time.time() - t\n"
          "print('TIMES ' + json.dumps(out))\n")


def flow_stage_seconds(out: str) -> dict[str, float]:
    """Each stage's seconds from the table `rlhf run` prints at its end (stage, status, seconds)."""
    found = re.findall(r"\b(" + "|".join(STAGES) + r")\s+(?:ran|[a-z]+ \([a-z ]+\)|restored from the DVC run cache)"
                       r"\s+([\d.]+)\s*$", out, flags=re.M)
    return {stage: float(sec) for stage, sec in found}


def env_for(proj: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(proj),
           "MLFLOW_TRACKING_URI": f"sqlite:///{proj / 'mlflow.db'}", **(extra or {})}
    env.pop("RLHF_PARENT_RUN_ID", None)
    return env


def timed(cmd: list[str], proj: Path, env: dict[str, str]) -> tuple[float, str]:
    t0 = time.time()
    p = subprocess.run(cmd, cwd=proj, env=env, text=True, capture_output=True)
    seconds = time.time() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {proj} (exit {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return seconds, p.stdout + p.stderr


def fresh(tmp: Path, name: str, profile: str) -> Path:
    proj = project_copy(tmp / name)
    set_params(proj / "params.yaml", [f"common.profile={profile}"])
    return proj


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="test")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "orchestration_overhead.json"))
    args = ap.parse_args()
    from flows.schedule import prefect_server

    res: dict = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                 "profile": args.profile, "stages": list(STAGES)}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        proj = fresh(tmp, "direct", args.profile)
        seconds, out = timed([str(BIN / "python"), "-c", DIRECT, *STAGES], proj, env_for(proj))
        res["direct_s"] = round(seconds, 1)
        res["direct_per_stage_s"] = {k: round(v, 1) for k, v in
                                     json.loads(out.split("TIMES ", 1)[1].splitlines()[0]).items()}
        print(f"direct (one process):           {seconds:7.1f} s", flush=True)

        proj = fresh(tmp, "processes", args.profile)
        t0 = time.time()
        timed([str(BIN / "python"), "-c", MAKE_DATA], proj, env_for(proj))
        for stage in STAGES:  # the cmd of each dvc.yaml stage
            module = ["components.stages.ppo", stage] if stage in ("ppo", "ppo_ptx") else [f"components.stages.{stage}"]
            timed([str(BIN / "python"), "-m", *module], proj, env_for(proj))
        res["processes_s"] = round(time.time() - t0, 1)
        print(f"python -m per stage:            {res['processes_s']:7.1f} s", flush=True)

        proj = fresh(tmp, "dvc", args.profile)
        t0 = time.time()
        timed([str(BIN / "python"), "-c", MAKE_DATA], proj, env_for(proj))
        timed([str(BIN / "dvc"), "repro"], proj, env_for(proj))
        res["dvc_repro_s"] = round(time.time() - t0, 1)
        print(f"dvc repro:                      {res['dvc_repro_s']:7.1f} s", flush=True)
        res["dvc_noop_s"] = round(timed([str(BIN / "dvc"), "repro"], proj, env_for(proj))[0], 2)
        print(f"dvc repro, no-op:               {res['dvc_noop_s']:7.2f} s", flush=True)

        proj = fresh(tmp, "flow", args.profile)
        home = {"PREFECT_HOME": str(tmp / "prefect")}
        os.environ.update(home)
        os.environ.pop("PREFECT_API_URL", None)
        t0 = time.time()
        with prefect_server() as api:
            res["prefect_server_start_s"] = round(time.time() - t0, 1)
            env = env_for(proj, {**home, "PREFECT_API_URL": api})
            seconds, out = timed([str(BIN / "rlhf"), "run"], proj, env)
            res["flow_s"] = round(seconds, 1)
            res["flow_per_stage_s"] = flow_stage_seconds(out)
            print(f"rlhf run (Prefect flow):        {seconds:7.1f} s  (+ server start {res['prefect_server_start_s']} s)",
                  flush=True)
            seconds, out = timed([str(BIN / "rlhf"), "run"], proj, env)
            res["flow_cached_s"] = round(seconds, 1)
            res["flow_cached_all"] = out.count("cached (inputs unchanged)") >= len(STAGES)
            print(f"rlhf run again (all cached):    {seconds:7.1f} s", flush=True)
    res["overhead_vs_direct"] = round(res["flow_s"] / res["direct_s"] - 1, 3)
    # where it goes: inside the stages (sum of the flow's stage times vs the direct calls') and
    # around them (the rest of the flow's wall time: CLI and Prefect start, MLflow parent run, DVC)
    flow_stages = sum(res["flow_per_stage_s"].values())
    direct_stages = sum(v for k, v in res["direct_per_stage_s"].items() if k != "data")
    res["stage_overhead_vs_direct"] = round(flow_stages / direct_stages - 1, 3)
    res["flow_outside_stages_s"] = round(res["flow_s"] - flow_stages, 1)
    res["direct_outside_stages_s"] = round(res["direct_s"] - direct_stages, 1)
    res["overhead_vs_processes"] = round(res["flow_s"] / res["processes_s"] - 1, 3)
    print(f"stages inside the flow vs called directly: {100 * res['stage_overhead_vs_direct']:.1f} %; outside the "
          f"stages: flow {res['flow_outside_stages_s']} s, direct {res['direct_outside_stages_s']} s")
    print(f"flow overhead vs direct calls: {100 * res['overhead_vs_direct']:.1f} %; "
          f"vs one process per stage: {100 * res['overhead_vs_processes']:.1f} %")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
