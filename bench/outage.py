"""Faults on a real MLflow tracking server, measured end to end through ``quantstage convert``.

Scenarios (each on a fresh ``mlflow server`` with its own SQLite store and artifact folder):

- ``closed-port``: ``MLFLOW_TRACKING_URI`` points at a port nothing listens on;
- ``outage``: the server is killed once the conversion's MLflow run is RUNNING and restarted
  ``--outage`` seconds later (90 by default) — the conversion must either survive or fail with the
  original error, its run FAILED, within 5 minutes;
- ``down``: the server is killed mid-flow and never comes back.

Usage: ``.venv/bin/python -m bench.outage [closed-port|outage|down ...] [--outage 90]``; the results
go to stdout as JSON lines and to ``bench/OUTAGE.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


STARTUP_S: list[float] = []  # how long the server took to accept connections


def _start_server(port: int, folder: Path) -> subprocess.Popen[bytes]:
    started = time.monotonic()
    log = open(folder / "server.log", "ab")  # lives as long as the server
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{folder}/mlflow.db",
            "--artifacts-destination",
            str(folder / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                STARTUP_S.append(time.monotonic() - started)
                return proc
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server on port {port} did not start; see {folder / 'server.log'}")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: gunicorn/uvicorn children too
    proc.wait()


def _register_source(uri: str) -> str:
    code = (
        "import mlflow, torch, sys; sys.path.insert(0, %r)\n"
        "from tests.helpers import register\n"
        "from quantstage.demo import DigitsCNN\n"
        "mlflow.set_tracking_uri(%r)\n"
        "print(register(DigitsCNN(), 'outage-cnn', torch.randn(2, 1, 8, 8)))\n"
    ) % (str(ROOT), uri)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    return out.stdout.strip().splitlines()[-1]


def _env(uri: str, home: Path) -> dict[str, str]:
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    for var in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        env.pop(var, None)  # quantstage's own defaults are what is measured
    return env


def _convert(model_uri: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            str(BIN / "quantstage"),
            "convert",
            model_uri,
            "--registered-name",
            "outage-cnn-int8",
            "--promote-if",
            "gates",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _runs(uri: str) -> list[dict[str, Any]]:
    import mlflow

    client = mlflow.MlflowClient(uri)
    found = []
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id]):
            found.append(
                {"name": run.info.run_name, "status": run.info.status, "error": run.data.tags.get("quantstage.error")}
            )
    return found


def _versions(uri: str) -> list[str]:
    import mlflow

    client = mlflow.MlflowClient(uri)
    return [f"{v.name}/{v.version}" for v in client.search_model_versions("name = 'outage-cnn-int8'")]


def closed_port(_: argparse.Namespace, folder: Path) -> dict[str, Any]:
    uri = f"http://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    proc = _convert("models:/outage-cnn@champion", _env(uri, folder / "prefect"))
    out, err = proc.communicate()
    return {"exit": proc.returncode, "seconds": round(time.monotonic() - start, 1), "stderr": err.strip()[-500:]}


def _mid_flow(args: argparse.Namespace, folder: Path, restart_after: float | None) -> dict[str, Any]:
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _start_server(port, folder)
    model_uri = _register_source(uri)
    start = time.monotonic()
    proc = _convert(model_uri, _env(uri, folder / "prefect"))
    import mlflow

    client = mlflow.MlflowClient(uri)
    while proc.poll() is None:  # wait for the conversion's run to be RUNNING
        running = [
            r
            for e in client.search_experiments()
            for r in client.search_runs([e.experiment_id], "attributes.status = 'RUNNING'")
        ]
        if running:
            break
        time.sleep(0.5)
    killed_at = time.monotonic() - start
    _kill(server)
    restarted_at = None
    if restart_after is not None:  # down for restart_after s, plus the server's own startup
        try:
            proc.wait(timeout=restart_after)
        except subprocess.TimeoutExpired:
            pass
        server = _start_server(port, folder)
        restarted_at = time.monotonic() - start
    out, err = proc.communicate(timeout=900)
    ended = time.monotonic() - start
    if restart_after is None:
        server = _start_server(port, folder)  # only to read back what was left
    result = {
        "exit": proc.returncode,
        "killed_at_s": round(killed_at, 1),
        "restarted_at_s": None if restarted_at is None else round(restarted_at, 1),
        "ended_at_s": round(ended, 1),
        "failed_after_kill_s": round(ended - killed_at, 1),
        "down_s": None if restarted_at is None else round(restarted_at - killed_at, 1),
        "quantstage_lines": [line for line in err.splitlines() if line.startswith("quantstage:")],
        "stdout_tail": out.strip().splitlines()[-3:],
        "runs": _runs(uri),
        "versions": _versions(uri),
    }
    _kill(server)
    return result


def outage(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    return _mid_flow(args, folder, args.outage)


def down(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    return _mid_flow(args, folder, None)


SCENARIOS = {"closed-port": closed_port, "outage": outage, "down": down}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--outage", type=float, default=90.0, help="seconds the server stays down (outage)")
    args = parser.parse_args()
    lines = ["# MLflow faults mid-flow (bench/outage.py)", ""]
    for name in args.scenarios:
        with tempfile.TemporaryDirectory(prefix=f"quantstage-{name}-") as tmp:
            result = SCENARIOS[name](args, Path(tmp))
        print(json.dumps({"scenario": name, **result}), flush=True)
        lines += [f"## {name}", "", "```json", json.dumps(result, indent=2), "```", ""]
    (ROOT / "bench" / "OUTAGE.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
