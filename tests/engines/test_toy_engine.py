"""CONTRIBUTING's "Adding an engine", proven: quantstage copied as installed, the toy engine (``tests/engines/toy``:
dynamic int8 Linear in plain torch, shipped as TorchScript) dropped in as ``quant/engines/toy/`` and its line added to
``quant/engines/registry.py``, converts a model with ``engine: toy`` through the CLI — calibrate, convert, ship,
benchmark, log, register, promote — and the champion loads back through MLflow and through the engine. The copy
differs from quantstage by that folder and that registry line only."""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch

from tests.conftest import REPO_ROOT
from tests.test_layering import _imports

pytestmark = pytest.mark.flow

TOY = Path(__file__).resolve().parent / "toy"
REGISTRY_LINE = (
    '    "toy": EngineEntry("quantstage.quant.engines.toy.spec:ToySpec", "quantstage.quant.engines.toy:TOY_ENGINE"),\n'
)
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")

_MODEL = """
import torch


def build() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
"""

_CONVERT = """
import json, sys
from pathlib import Path

import mlflow, torch

import quantstage
from quantstage.flows.cli import main
from quantstage.quant.engines import get_engine
from quantstage.quant.measure import sqnr_db
import toy_model

code = main(["convert", "--config", sys.argv[1]])
client = mlflow.MlflowClient()
version = client.get_model_version_by_alias("toy-int8", "champion")
params = client.get_run(version.run_id).data.params
x = torch.load(sys.argv[2])
champion = mlflow.pytorch.load_model("models:/toy-int8@champion")
folder = Path(mlflow.artifacts.download_artifacts("models:/toy-int8@champion", dst_path=sys.argv[3]))
with torch.no_grad():
    expected, got = toy_model.build()(x), champion(x)
    reloaded = torch.equal(get_engine("toy").load(folder)(x), got)
print(json.dumps({"code": code, "package": quantstage.__file__, "engine": params["spec.engine"],
                  "method": params["export.method"], "sqnr": float(sqnr_db(expected, got)), "reloaded": reloaded}))
"""


def _install_copy(site: Path) -> Path:
    """quantstage laid out as installed (pyproject's ``[tool.setuptools.package-dir]``) under ``site``."""
    package_dir = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in sorted(package_dir.items(), key=lambda item: item[0].count(".")):
        shutil.copytree(REPO_ROOT / folder, site.joinpath(*package.split(".")), ignore=_IGNORED, dirs_exist_ok=True)
    return site / "quantstage"


def _add_toy_engine(package: Path) -> None:
    """What CONTRIBUTING asks: the engine's folder, and its line in the registry."""
    shutil.copytree(TOY, package / "quant" / "engines" / "toy", ignore=_IGNORED)
    registry = package / "quant" / "engines" / "registry.py"
    lines = registry.read_text().splitlines(keepends=True)
    entries = [i for i, line in enumerate(lines) if re.match(r'\s+"\w+": EngineEntry\(', line)]
    assert entries, "registry.py has no REGISTRY entries to add one beside"
    lines.insert(entries[-1] + 1, REGISTRY_LINE)
    registry.write_text("".join(lines))


def _original(package: Path, path: Path) -> Path:
    relative = path.relative_to(package)
    top = relative.parts[0]
    return REPO_ROOT / relative if top in ("quant", "tasks", "flows") else REPO_ROOT / "quantstage" / relative


def _differences(package: Path) -> tuple[list[str], list[str]]:
    """Files of the copy unlike quantstage's (relative to the package), and the lines the registry gained or lost."""
    files = [p for p in sorted(package.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
    differ = [
        str(p.relative_to(package))
        for p in files
        if not _original(package, p).is_file() or _original(package, p).read_bytes() != p.read_bytes()
    ]
    registry = package / "quant" / "engines" / "registry.py"
    before = _original(package, registry).read_text().splitlines(keepends=True)
    lines = [line for line in difflib.ndiff(before, registry.read_text().splitlines(keepends=True)) if line[0] in "+-"]
    return differ, lines


def test_the_toy_engine_uses_no_other_engine_s_framework() -> None:
    """The project's seams hold for it: no torch.ao / torch.fx (the FX engine's), no torchao (PT2E's)."""
    for path in sorted(TOY.glob("*.py")):
        names = _imports(path)
        assert not {
            n for n in names if n.startswith(("torch.ao", "torch.fx", "torchao", "quantstage.quant.engines.fx"))
        }


def test_an_engine_is_its_folder_and_one_registry_line(
    mlflow_store: str, prefect_harness: None, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    package = _install_copy(tmp_path / "site")
    _add_toy_engine(package)
    differ, registry_lines = _differences(package)
    toy = [f"quant/engines/toy/{p.name}" for p in TOY.iterdir() if p.is_file()]
    assert differ == sorted(["quant/engines/registry.py", *toy]), differ
    assert registry_lines == ["+ " + REGISTRY_LINE], registry_lines

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "toy_model.py").write_text(_MODEL)
    g = torch.Generator().manual_seed(0)
    torch.save(torch.randn(96, 16, generator=g), tmp_path / "x.pt")
    config = {
        "model": {"factory": "toy_model:build"},
        "data": {"source": str(tmp_path / "x.pt"), "batch_size": 8},
        "spec": {"engine": "toy"},
        "evaluation": {"task": "regression"},
        "gates": {"min_output_sqnr_db": 20.0, "min_speedup": None},  # plain-torch int8 is slower than float
        "registered_name": "toy-int8",
        "benchmark_iterations": 10,
        "sensitivity": False,
    }
    (tmp_path / "convert.json").write_text(json.dumps(config))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(tmp_path / "models")]),
        "MLFLOW_TRACKING_URI": mlflow_store,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
    }
    args = [str(tmp_path / "convert.json"), str(tmp_path / "x.pt"), str(tmp_path / "download")]
    proc = subprocess.run(
        [sys.executable, "-c", _CONVERT, *args], capture_output=True, text=True, timeout=300, cwd=os.getcwd(), env=env
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["package"].startswith(str(package)), result  # the copy ran, not this checkout
    assert result["code"] == 0 and result["engine"] == "toy" and result["method"] == "toy_torchscript", result
    assert result["sqnr"] >= 20.0 and result["reloaded"], result
