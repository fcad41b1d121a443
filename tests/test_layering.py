"""The layering the project promises: FX behind one seam, quant/ free of Prefect and MLflow."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _files(*packages: str) -> list[Path]:
    return [p for package in packages for p in sorted((ROOT / package).rglob("*.py"))]


@pytest.mark.parametrize("path", _files("quant", "tasks", "flows"), ids=lambda p: str(p.relative_to(ROOT)))
def test_torch_ao_only_in_the_fx_seam(path: Path) -> None:
    if path == ROOT / "quant" / "_fx.py":
        return
    offending = {name for name in _imports(path) if name.startswith("torch.ao")}
    assert not offending, f"{path.relative_to(ROOT)} imports {offending}: go through quant/_fx.py"


@pytest.mark.parametrize("path", _files("quant"), ids=lambda p: str(p.relative_to(ROOT)))
def test_quant_is_pure_torch_and_pydantic(path: Path) -> None:
    offending = {name for name in _imports(path) if name.split(".")[0] in ("prefect", "mlflow")}
    assert not offending, f"{path.relative_to(ROOT)} imports {offending}: quant/ must not know Prefect or MLflow"


@pytest.mark.parametrize("path", _files("flows"), ids=lambda p: str(p.relative_to(ROOT)))
def test_flows_do_not_talk_to_mlflow(path: Path) -> None:
    offending = {name for name in _imports(path) if name.split(".")[0] == "mlflow"}
    if path.name == "cli.py":  # prints where to look (the tracking URI), no tracking I/O
        offending.discard("mlflow")
    assert not offending, f"{path.relative_to(ROOT)} imports {offending}: MLflow I/O belongs in tasks/"
