"""engine: pt2e end to end: the CLI converts the demo's digits-cnn with torch.export + torchao PT2E,
registers and promotes an AOTInductor package, and that package (and the pyfunc model around it)
runs in a fresh process that cannot import quantstage, the model's class, prefect or torchao."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from quantstage.flows.cli import main
from quantstage.quant.data.readers import digits_split

pytestmark = pytest.mark.flow

# Run in a fresh interpreter: imports of these packages fail, so what loads the model needs only torch
# (and numpy + mlflow for the pyfunc form).
_BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{{name}} is blocked in this process")
        return None
sys.meta_path.insert(0, Block())
"""

_LOAD_PACKAGE = """
import json, sys, torch
x, y = torch.load(sys.argv[2])
model = torch._inductor.aoti_load_package(sys.argv[1])
with torch.no_grad():
    correct = int((model(x).argmax(-1) == y).sum()) + 0
    one = model(x[:1]).shape
print(json.dumps({"accuracy": correct / len(y), "batch1": list(one),
                  "loaded": sorted(m for m in ("quantstage", "torchao", "prefect", "mlflow") if m in sys.modules)}))
"""

_LOAD_PYFUNC = """
import json, sys, numpy as np, mlflow, torch
x, y = torch.load(sys.argv[2])
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(x.numpy())
print(json.dumps({"accuracy": float((np.asarray(out).argmax(-1) == y.numpy()).mean()),
                  "loaded": sorted(m for m in ("quantstage", "torchao", "prefect") if m in sys.modules)}))
"""


def _fresh(code: str, blocked: tuple[str, ...], *args: str) -> dict:
    script = _BLOCKER.format(blocked=set(blocked)) + code
    proc = subprocess.run(
        [sys.executable, "-I", "-c", script, *args], capture_output=True, text=True, timeout=300, cwd="/"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_pt2e_engine_ships_a_package_that_runs_without_quantstage(
    digits_source: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["convert", "models:/digits-cnn@champion", "--engine", "pt2e", "--registered-name", "digits-cnn-pt2e"])
    out = capsys.readouterr().out
    assert code == 0, out[-2000:]
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("digits-cnn-pt2e", "champion")
    run = client.get_run(version.run_id)
    assert run.data.params["spec.engine"] == "pt2e"
    assert run.data.params["export.method"] == "aoti_package"

    local = Path(
        mlflow.artifacts.download_artifacts(f"models:/digits-cnn-pt2e/{version.version}", dst_path=str(tmp_path))
    )
    packages = list(local.rglob("*.pt2"))
    assert len(packages) == 1, packages
    reference = Path(
        mlflow.artifacts.download_artifacts(
            run_id=version.run_id, artifact_path="reference", dst_path=str(tmp_path / "ref")
        )
    )
    assert list(reference.rglob("*.pt2")), "the exported reference program is logged for other compilers"

    _, _, x_test, y_test = digits_split()
    data = tmp_path / "test.pt"
    torch.save((x_test, y_test), data)
    float_model = mlflow.pytorch.load_model("models:/digits-cnn@champion").eval()
    with torch.no_grad():
        float_accuracy = float((float_model(x_test).argmax(-1) == y_test).float().mean())

    blocked = ("quantstage", "tests", "torchao", "prefect", "mlflow")
    fresh = _fresh(_LOAD_PACKAGE, blocked, str(packages[0]), str(data))
    assert fresh["loaded"] == []
    assert fresh["batch1"] == [1, 10]
    assert fresh["accuracy"] >= float_accuracy - 0.01, (fresh, float_accuracy)

    pyfunc = _fresh(_LOAD_PYFUNC, ("quantstage", "tests", "torchao", "prefect"), str(local), str(data))
    assert pyfunc["loaded"] == []
    assert pyfunc["accuracy"] == pytest.approx(fresh["accuracy"])
