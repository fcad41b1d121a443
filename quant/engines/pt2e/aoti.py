"""The PT2E engine's torch.export forms, saved, loaded back in this process and verified before anything is
logged: AOTInductor packages (``.pt2``, what the engine ships) and exported programs (``torch.export.save``,
the reference model for other compilers).

A package loads with ``torch._inductor.aoti_load_package`` in a process that has only torch: no
quantstage, no model class, no torchao. MLflow serves it as a pyfunc model whose loader,
``quantstage.tasks.aoti_model`` (a models-from-code file), needs only mlflow, numpy and torch;
``load_package`` opens it again from the folder ``ship`` saved or the logged model's folder.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from quantstage.quant.errors import ArtifactError
from quantstage.quant.ship.shipped import ModelForm, Shipped, VariantResult

__all__ = [
    "AOTI_LOADER",
    "AOTI_SUFFIX",
    "PACKAGE_FILE",
    "AotiArtifact",
    "LoadedPackage",
    "ProgramArtifact",
    "bind_keywords",
    "load_aoti",
    "load_package",
    "package_keywords",
    "save_program",
    "ship_package",
    "shipped_package",
]

AOTI_SUFFIX = ".pt2"
PACKAGE_FILE = "model_int8.pt2"  # what ``ship`` saves in its folder (the logged model's ``artifacts/``)
AOTI_LOADER = "quantstage.tasks.aoti_model"  # MLflow's pyfunc of a package: needs mlflow, numpy and torch only


@dataclasses.dataclass(frozen=True)
class AotiArtifact:
    """A saved AOTInductor package that was loaded back and matched the in-memory model
    (``max_abs_diff`` at most the tolerance)."""

    path: Path
    module: LoadedPackage  # the package loaded back from ``path``
    size_bytes: int
    sha256: str
    max_abs_diff: float
    compile_s: float
    method: str = "aoti_package"


def package_keywords(runner: Any) -> tuple[str, ...]:
    """The keyword names a loaded AOTInductor package was exported with (its ``in_spec``'s kwargs), in order;
    ``()`` for a package exported with positional arguments."""
    try:
        spec = torch.utils._pytree.treespec_loads(runner.loader.get_call_spec()[0])
        return tuple(str(k) for k in spec.child(1).context)
    except Exception:  # an older package or runner without a call spec: positional
        return ()


def bind_keywords(names: Sequence[str], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Positional ``args`` and ``kwargs`` as the keyword set ``names`` (TypeError naming what is wrong)."""
    if len(args) > len(names):
        raise TypeError(f"the model takes {len(names)} arguments ({', '.join(names)}), got {len(args)} positional")
    bound = dict(zip(names, args))
    twice = sorted(set(bound) & set(kwargs))
    bound.update(kwargs)
    unknown = sorted(set(bound) - set(names))
    missing = [n for n in names if n not in bound]
    if twice or unknown or missing:
        problems = [
            f"{what}: {', '.join(which)}"
            for what, which in (("given twice", twice), ("unknown", unknown), ("missing", missing))
            if which
        ]
        raise TypeError(f"the model takes ({', '.join(names)}), all of them; {'; '.join(problems)}")
    return {n: bound[n] for n in names}


class LoadedPackage(torch.nn.Module):
    """An AOTInductor package loaded for running: a module whose forward calls the compiled model with
    positional and/or keyword tensors (bound to the names it was exported with), and whose size is the
    package file's."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._runner = torch._inductor.aoti_load_package(str(path))
        self.names = package_keywords(self._runner)  # () when exported positionally

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.names:
            return self._runner(*args, **kwargs)
        return self._runner(**bind_keywords(self.names, args, kwargs))


def load_aoti(path: str | Path) -> LoadedPackage:
    """The runnable model of an AOTInductor package."""
    return LoadedPackage(path)


def load_package(folder: Path) -> LoadedPackage:
    """The package in ``folder``: the folder ``ship`` saved in, or a logged model's folder downloaded from
    MLflow (a package file is loaded as is)."""
    if folder.is_file():
        return load_aoti(folder)
    found = sorted(folder.rglob(f"*{AOTI_SUFFIX}"))
    if len(found) != 1:
        raise ArtifactError(
            f"{str(folder)!r} holds {len(found)} AOTInductor packages ({', '.join(p.name for p in found) or 'none'}); "
            f"allowed: exactly one; fix: give the folder the PT2E engine shipped, or the logged model's folder"
        )
    return load_aoti(found[0])


def _max_abs_diff(expected: Any, got: Any) -> float:
    a = [t for t in torch.utils._pytree.tree_leaves(expected) if isinstance(t, torch.Tensor)]
    b = [t for t in torch.utils._pytree.tree_leaves(got) if isinstance(t, torch.Tensor)]
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return float("inf")
    return max((float((x.double() - y.double()).abs().max()) for x, y in zip(a, b) if x.numel()), default=0.0)


def ship_package(
    package: Path,
    path: Path,
    model: Callable[..., Any],
    verify_inputs: Sequence[tuple[Any, ...]],
    *,
    tolerance: float = 0.0,
    compile_s: float = 0.0,
) -> AotiArtifact:
    """Copy ``package`` to ``path``, load it back and check it reproduces ``model`` on ``verify_inputs``
    (max abs difference ≤ ``tolerance``); ArtifactError otherwise."""
    path = path.with_suffix(AOTI_SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(package, path)
    loaded = load_aoti(path)
    worst = 0.0
    with torch.no_grad():
        for args in verify_inputs:
            worst = max(worst, _max_abs_diff(model(*args), loaded(*args)))
    if worst > tolerance:
        raise ArtifactError(
            f"the AOTInductor package {path.name} loaded back differs from the lowered model by {worst:g} "
            f"(tolerance {tolerance:g}); fix: rerun the conversion (a compiler cache fault), or use engine 'fx'"
        )
    data = path.read_bytes()
    return AotiArtifact(
        path=path,
        module=loaded,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        max_abs_diff=worst,
        compile_s=compile_s,
    )


@dataclasses.dataclass(frozen=True)
class ProgramArtifact:
    """A saved ``torch.export`` program (``torch.export.save``) that was loaded back and matched the model.
    Loading it needs torch's quantized_decomposed ops registered (``import torch.ao.quantization.fx._decomposed``
    or torchao)."""

    path: Path
    size_bytes: int
    sha256: str
    method: str = "exported_program"


def save_program(
    program: Any, path: Path, model: Callable[..., Any], verify_inputs: Sequence[tuple[Any, ...]]
) -> ProgramArtifact:
    """Save the ExportedProgram ``program`` at ``path``, load it back and check it reproduces ``model``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    loaded = torch.export.load(str(path)).module()
    with torch.no_grad():
        worst = max((_max_abs_diff(model(*args), loaded(*args)) for args in verify_inputs), default=0.0)
    if worst > 0.0:
        raise ArtifactError(
            f"the exported program {path.name} loaded back differs from the model by {worst:g}; fix: report it "
            f"with the model (torch.export.save/load round trip)"
        )
    data = path.read_bytes()
    return ProgramArtifact(path=path, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())


def shipped_package(artifact: AotiArtifact) -> Shipped:
    """A verified package as ``Shipped``: a pyfunc model of the package file, served by ``AOTI_LOADER``."""
    form = ModelForm(
        "pyfunc", artifact.module, files={"package": str(artifact.path)}, loader=AOTI_LOADER, requirements=("numpy",)
    )
    variant = VariantResult(artifact.method, None, artifact.max_abs_diff, True, True)
    return Shipped(
        method=artifact.method,
        path=artifact.path,
        size_bytes=artifact.size_bytes,
        form=form,
        load=functools.partial(load_aoti, artifact.path),
        variants=[variant],
    )
