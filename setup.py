"""The installed package list, found from the folders; pyproject.toml holds the rest of the packaging.

quantstage is one installed package whose source folders keep their own names (pyproject.toml's
``[tool.setuptools.package-dir]``, mirrored in ``ROOTS``); every folder with an ``__init__.py`` under them
is a package, so an engine added as ``quant/engines/<name>/`` installs with no line here.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
ROOTS = {
    "quantstage": "quantstage",
    "quantstage.quant": "quant",
    "quantstage.tasks": "tasks",
    "quantstage.flows": "flows",
}


def packages() -> list[str]:
    """Every package under the roots, by its installed name."""
    found = []
    for name, folder in ROOTS.items():
        for init in sorted((HERE / folder).rglob("__init__.py")):
            relative = init.parent.relative_to(HERE / folder)
            found.append(".".join([name, *relative.parts]))
    return sorted(set(found))


if __name__ == "__main__":
    setup(packages=packages())
