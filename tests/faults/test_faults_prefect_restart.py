"""Faults: the Prefect server is killed and restarted while a flow that runs our step tasks is in progress.

Real components only: `prefect server start` as a subprocess (its own PREFECT_HOME and SQLite database, a free
port, no UI), and a flow in another subprocess that calls the real wrappers of flows/tasks.py on a tiny
checkout (test_flows.make_checkout: ingest and Great Expectations validation of 60 local rows):

    tasks.ingest  ->  wait_for_gate (a test task: it blocks until the test opens the gate)  ->  tasks.validate

While the flow waits, the test SIGKILLs the server (a crash, not a clean stop), starts a new server on the same
port with the same database, then opens the gate.

What happens (asserted): the flow run COMPLETES in the same process, with no rerun. The client does not need
the API while a task runs (task states travel as events, which are buffered and re-sent once the events
websocket reconnects); its next API calls (the validate task's artifact, the final flow-run state) go to the
restarted server, which holds the run from the database. The run's three task runs are COMPLETED and the
validation artifact published after the restart is stored.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.integration.test_flows import make_checkout

pytestmark = [pytest.mark.faults, pytest.mark.integration]

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]

FLOW = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from prefect import flow, task
    from prefect.runtime import flow_run
    from flows import tasks
    from flows.tasks import working_directory

    @task(name="wait_for_gate")
    def wait_for_gate(gate: str) -> None:
        Path(gate + ".waiting").touch()
        while not Path(gate).exists():
            time.sleep(0.1)

    @flow(name="svgt-server-restart-probe")
    def probe(workdir: str, gate: str) -> bool:
        Path(gate + ".id").write_text(str(flow_run.id))
        with working_directory(workdir):
            tasks.ingest("params.yaml")
            wait_for_gate(gate)
            return tasks.validate("params.yaml")["success"]

    print(json.dumps({"success": probe(sys.argv[1], sys.argv[2])}))
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, home: Path, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/p.db",
    }
    env.pop("PREFECT_API_URL", None)
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return proc
        assert time.monotonic() < deadline, "Prefect server did not become healthy in 120 s"
        time.sleep(0.5)


def kill_tree(proc: subprocess.Popen) -> None:
    try:
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    psutil.wait_procs(procs, timeout=30)


def wait_for(path: Path, proc: subprocess.Popen, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"flow exited before {what}: {proc.stdout.read()[-3000:] if proc.stdout else ''}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_flow_survives_a_prefect_server_restart(tmp_path):
    checkout = make_checkout(tmp_path / "checkout")
    home = tmp_path / "prefect-home"
    home.mkdir()
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    server_log = tmp_path / "server.log"
    (tmp_path / "flow.py").write_text(FLOW)
    gate = tmp_path / "gate"
    flow_env = {
        **os.environ,
        "PREFECT_API_URL": api,
        "PREFECT_HOME": str(home / "client"),
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "GX_ANALYTICS_ENABLED": "false",
    }

    server = start_server(port, home, server_log)
    flow_proc = None
    try:
        flow_proc = subprocess.Popen(
            [sys.executable, str(tmp_path / "flow.py"), str(checkout), str(gate)],
            env=flow_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wait_for(Path(f"{gate}.waiting"), flow_proc, "the gate task")  # ingest is done, the flow is mid-run
        kill_tree(server)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{api}/health", timeout=2)  # really down
        server = start_server(port, home, server_log)  # same port, same database
        gate.touch()
        output, _ = flow_proc.communicate(timeout=300)
        assert flow_proc.returncode == 0, output[-4000:]
        assert json.loads(output.strip().splitlines()[-1]) == {"success": True}

        run_id = Path(f"{gate}.id").read_text()
        run = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()
        assert run["state"]["type"] == "COMPLETED", run["state"]
        expected = [("ingest", "COMPLETED"), ("validate", "COMPLETED"), ("wait_for_gate", "COMPLETED")]
        deadline = time.monotonic() + 30
        while (found := task_states(api, run_id)) != expected and time.monotonic() < deadline:
            time.sleep(1)  # task states arrive as events: the ones re-sent after the restart may lag a moment
        assert found == expected
        artifacts = httpx.post(
            f"{api}/artifacts/filter", json={"flow_runs": {"id": {"any_": [run_id]}}}, timeout=10
        ).json()
        assert [a["key"] for a in artifacts] == ["svgt-validation"]  # published after the restart
        assert "Data validation: PASSED" in artifacts[0]["data"]
    finally:
        if flow_proc is not None and flow_proc.poll() is None:
            kill_tree(flow_proc)
        kill_tree(server)


def task_states(api: str, run_id: str) -> list[tuple[str, str]]:
    runs = httpx.post(f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [run_id]}}}, timeout=10).json()
    return sorted((t["name"].rsplit("-", 1)[0], t["state"]["type"]) for t in runs)
