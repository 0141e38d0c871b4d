"""``rlhf serve``: a registered policy behind MLflow's scoring server, on this machine only by default
(and ``rlhf ui``, the MLflow UI, the other child server the command line starts).

Policies are registered as MLflow chat models (``core.registry.register_model`` logs causal LMs with
``task="llm/v1/chat"``), so ``mlflow models serve`` takes OpenAI-style chat requests and applies
the tokenizer's chat template — the same template the stages train and generate with::

    curl -s http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
         -d '{"messages": [{"role": "user", "content": "What is 17 + 25?"}], "max_tokens": 64}'

The answer is a list with one ``chat.completion`` object (``choices[0].message.content``).
This module only wraps ``mlflow models serve -m URI --env-manager local`` with the project's
tracking URI and offline environment.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from components.core.config import ROOT, Config, redact_uri
from components.core.errors import ModelError, ServiceError
from components.core.procs import child_env, port_in_use, start, stopped_on_exit, wait_healthy
from components.core.registry import registered_version
from components.core.tracking import tracking_uri

DEFAULT_MODEL = "models:/policy@champion"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5001


def describe_model(uri: str, cfg: Config) -> str:
    """Check a ``models:/`` reference against the registry (a clear error before any server starts);
    returns e.g. ``policy version 3 (run abc...)``. Other URIs are passed to MLflow as they are."""
    if not uri.startswith("models:/"):
        if "://" not in uri and not uri.startswith("runs:/") and not (Path(uri) / "MLmodel").exists():
            raise ModelError(f"{uri}: not an MLflow model folder (no MLmodel file) and not a models:/ or runs:/ URI")
        return uri
    version = registered_version(uri, cfg)
    return f"{version.name} version {version.version} (run {version.run_id})"


def serve_command(model: str, host: str, port: int, *, workers: int = 1, timeout: int = 300) -> list[str]:
    """The ``mlflow models serve`` command line (this Python's MLflow, the local environment)."""
    return [sys.executable, "-m", "mlflow", "models", "serve", "-m", model, "--env-manager", "local",
            "-h", host, "-p", str(port), "-w", str(workers), "-t", str(timeout)]


def example_request(url: str) -> str:
    body = json.dumps({"messages": [{"role": "user", "content": "What is 17 + 25?"}], "max_tokens": 64})
    return f"curl -s {url}/invocations -H 'Content-Type: application/json' -d '{body}'"


def ui_command(host: str, port: int) -> list[str]:
    """The ``mlflow ui`` command line (this Python's MLflow)."""
    exe = Path(sys.executable).with_name("mlflow")
    return [str(exe) if exe.exists() else "mlflow", "ui", "--host", host, "--port", str(port), "--workers", "1"]


def mlflow_ui(cfg: Config, host: str = DEFAULT_HOST, port: int = 5000) -> int:
    """``rlhf ui``: the MLflow UI over the project's store, in the foreground until Ctrl-C / SIGTERM; the
    UI's process tree (its uvicorn workers) is stopped on exit, so the port is free again."""
    uri = tracking_uri(cfg)
    # the store not on the command line (`ps` shows that to everyone); no job-execution workers (huey
    # consumers, which outlive the server)
    env = child_env({"MLFLOW_BACKEND_STORE_URI": uri})
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    print(f"MLflow UI: http://{host}:{port}  (store {redact_uri(uri)}; Ctrl-C to stop)", flush=True)
    proc = start(ui_command(host, port), env=env, cwd=ROOT)
    with stopped_on_exit(proc):
        try:
            return proc.wait()
        except KeyboardInterrupt:
            print("stopping the MLflow UI", flush=True)
            return 130


def serve(cfg: Config, model: str = DEFAULT_MODEL, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          *, startup_timeout: float = 600.0, request_timeout: int = 300) -> int:
    """Serve ``model`` in the foreground until Ctrl-C / SIGTERM; the server's tree is stopped on exit."""
    what = describe_model(model, cfg)
    local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # where this machine reaches it
    if port_in_use(port, local):
        raise ServiceError(f"port {port} on {host} is already in use (choose another with --port)")
    uri = tracking_uri(cfg)
    url = f"http://{host}:{port}"
    print(f"Serving {model}: {what}\n  store {redact_uri(uri)}\n  {url}/invocations (chat: OpenAI-style messages); "
          f"{url}/health\n  try: {example_request(url)}", flush=True)
    proc = start(serve_command(model, host, port, timeout=request_timeout),
                 env=child_env({"MLFLOW_TRACKING_URI": uri}), cwd=ROOT)
    with stopped_on_exit(proc):
        try:
            seconds = wait_healthy(f"http://{local}:{port}/health", proc, timeout=startup_timeout,
                                   what="mlflow models serve")
            print(f"Ready after {seconds:.0f} s: {url}  (Ctrl-C to stop)", flush=True)
            return proc.wait()
        except KeyboardInterrupt:
            print("stopping the model server", flush=True)
            return 130
