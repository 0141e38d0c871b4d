"""`rlhf run`'s temporary Prefect server is its own (flows/server.py).

The CI failure it fixes: two pipelines started together drew the same port, one run's health check was
answered by the other run's server, and it failed when that run ended. Here a stranger answers
``/api/health`` on the port the OS hands out first: Prefect alone would take it for its server;
``start_temporary_server`` must notice, move, and end up on a server whose process is its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from components.core import procs
from components.core.config import ROOT

SCRIPT = textwrap.dedent('''
    import http.server, json, socket, sys, threading

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.send_header("Content-Type", "application/json"); self.end_headers()
            self.wfile.write(b"true")
        def log_message(self, *a):
            pass

    stranger = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)  # a run whose server is already up
    threading.Thread(target=stranger.serve_forever, daemon=True).start()
    taken = stranger.server_address[1]

    from components.core import procs
    from flows import server as srv
    handed = iter([taken])
    srv.free_port = lambda: next(handed, None) or procs.free_port()  # the OS "draws" the stranger's port first

    from prefect.server.api.server import SubprocessASGIServer
    started, start = [], SubprocessASGIServer.start
    def recording_start(self, *a, **k):
        was_running = self.running
        start(self, *a, **k)
        if not was_running:
            started.append(self.port)  # the port Prefect took for a healthy server of its own
    SubprocessASGIServer.start = recording_start

    url = srv.start_temporary_server()
    from prefect import flow

    @flow
    def probe():
        return 1

    probe()
    ours = SubprocessASGIServer()
    from prefect.client.orchestration import get_client
    with get_client(sync_client=True) as c:
        runs = len(c.read_flow_runs())
    print(json.dumps({"taken": taken, "url": url, "port": ours.port, "pid": ours.server_process.pid,
                      "listens": srv.listening_pid_ok(ours.server_process.pid, ours.port, 5), "runs": runs,
                      "started": started}))
''')


def test_a_port_answered_by_another_server_is_not_taken_for_ours(tmp_path):
    env = procs.child_env({"PREFECT_HOME": str(tmp_path / "prefect-home"), "PYTHONPATH": str(ROOT)})
    for k in ("PREFECT_API_URL", "PREFECT_PROFILES_PATH", "PREFECT_PROFILE"):
        env.pop(k, None)
    p = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["port"] != got["taken"], got
    assert got["url"] == f"http://127.0.0.1:{got['port']}/api"
    assert got["listens"] is True
    assert got["runs"] == 1  # the flow ran on our own server (a fresh PREFECT_HOME): exactly its one run
    assert got["started"] == [got["taken"], got["port"]], got  # Prefect alone would have stopped at the first


def test_nothing_is_started_when_a_prefect_server_is_configured(monkeypatch):
    from flows import server as srv

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:1/api")
    monkeypatch.setattr(srv, "free_port", lambda: (_ for _ in ()).throw(AssertionError("a port was asked for")))
    assert srv.start_temporary_server() is None
