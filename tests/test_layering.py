"""The layering the project promises: one package, FX behind the engine seam, quant/ free of Prefect
and MLflow, flows free of MLflow I/O, small modules."""

import ast
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
FX_ENGINE = ROOT / "quant" / "engines" / "fx"
PT2E_ENGINE = ROOT / "quant" / "engines" / "pt2e"
MAX_LINES = 400


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _attribute_chains(path: Path) -> set[str]:
    """Dotted names used in the code (``torch.fx.GraphModule`` without importing torch.fx)."""
    chains = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            parts = []
            current: ast.expr = node
            while isinstance(current, ast.Attribute):
                parts.append(current.attr)
                current = current.value
            if isinstance(current, ast.Name):
                chains.add(".".join([current.id, *reversed(parts)]))
    return chains


def _files(*packages: str) -> list[Path]:
    return [p for package in packages for p in sorted((ROOT / package).rglob("*.py"))]


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _fx_internal(name: str) -> bool:
    return name.startswith(("torch.ao", "torch.fx"))


@pytest.mark.parametrize("path", _files("quant", "tasks", "flows", "quantstage"), ids=_id)
def test_torch_ao_and_fx_only_in_the_fx_engine(path: Path) -> None:
    """torch.ao and torch.fx belong to the FX engine; the PT2E engine reads torch.export's graphs, which are
    torch.fx graphs (``torch.fx.Node``), and nothing else of them."""
    if FX_ENGINE in path.parents:
        return
    offending = {n for n in _imports(path) | _attribute_chains(path) if _fx_internal(n)}
    if PT2E_ENGINE in path.parents:
        offending -= {"torch.fx", "torch.fx.Node"}
    assert not offending, f"{_id(path)} uses {sorted(offending)}: FX belongs behind the engine seam (quant/engines/fx)"


@pytest.mark.parametrize("path", _files("quant", "tasks", "flows", "quantstage", "bench"), ids=_id)
def test_torchao_only_in_the_pt2e_engine(path: Path) -> None:
    """Every torchao import is in quant/engines/pt2e (bench/pt2e.py, the peer row, is the one exception)."""
    if PT2E_ENGINE in path.parents or path == ROOT / "bench" / "pt2e.py":
        return
    offending = {n for n in _imports(path) if n.split(".")[0] == "torchao"}
    assert not offending, f"{_id(path)} imports {sorted(offending)}: torchao belongs in quant/engines/pt2e"


@pytest.mark.parametrize("path", _files("quant", "tasks", "flows", "quantstage"), ids=_id)
def test_only_the_engine_interface_outside_the_engine(path: Path) -> None:
    """Outside quant/engines/fx, the FX engine is reached through quant.engines (engine_for/get_engine);
    quant/__init__ re-exports the convert_fx drop-in, the one sanctioned exception."""
    if FX_ENGINE in path.parents or path == ROOT / "quant" / "__init__.py" or path.parent == ROOT / "quant" / "engines":
        return
    offending = {n for n in _imports(path) if n.startswith("quantstage.quant.engines.fx")}
    assert not offending, (
        f"{_id(path)} imports {sorted(offending)}: use quantstage.quant.engines (the Engine interface)"
    )


@pytest.mark.parametrize("path", _files("quant"), ids=_id)
def test_quant_is_pure_torch_and_pydantic(path: Path) -> None:
    offending = {
        name
        for name in _imports(path)
        if name.split(".")[0] in ("prefect", "mlflow") or name.startswith(("quantstage.tasks", "quantstage.flows"))
    }
    assert not offending, f"{_id(path)} imports {offending}: quant/ must not know Prefect, MLflow, tasks or flows"


@pytest.mark.parametrize("path", _files("tasks"), ids=_id)
def test_tasks_do_not_import_flows(path: Path) -> None:
    offending = {name for name in _imports(path) if name.startswith("quantstage.flows")}
    assert not offending, f"{_id(path)} imports {offending}: flows compose tasks, not the other way round"


@pytest.mark.parametrize("path", _files("flows"), ids=_id)
def test_flows_do_not_talk_to_mlflow(path: Path) -> None:
    offending = {name for name in _imports(path) if name.split(".")[0] == "mlflow"}
    if path.parent.name == "cli":  # prints where to look (the tracking URI), no tracking I/O
        offending.discard("mlflow")
    assert not offending, f"{_id(path)} imports {offending}: MLflow I/O belongs in tasks/"


@pytest.mark.parametrize("path", _files("quant", "tasks", "flows", "quantstage", "tests", "bench"), ids=_id)
def test_one_installed_package(path: Path) -> None:
    """Nothing imports the source folders by their bare names: they are installed as quantstage.*."""
    offending = {n for n in _imports(path) if n.split(".")[0] in ("quant", "tasks", "flows")}
    assert not offending, (
        f"{_id(path)} imports {offending}: import quantstage.quant / quantstage.tasks / quantstage.flows"
    )


@pytest.mark.parametrize("path", _files("quant", "tasks", "flows", "quantstage"), ids=_id)
def test_modules_stay_small(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{_id(path)} has {lines} lines (at most {MAX_LINES}): split it by what it does"


def test_pyproject_installs_every_package_under_quantstage() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"quantstage"} | {
        "quantstage." + ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("quant", "tasks", "flows")
        for init in (ROOT / top).rglob("__init__.py")
    }
    folders |= {  # packages inside quantstage/ itself (the webhook receiver)
        ".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "quantstage").rglob("*/__init__.py")
    }
    assert set(config["packages"]) == folders
    assert config["package-dir"] == {
        "quantstage": "quantstage",
        "quantstage.quant": "quant",
        "quantstage.tasks": "tasks",
        "quantstage.flows": "flows",
    }
