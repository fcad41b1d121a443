"""A storm of registrations through MLflow's registry webhook, measured on a real stack.

``deploy/stack.sh`` starts in a temporary folder (free loopback ports, its default settings). A
plain MLflow client (a process with only ``MLFLOW_TRACKING_URI`` and its credentials; no Prefect)
trains the demo CNN once, logs it, and registers it under N names at once (N threads, each
``mlflow.register_model``: ``create_registered_model`` + ``create_model_version``). The bench waits until every
``<name>-int8@champion`` exists and reports what reached each stage: deliveries (the receiver's
counters), ``quantstage.model.registered`` events in Prefect, ``convert/on-registered`` flow runs
per version, int8 versions per model (exactly one each), the most conversions running at once
(the trigger queue's limit is 1), and the latency from ``create_model_version`` to ``@champion``.

Usage: ``.venv/bin/python -m bench.webhooks [--n 20] [--timeout 3600]``; writes ``bench/WEBHOOKS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
STACK = ROOT / "deploy" / "stack.sh"

REGISTER = textwrap.dedent(
    """
    import json, sys, time
    from concurrent.futures import ThreadPoolExecutor
    import mlflow, torch
    from quantstage.demo import DigitsCNN, train_classifier
    from quantstage.quant.data.sources import digits_split

    prefix, n = sys.argv[1], int(sys.argv[2])
    x, y, x_test, _ = digits_split(seed=0)
    torch.manual_seed(0)
    model = train_classifier(DigitsCNN(), x, y, epochs=2, seed=0)
    mlflow.set_experiment("team-training")
    with mlflow.start_run() as run:
        info = mlflow.pytorch.log_model(model, name="model", serialization_format="pickle", input_example=x_test[:2].numpy())

    def register(i):
        name = f"{prefix}-{i:02d}"
        version = mlflow.register_model(info.model_uri, name)  # create_registered_model + create_model_version
        return {"name": name, "version": version.version, "created_ms": version.creation_timestamp}

    began = time.time()
    with ThreadPoolExecutor(n) as pool:
        registered = list(pool.map(register, range(n)))
    print(json.dumps({"registered": registered, "seconds": time.time() - began,
                      "prefect_imported": any(m.split(".")[0] == "prefect" for m in sys.modules)}))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class Clients:
    """The stack's two APIs with its client credentials (Prefect: basic auth + a CSRF token)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.mlflow = httpx.Client(
            base_url=env["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/",
            auth=(env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]),
            timeout=30,
        )
        user, _, password = env["PREFECT_API_AUTH_STRING"].partition(":")
        self.prefect = httpx.Client(base_url=env["PREFECT_API_URL"], auth=(user, password), timeout=30)
        client_id = str(uuid.uuid4())
        token = self.prefect.get("/csrf-token", params={"client": client_id}).json()["token"]
        self.prefect.headers.update({"Prefect-Csrf-Token": token, "Prefect-Csrf-Client": client_id})

    def champion(self, name: str) -> str | None:
        r = self.mlflow.get("registered-models/get", params={"name": name})
        if r.status_code != 200:
            return None
        return {a["alias"]: a["version"] for a in r.json()["registered_model"].get("aliases", [])}.get("champion")

    def versions(self, name: str) -> int:
        found = self.mlflow.get("model-versions/search", params={"filter": f"name='{name}'"}).json()
        return len(found.get("model_versions", []))

    def events(self, prefix: str) -> list[dict[str, Any]]:
        """Every quantstage.model.registered event of models named ``<prefix>-*`` (pages of 50)."""
        resource = {"id_prefix": [f"mlflow.model.{prefix}-"]}
        page = self.post(
            "/events/filter",
            {"filter": {"event": {"name": ["quantstage.model.registered"]}, "resource": resource}, "limit": 50},
        )
        found = list(page["events"])
        while page.get("next_page"):
            page = self.prefect.get(page["next_page"]).json()
            found += page["events"]
        return found

    def post(self, path: str, body: dict[str, Any]) -> Any:
        r = self.prefect.post(path, json=body)
        r.raise_for_status()
        return r.json()


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def measure(n: int, timeout: float, state: Path) -> dict[str, Any]:
    ports = {"PREFECT_PORT": _free_port(), "MLFLOW_PORT": _free_port(), "WEBHOOK_PORT": _free_port()}
    stack_env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    stack_env |= {k: str(v) for k, v in ports.items()} | {"QUANTSTAGE_STACK_DIR": str(state)}
    stack_env |= {"QUANTSTAGE_BIN": str(Path(sys.executable).parent)}
    began = time.monotonic()
    started = subprocess.run([str(STACK)], env=stack_env, capture_output=True, text=True, timeout=600)
    if started.returncode != 0:
        raise SystemExit(f"stack.sh failed:\n{started.stdout}\n{started.stderr}")
    stack_up = time.monotonic() - began
    try:
        env = dict(
            shlex.split(line.removeprefix("export "))[0].split("=", 1)
            for line in (state / "client.env").read_text().splitlines()
            if line.startswith("export ")
        )
        api = Clients(env)
        bare = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
        bare |= {k: env[k] for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
        prefix = f"storm{uuid.uuid4().hex[:4]}"
        with tempfile.TemporaryDirectory() as cwd:
            out = subprocess.run(
                [sys.executable, "-c", REGISTER, prefix, str(n)],
                env=bare,
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=600,
            )
        if out.returncode != 0:
            raise SystemExit(f"registering failed:\n{out.stderr[-4000:]}")
        job = json.loads(out.stdout.strip().splitlines()[-1])
        registered = {r["name"]: r for r in job["registered"]}
        storm_began = time.monotonic()
        promoted: dict[str, float] = {}
        while len(promoted) < n and time.monotonic() - storm_began < timeout:
            for name in registered:
                if name not in promoted and api.champion(f"{name}-int8") is not None:
                    promoted[name] = time.time()
            time.sleep(2)
        storm_s = time.monotonic() - storm_began
        deployment = api.prefect.get("/deployments/name/convert/on-registered").json()["id"]
        runs = api.post("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment]}}})
        per_source = {
            name: [r for r in runs if r["parameters"]["params"]["model_uri"] == f"models:/{name}/1"]
            for name in registered
        }
        events = api.events(prefix)
        intervals = [(_ts(r["start_time"]), _ts(r["end_time"])) for r in runs if r["start_time"] and r["end_time"]]
        latencies = sorted(promoted[name] - registered[name]["created_ms"] / 1000 for name in promoted)
        health = httpx.get(f"http://127.0.0.1:{ports['WEBHOOK_PORT']}/health", timeout=10).json()
        run_times = [r["total_run_time"] for r in runs if r["state_type"] == "COMPLETED"]
        return {
            "n": n,
            "stack_up_s": round(stack_up, 1),
            "registering_s": round(job["seconds"], 2),
            "prefect_imported_by_trainer": job["prefect_imported"],
            "promoted": len(promoted),
            "lost": sorted(set(registered) - set(promoted)),
            "storm_s": round(storm_s, 1),
            "receiver": health["counts"],
            "events": len(events),
            "events_per_version": sorted(
                {sum(e["resource"]["mlflow.model.name"] == name for e in events) for name in registered}
            ),
            "runs": len(runs),
            "runs_per_version": sorted({len(v) for v in per_source.values()}),
            "run_states": sorted({r["state_type"] for r in runs}),
            "int8_versions_per_model": sorted({api.versions(f"{name}-int8") for name in registered}),
            "max_concurrent_conversions": _max_overlap(intervals),
            "conversion_s_median": round(statistics.median(run_times), 1) if run_times else None,
            "latency_s": {
                "first": round(latencies[0], 1) if latencies else None,
                "median": round(statistics.median(latencies), 1) if latencies else None,
                "last": round(latencies[-1], 1) if latencies else None,
            },
        }
    finally:
        subprocess.run([str(STACK), "stop"], env=stack_env, capture_output=True, timeout=300)


def report(result: dict[str, Any]) -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    lat = result["latency_s"]
    return textwrap.dedent(
        f"""\
        # A storm of registrations through MLflow's registry webhook

        `python -m bench.webhooks --n {result["n"]}` on {os.cpu_count()} cores ({cpu}), shared with other work;
        `deploy/stack.sh` with its defaults (SQLite, one process worker polling every 10 s, the trigger
        queue `triggered` with concurrency limit 1). A process that imports only MLflow (Prefect loaded:
        {result["prefect_imported_by_trainer"]}) trained the demo CNN once and registered it under {result["n"]}
        names from {result["n"]} threads at once, in {result["registering_s"]} s.

        | what | measured |
        |---|---|
        | registrations | {result["n"]} (`mlflow.register_model`: `create_registered_model` + `create_model_version`) |
        | receiver answers | {json.dumps(result["receiver"])} (ignored: the int8 versions' own `model_version.created`, and MLflow's test delivery at start) |
        | `quantstage.model.registered` events in Prefect | {result["events"]} (per version: {result["events_per_version"]}) |
        | `convert/on-registered` flow runs | {result["runs"]} (per version: {result["runs_per_version"]}; states {result["run_states"]}) |
        | `<name>-int8@champion` set | {result["promoted"]} of {result["n"]}; lost: {result["lost"] or "none"} |
        | int8 versions per model | {result["int8_versions_per_model"]} (no duplicates) |
        | most conversions running at once | {result["max_concurrent_conversions"]} |
        | conversion run time, median | {result["conversion_s_median"]} s |
        | `create_model_version` → `@champion` | first {lat["first"]} s, median {lat["median"]} s, last {lat["last"]} s |
        | whole storm (registration to the last alias) | {result["storm_s"]} s |

        The receiver answers each delivery in milliseconds (202 once Prefect has the event); the
        conversions then queue on `triggered` (limit 1) and the on-registered deployment's own limit
        (1, ENQUEUE), so the storm drains one conversion at a time: the last alias comes about
        N x (conversion + worker poll) after the first registration. Nothing is dropped on the way:
        every delivery became one event, every event one flow run, every run one int8 version.
        """
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="quantstage-webhooks-") as tmp:
        result = measure(args.n, args.timeout, Path(tmp) / "stack")
    print(json.dumps(result))
    (ROOT / "bench" / "WEBHOOKS.md").write_text(report(result))


if __name__ == "__main__":
    main()
