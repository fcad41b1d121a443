"""One installed package: the wheel holds only ``quantstage``, and quantstage works from a folder
whose own ``tasks.py``, ``flows/`` and ``quant.py`` would collide with bare names."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

BIN = Path(sys.executable).parent
RAISING = "raise RuntimeError('the user project module {name} was imported by quantstage')\n"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO_ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (path,) = out.glob("quantstage-*.whl")
    return path


def test_the_wheel_installs_one_top_level_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"quantstage"}, tops
    for path in (
        "quantstage/py.typed",
        "quantstage/quant/quantize.py",
        "quantstage/quant/engines/fx/__init__.py",
        "quantstage/tasks/publish.py",
        "quantstage/flows/unit.py",
        "quantstage/demo.py",
    ):
        assert path in names, path
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "quantstage = quantstage.flows.cli:run" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.fixture()
def user_project(tmp_path: Path) -> Path:
    """A Prefect project's folder with modules named like quantstage's source folders, each raising."""
    (tmp_path / "tasks.py").write_text(RAISING.format(name="tasks.py"))
    (tmp_path / "quant.py").write_text(RAISING.format(name="quant.py"))
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "__init__.py").write_text(RAISING.format(name="flows/"))
    return tmp_path


def test_quantstage_imports_beside_colliding_user_modules(user_project: Path) -> None:
    script = (
        "import quantstage, quantstage.flows, quantstage.tasks, quantstage.flows.cli\n"
        "print(quantstage.__version__, quantstage.quantize.__module__, quantstage.convert_flow.name)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=user_project, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    version, module, flow = out.stdout.split()
    assert version[0].isdigit() and module == "quantstage.quant.quantize" and flow == "convert"


@pytest.mark.flow
def test_the_demo_runs_beside_colliding_user_modules(user_project: Path) -> None:
    env = {
        **os.environ,
        "PREFECT_HOME": str(user_project / ".prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    }
    env.pop("MLFLOW_TRACKING_URI", None)  # the embedded default: a store in the current folder
    out = subprocess.run(
        # the demo as users run it: a 1-epoch CNN loses 1.1 points in int8 on a VNNI CPU (8-bit activations),
        # over the default gate, while the default 4 epochs lose none
        [str(BIN / "quantstage"), "demo"],
        cwd=user_project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "models:/digits-cnn-int8/1 (promoted: True)" in out.stdout
    assert (user_project / "mlflow.db").is_file()
