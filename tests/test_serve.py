"""`rlhf serve`: the registered champion answers an OpenAI-style chat request over HTTP on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from components.core import procs
from components.core import tracking
from components.core.config import ROOT, load_config
from components.core import registry

MESSAGES = [{"role": "user", "content": "What is 17 + 25?"}]


@pytest.fixture
def champion(tiny_model_dir, isolated_mlflow, tmp_path):
    """The tiny random model registered as `policy`, alias `champion`, in a temp MLflow store."""
    cfg = load_config(overrides=["common.profile=test", f"common.outputs_dir={tmp_path / 'outputs'}",
                                 "common.experiment=test-serve"])
    with tracking.stage_run(cfg, "ppo"):
        version = registry.register_model(tiny_model_dir, cfg, "ppo", name="policy", description="tiny", aliases=("champion",))
    return version


def _post(url: str, body: dict, timeout: float = 60) -> dict | list:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill(pid: int) -> None:
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).kill()


@pytest.mark.slow
def test_policy_is_registered_as_a_chat_model(champion):
    import mlflow

    info = mlflow.models.get_model_info("models:/policy@champion")
    assert info.flavors["transformers"]["task"] == "text-generation"
    assert info.flavors["transformers"]["inference_task"] == "llm/v1/chat"
    assert "messages" in info.signature.inputs.input_names()


@pytest.mark.slow
def test_rlhf_serve_answers_a_chat_request(champion, tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    port = procs.free_port()
    log = tmp_path / "serve.log"
    t0 = time.monotonic()
    # `rlhf serve` with its defaults (models:/policy@champion on 127.0.0.1), the store from the env.
    proc = procs.start([sys.executable, "-m", "components.apps.cli", "serve", "--port", str(port)],
                       env=procs.child_env(), log=log, cwd=ROOT)
    pids = set()
    try:
        procs.wait_healthy(f"http://127.0.0.1:{port}/health", proc, timeout=180, what="rlhf serve", log=log)
        import psutil

        pids = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        assert pids, "rlhf serve runs mlflow models serve as a child"
        out = log.read_text()
        assert f"http://127.0.0.1:{port}/invocations" in out and f"policy version {champion.version}" in out

        url = f"http://127.0.0.1:{port}/invocations"
        answer = _post(url, {"messages": MESSAGES, "max_tokens": 8})  # sampled (the pipeline's default)
        startup_and_answer = time.monotonic() - t0
        completion = answer[0] if isinstance(answer, list) else answer
        assert completion["object"] == "chat.completion"
        message = completion["choices"][0]["message"]
        assert message["role"] == "assistant"
        assert isinstance(message["content"], str) and message["content"].strip()
        assert 1 <= completion["usage"]["completion_tokens"] <= 8

        # The chat template was applied: the served greedy answer ("top_k": 1) is what the model
        # generates locally from the templated conversation.
        from transformers import AutoModelForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
        ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        expected = model.generate(**ids, max_new_tokens=8, do_sample=False)[0, ids["input_ids"].shape[1]:]
        greedy = _post(url, {"messages": MESSAGES, "max_tokens": 8, "top_k": 1})[0]
        assert greedy["usage"]["prompt_tokens"] == ids["input_ids"].shape[1]
        assert greedy["usage"]["prompt_tokens"] > len(tokenizer(MESSAGES[0]["content"])["input_ids"]) + 5
        assert greedy["usage"]["completion_tokens"] == len(expected)
        # (MLflow strips the answer)
        assert greedy["choices"][0]["message"]["content"] == tokenizer.decode(expected, skip_special_tokens=True).strip()
        print(f"server up and answered in {startup_and_answer:.1f} s")
    finally:
        proc.terminate()  # SIGTERM to `rlhf serve` only: it must stop its server's tree itself
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        leftovers = [pid for pid in pids if _alive(pid)]
        procs.stop(proc)  # whatever is left (nothing, when rlhf serve cleaned up)
        for pid in leftovers:
            _kill(pid)
    assert proc.returncode is not None and not leftovers, f"rlhf serve left server processes behind: {leftovers}"
    assert not procs.port_in_use(port)


def test_rlhf_serve_refuses_an_unknown_model(isolated_mlflow, capsys):
    from components.apps.cli import main

    port = procs.free_port()
    assert main(["serve", "--model", "models:/no-such-model@champion", "--port", str(port)]) == 3  # bad input
    err = capsys.readouterr().err
    assert "models:/no-such-model@champion" in err and "not in the registry" in err
    assert not procs.port_in_use(port)


def test_serve_command_binds_localhost_by_default():
    from components.apps.cli import build_parser
    from components.apps.serve import serve_command

    args = build_parser().parse_args(["serve"])
    assert (args.model, args.host, args.port) == ("models:/policy@champion", "127.0.0.1", 5001)
    cmd = serve_command(args.model, args.host, args.port)
    assert cmd[1:4] == ["-m", "mlflow", "models"] and cmd[cmd.index("-h") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--env-manager") + 1] == "local"
    assert os.path.isabs(cmd[0])
