"""Every dotted path quantstage shows a reader — in an error message, a docstring, a comment, the README,
CONTRIBUTING or deploy/README — names something that exists: a test imports each one it finds."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

# quant.x.y, tasks.x, flows.x.y or quantstage.… written out (not part of a file path or a longer name)
_DOTTED = re.compile(r"(?<![\w./-])((?:quantstage\.)?(?:quant|tasks|flows)(?:\.[A-Za-z_]\w*)+)")
_SUFFIXES = (".py", ".md", ".yaml", ".yml", ".json", ".txt")


def _sources() -> list[Path]:
    docs = [REPO_ROOT / name for name in ("README.md", "CONTRIBUTING.md", "deploy/README.md")]
    code = [
        p for folder in ("quant", "tasks", "flows", "quantstage") for p in sorted((REPO_ROOT / folder).rglob("*.py"))
    ]
    return docs + code


def _resolves(path: str) -> bool:
    parts = (path if path.startswith("quantstage.") else f"quantstage.{path}").split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def _paths() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for source in _sources():
        for match in _DOTTED.finditer(source.read_text()):
            path = match.group(1).rstrip(".")
            if not path.endswith(_SUFFIXES):
                found.setdefault(path, set()).add(str(source.relative_to(REPO_ROOT)))
    return found


def test_the_scan_finds_the_paths_it_checks() -> None:
    assert len(_paths()) > 50  # a regex that silently matched nothing would pass the test below


@pytest.mark.parametrize("path", sorted(_paths()))
def test_every_dotted_path_resolves(path: str) -> None:
    assert _resolves(path), f"{path!r} (in {sorted(_paths()[path])}) names nothing importable; fix the reference"
