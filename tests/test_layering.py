"""The layering the project promises: one package, FX behind the engine seam, quant/ free of Prefect
and MLflow, flows free of MLflow I/O, small modules, small functions in tasks/ and flows/."""

import ast
import re
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
FX_ENGINE = ROOT / "quant" / "engines" / "fx"
PT2E_ENGINE = ROOT / "quant" / "engines" / "pt2e"
MAX_LINES = 400
MAX_FUNCTION_LINES = 60


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
        offending -= {"torch.fx", "torch.fx.Node", "torch.fx.GraphModule"}  # torch.export's graphs
        offending = {n for n in offending if not n.startswith("torch.fx.experimental.symbolic_shapes")}
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


@pytest.mark.parametrize("path", _files("quant/config"), ids=_id)
def test_config_imports_no_engine(path: Path) -> None:
    """The engines import the spec (quant.config); never the other way round: building a spec needs no engine."""
    offending = {name for name in _imports(path) if name.startswith("quantstage.quant.engines")}
    assert not offending, (
        f"{_id(path)} imports {sorted(offending)}: quant/config is what every engine reads; an engine's own "
        f"fields belong in its spec.py (quant/engines/<name>/spec.py)"
    )


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


def _long_functions(path: Path) -> list[str]:
    """``name (N lines)`` of every function or method in ``path`` longer than ``MAX_FUNCTION_LINES``
    (from its ``def`` line to its last line, decorators aside)."""
    long = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                long.append(f"{node.name} ({lines} lines)")
    return long


@pytest.mark.parametrize("path", _files("tasks", "flows"), ids=_id)
def test_functions_stay_small(path: Path) -> None:
    """Tasks and flows read as their story: no function or method over MAX_FUNCTION_LINES lines."""
    long = _long_functions(path)
    assert not long, (
        f"{_id(path)}: {', '.join(long)} (at most {MAX_FUNCTION_LINES} lines each): split it into named steps"
    )


# What an engine ships is the engine's business: tasks and flows call Engine.ship / Engine.load and read the
# engine-neutral Shipped and ModelForm, never an artifact's class, its form's name or its file suffix.
_FORM_NAMES = {"rebuild_bundle", "aoti_package", "exported_program", "fx_graph_module"}
_FORM_NAME = re.compile(r"torchscript\w*|[\w*.-]*\.(pt|pt2|pth)")
_NEUTRAL_ENGINE_MODULES = {
    "quantstage.quant.engines",
    "quantstage.quant.engines.base",
    "quantstage.quant.engines.registry",
}


def _engine_classes() -> set[str]:
    """The classes quant/engines/ and quant/ship/ define: artifacts, loaded packages, engines, forms."""
    return {
        node.name
        for path in _files("quant/engines", "quant/ship")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
    }


def _type_checked(node: ast.Call) -> set[str]:
    """The class names ``isinstance(x, ...)`` / ``issubclass(x, ...)`` tests against."""
    if not (isinstance(node.func, ast.Name) and node.func.id in ("isinstance", "issubclass") and len(node.args) == 2):
        return set()
    checked = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
    return {c.id if isinstance(c, ast.Name) else c.attr for c in checked if isinstance(c, (ast.Name, ast.Attribute))}


def _artifact_branches(path: Path, classes: set[str]) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            found += [f"isinstance on {name}" for name in sorted(_type_checked(node) & classes)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in _FORM_NAMES or _FORM_NAME.fullmatch(node.value):
                found.append(f"the string {node.value!r}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("quantstage.quant.engines."):
            if node.module not in _NEUTRAL_ENGINE_MODULES:
                found.append(f"an import from {node.module} (an engine's own module)")
    return found


@pytest.mark.parametrize("path", _files("tasks", "flows"), ids=_id)
def test_tasks_and_flows_never_branch_on_an_artifact(path: Path) -> None:
    """No isinstance on an engine's or a shipped form's class, no form name (``rebuild_bundle``,
    ``aoti_package``, ``torchscript...``) or model file suffix (``.pt``, ``.pt2``), no engine's own module."""
    found = _artifact_branches(path, _engine_classes())
    assert not found, (
        f"{_id(path)} uses {'; '.join(found)}: what an engine ships is its own business; fix: call "
        f"Engine.ship / Engine.load and read Shipped / ModelForm (quant.ship.shipped)"
    )


def test_the_artifact_scan_finds_what_it_forbids(tmp_path: Path) -> None:
    """The scan above flags the branches tasks used to have (a scan that matched nothing would pass)."""
    old = tmp_path / "old_task.py"
    old.write_text(
        "from quantstage.quant.engines.pt2e.aoti import AotiArtifact\n"
        "def log(shipped, shipped_as, out_dir):\n"
        "    if isinstance(shipped, (AotiArtifact, TorchScriptArtifact)) or shipped_as == 'rebuild_bundle':\n"
        "        return out_dir / 'model_int8.pt'\n"
        "    return 'torchscript_frozen'\n"
    )
    found = sorted(_artifact_branches(old, _engine_classes()))
    assert found == [
        "an import from quantstage.quant.engines.pt2e.aoti (an engine's own module)",
        "isinstance on AotiArtifact",
        "isinstance on TorchScriptArtifact",
        "the string 'model_int8.pt'",
        "the string 'rebuild_bundle'",
        "the string 'torchscript_frozen'",
    ], found


def test_every_package_under_quantstage_is_installed() -> None:
    """setup.py finds the packages from the folders pyproject.toml maps (an engine's folder needs no line)."""
    import importlib.util

    loader = importlib.util.spec_from_file_location("quantstage_setup", ROOT / "setup.py")
    assert loader is not None and loader.loader is not None
    setup = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(setup)
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"quantstage"} | {
        "quantstage." + ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("quant", "tasks", "flows")
        for init in (ROOT / top).rglob("__init__.py")
    }
    folders |= {  # packages inside quantstage/ itself (the webhook receiver)
        ".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "quantstage").rglob("*/__init__.py")
    }
    assert set(setup.packages()) == folders
    assert "packages" not in config, "pyproject.toml lists packages: setup.py finds them"
    assert (
        config["package-dir"]
        == setup.ROOTS
        == {
            "quantstage": "quantstage",
            "quantstage.quant": "quant",
            "quantstage.tasks": "tasks",
            "quantstage.flows": "flows",
        }
    )
