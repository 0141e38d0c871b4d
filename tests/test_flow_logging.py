from flows.rlhf import _worth_logging


def test_progress_bars_are_logged_per_decile_other_lines_always():
    shown: dict[str, int] = {}
    lines = ["reward:   0%|          | 0/60 [00:00<?, ?step/s]", "reward:   5%|▌         | 3/60",
             "reward:  10%|█         | 6/60", "reward:  11%|█         | 7/60", "[reward] warning: 3 truncated",
             "Tokenizing train dataset:  50%|█████ | 5/10", "reward: 100%|██████████| 60/60", "reward: 100%|█| 60/60"]
    assert [_worth_logging(line, shown) for line in lines] == [True, False, True, False, True, True, True, False]


def test_project_lock_refuses_or_queues_a_second_run(tmp_path, monkeypatch):
    """A second run in the same project fails at once naming the holder (wait=False), or queues
    behind it; the lock is re-entrant inside one process (`rlhf run` takes it, then the flow)."""
    import subprocess
    import sys
    import time

    import pytest

    from flows import lock as rlhf

    lock = tmp_path / ".rlhf-run.lock"
    monkeypatch.setattr(rlhf, "LOCK_FILE", lock)
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time\n"
                               "from pathlib import Path\n"
                               "from flows import lock as rlhf\n"
                               f"rlhf.LOCK_FILE = Path({str(lock)!r})\n"
                               "with rlhf.project_lock():\n"
                               "    print('held', flush=True)\n"
                               "    time.sleep(3)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(rlhf.ProjectBusy, match=rf"{lock}.*pid {holder.pid}"):
            with rlhf.project_lock(wait=False):
                pass
        t0 = time.time()
        with rlhf.project_lock(wait=True):  # waits until the holder exits
            assert time.time() - t0 > 1.0  # the holder kept it ~3 s
            with rlhf.project_lock(wait=False):  # re-entrant
                assert f"pid {__import__('os').getpid()}" in lock.read_text()
    finally:
        holder.kill()
        holder.wait()


def test_a_stage_is_retried_after_a_crash_not_after_bad_input():
    """flow.retries covers kills and crashes; bad params (exit 2) and bad input or a non-finite value
    (exit 3) fail the same way again, so they are not retried."""
    from prefect.states import Completed, Failed

    from flows.cache import StageFailed, worth_retrying

    assert worth_retrying(None, None, Failed(data=StageFailed("killed", -9)))
    assert worth_retrying(None, None, Failed(data=StageFailed("crash", 1)))
    assert worth_retrying(None, None, Failed(data=StageFailed("dvc itself failed", None)))
    assert not worth_retrying(None, None, Failed(data=StageFailed("bad params", 2)))
    assert not worth_retrying(None, None, Failed(data=StageFailed("bad data / nan", 3)))
    assert worth_retrying(None, None, Completed(data={"stage": "sft"}))


def test_summary_links_each_stage_run_in_the_mlflow_ui(isolated_mlflow, monkeypatch):
    """The run summary (Prefect artifact) links the pipeline run and every stage run nested under
    it; a stage that came from the cache has no new run, so no link."""
    import mlflow

    from components.core.config import load_config
    from components.core.tracking import PARENT_RUN_ENV, setup, stage_run
    from flows.summary import mlflow_links, summary_markdown

    cfg = load_config(overrides=["common.experiment=test-links"])
    setup(cfg)
    with mlflow.start_run(run_name="pipeline") as parent:
        pass  # in the flow, stages run in their own processes while the parent run is open
    monkeypatch.setenv(PARENT_RUN_ENV, parent.info.run_id)
    with stage_run(cfg, "sft") as sft_run:
        pass
    parent_link, links = mlflow_links(cfg, parent)
    exp = parent.info.experiment_id
    assert parent_link == f"http://127.0.0.1:5000/#/experiments/{exp}/runs/{parent.info.run_id}"
    assert links == {"sft": f"http://127.0.0.1:5000/#/experiments/{exp}/runs/{sft_run.info.run_id}"}
    md = summary_markdown([{"stage": "sft", "status": "ran", "seconds": 1.0, "metrics": {"loss": 0.5}},
                           {"stage": "dpo", "status": "cached (inputs unchanged)", "seconds": 0.0, "metrics": {}}],
                          parent_link, links)
    assert f"| [sft]({links['sft']}) | ran | 1.0 | loss=0.5 |" in md and "| dpo | cached (inputs unchanged) |" in md
