"""Lower a converted PT2E model with Inductor into an AOTInductor package (``.pt2``), and run it.

The package is compiled with freezing and under ``torch.no_grad()``: Inductor folds the
quantize/dequantize patterns into oneDNN int8 kernels only then (without it the model silently
stays fp32, pytorch/ao#4566; compiled with grad on, the digits CNN ran 0.45 ms instead of 0.31).
It loads with ``torch._inductor.aoti_load_package`` in a process that has only torch.

torch 2.13 workaround: with a dynamic batch, Inductor predicts a contiguous output layout for a
quantized conv whose input has one channel (the float-conv rule of pytorch#121400) while oneDNN's
prepacked qconv writes channels-last; AOTInductor then returns garbage. ``_qconv_channels_last``
forces channels-last for quantized convs while compiling (what the static-shape path does), and
``lower`` checks every package against the reference model before anything uses it.

Four more torch 2.13 corrections are applied while compiling (each a context manager below; measured with
``python -m bench.pt2e_speed``, one thread, same process):

- ``_qconv_prepack_shapes``: int8 conv weights packed for a concrete shape under a dynamic batch (ResNet-18
  batch 1: 5.7 -> 4.9 ms, the static-batch package's speed);
- ``_zero_in_dynamic_range``: dynamic ``choose_qparams`` with the reference's zero-including range (an
  activation of one sign saturated: 8.9 dB to the reference on inputs in [1, 2));
- ``_realized_qparams`` and ``_vectorized_round_to_int8``: dynamic int8 activations quantized in vector code
  instead of a per-element ``roundf`` under recomputed scales (bench encoder: about 2x faster).

A package that differs from the reference by more than ``min_sqnr_db`` is still accepted when it is as close
to the float model as the reference is (``_within_quantization_noise``): dynamic int8 on a model with
activation outliers (all-MiniLM-L6-v2) has no single rounding to agree with.
"""

from __future__ import annotations

import collections
import inspect
import logging
import os
import re
import shutil
import tempfile
import time
import weakref
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from quantstage.quant.engines.pt2e._torchao import pt2e_quiet, torchao
from quantstage.quant.engines.pt2e.aoti import LoadedPackage
from quantstage.quant.engines.pt2e.capture import Bound
from quantstage.quant.engines.pt2e.inductor_fixes import inductor_fixes
from quantstage.quant.errors import ConversionError, DataError
from quantstage.quant.ship.signature import named_module

__all__ = ["PORTABLE_MARCH", "AotiModule", "compile_package", "lower_to_package", "portable_target"]

logger = logging.getLogger(__name__)


PORTABLE_MARCH = "x86-64-v3"


def portable_target() -> dict[str, Any]:
    """Inductor's C++ target for the package. Inductor compiles for the building CPU (``-march=native``) by
    default, so a package built on an AVX-512 machine can die with SIGILL on an AVX2 server; quantstage
    builds for x86-64-v3 (AVX2, every x86 server since ~2015; the int8 convolutions and matmuls are
    oneDNN's, which pick the CPU's best instructions at run time). ``TORCHINDUCTOR_CPP_MARCH`` (torch's
    own setting) overrides it, e.g. ``native`` for a package that runs only where it was built."""
    if os.environ.get("TORCHINDUCTOR_CPP_MARCH"):
        return {}
    return {"cpp.march": PORTABLE_MARCH, "cpp.simdlen": 256}


def inductor_configs() -> dict[str, Any]:
    """The Inductor settings every package is compiled with."""
    return {"freezing": True, **portable_target()}


def compile_package(
    module: torch.nn.Module,
    example_args: tuple[Any, ...],
    dynamic_shapes: tuple[Any, ...],
    path: Path,
    names: Sequence[str] | None = None,
    configs: dict[str, Any] | None = None,
) -> tuple[Path, float]:
    """AOT-compile ``module`` (re-exported with ``dynamic_shapes``) into the package ``path``; return
    it and the seconds it took (export + compile). With ``names`` (forward's argument names) the package
    is exported with keyword arguments: ``aoti_load_package(path)(**named)`` takes them in any order
    (exactly that set; ``LoadedPackage`` binds positional calls to them)."""
    torchao()  # registers the int8 fusion passes Inductor needs
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    keywords = names is not None and len(names) == len(example_args) and all(n.isidentifier() for n in names)
    try:
        with torch.no_grad(), pt2e_quiet():
            if keywords and names is not None:
                program = torch.export.export(
                    named_module(module, names),
                    (),
                    kwargs=dict(zip(names, example_args)),
                    dynamic_shapes=dict(zip(names, dynamic_shapes)),
                    strict=False,
                )
            else:
                program = torch.export.export(
                    module, example_args, dynamic_shapes=_for_signature(module, dynamic_shapes), strict=False
                )
            with inductor_fixes():
                out = torch._inductor.aoti_compile_and_package(
                    program, package_path=str(path), inductor_configs={**inductor_configs(), **(configs or {})}
                )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        compiler = "Cpp" in type(exc).__name__ or "g++" in first or "gcc" in first
        fix = "install a C++ compiler (g++), or use engine 'fx'" if compiler else "use engine 'fx'"
        raise ConversionError(
            f"AOTInductor could not compile the quantized model ({type(exc).__name__}: {first[:300]}); fix: {fix}"
        ) from exc
    return Path(out), time.perf_counter() - started


def _for_signature(module: torch.nn.Module, dynamic_shapes: tuple[Any, ...]) -> Any:
    """``dynamic_shapes`` nested as torch.export wants them for ``module.forward``: a wrapper taking
    ``*args`` gets them as its one variadic group."""
    kinds = [p.kind for p in inspect.signature(module.forward).parameters.values()]
    if kinds and kinds[0] is inspect.Parameter.VAR_POSITIONAL:
        return (dynamic_shapes,)
    return dynamic_shapes


def kernel_census(path: Path) -> dict[str, int]:
    """How often the package's generated wrapper calls each ``aoti_torch_cpu_*`` kernel (the int8 ones are
    ``_qconv*`` / ``_qlinear*``)."""
    with zipfile.ZipFile(path) as archive:
        source = "".join(
            archive.read(name).decode(errors="replace") for name in archive.namelist() if name.endswith(".wrapper.cpp")
        )
    return dict(collections.Counter(re.findall(r"aoti_torch_cpu_(\w+)", source)))


class AotiModule(Bound):
    """A lowered PT2E model: an AOTInductor package, loaded and callable like the float model.

    ``path`` is the package (in a folder removed when this module is collected, unless copied
    out by shipping); ``reference`` the converted model it was compiled from; ``compile_s``
    the export + compile time.
    """

    def __init__(
        self,
        path: Path,
        names: Sequence[str],
        reference: torch.nn.Module,
        example_args: tuple[Any, ...],
        dynamic_shapes: tuple[Any, ...],
        compile_s: float,
    ) -> None:
        super().__init__(names)
        self.path = path
        self.reference = reference
        self.example_args = example_args
        self.dynamic_shapes = dynamic_shapes
        self.compile_s = compile_s
        self._runner = LoadedPackage(path)

    @property
    def code(self) -> str:
        """What the package runs: its native kernels, int8 ones first (logged as the model's code)."""
        census = kernel_census(self.path)
        int8 = {k: v for k, v in census.items() if k.startswith(("_q", "q"))}
        lines = [f"# AOTInductor package {self.path.name}: compiled in {self.compile_s:.1f} s", "# int8 kernels:"]
        lines += [f"#   {name} x{count}" for name, count in sorted(int8.items())] or ["#   none"]
        lines += ["# other kernels:"] + [f"#   {n} x{c}" for n, c in sorted(census.items()) if n not in int8]
        return "\n".join(lines) + "\n"

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        args = self.positional(args, kwargs)
        self._check(args)
        return self._runner(*args)

    def _check(self, args: tuple[Any, ...]) -> None:
        """AOTInductor checks no input shapes (a wrong one returns garbage): the exported shape, any batch."""
        if len(args) != len(self.example_args):
            raise DataError(
                f"the compiled model takes {len(self.example_args)} inputs ({', '.join(self.names)}), got {len(args)}"
            )
        for name, arg, example, dynamic in zip(self.names, args, self.example_args, self.dynamic_shapes):
            if not isinstance(example, torch.Tensor):
                continue
            fixed = slice(1, None) if dynamic else slice(None)
            if (
                not isinstance(arg, torch.Tensor)
                or arg.dtype != example.dtype
                or arg.dim() != example.dim()
                or arg.shape[fixed] != example.shape[fixed]
            ):
                got = f"{tuple(arg.shape)} {arg.dtype}" if isinstance(arg, torch.Tensor) else type(arg).__name__
                want = ("(N, " + ", ".join(map(str, example.shape[1:])) + ")") if dynamic else str(tuple(example.shape))
                raise DataError(
                    f"input {name!r} of the compiled model is {got}; it was exported for {want} {example.dtype}; "
                    f"fix: give inputs of that shape and dtype"
                )


def lower_to_package(
    reference: torch.nn.Module,
    names: Sequence[str],
    example_args: tuple[Any, ...],
    dynamic_shapes: tuple[Any, ...],
    *,
    min_sqnr_db: float = 25.0,
) -> AotiModule:
    """Compile ``reference`` into a package in a temporary folder and check it reproduces the reference
    at the example batch and at batch 1. A model of several inputs is exported with keyword arguments
    named ``names`` (the raw package then takes exactly those keywords, in any order) (SQNR ≥ ``min_sqnr_db``): a mis-lowered package is an error."""
    folder = Path(tempfile.mkdtemp(prefix="quantstage-aoti-"))
    keywords = names if len(names) > 1 else None  # one input stays positional: the raw package takes model(x)
    path, seconds = compile_package(reference, example_args, dynamic_shapes, folder / "model.pt2", keywords)
    module = AotiModule(path, names, reference, example_args, dynamic_shapes, seconds)
    weakref.finalize(module, shutil.rmtree, folder, True)
    for label, args in (("example batch", example_args), ("batch 1", _first_row(example_args))):
        with torch.no_grad():
            expected, got = reference(*args), module(*args)
        sqnr = _sqnr(expected, got)
        if sqnr < min_sqnr_db:
            _within_quantization_noise(reference, args, expected, got, sqnr, label, min_sqnr_db)
    census = kernel_census(path)
    int8 = sum(v for k, v in census.items() if k.startswith(("_q", "q")))
    if int8 == 0:  # pytorch/ao#4566: without freezing/no_grad the patterns stay unfused and the model runs fp32
        logger.warning("the AOTInductor package calls no int8 kernel: Inductor did not fuse the quantized patterns")
    logger.info("AOTInductor package compiled in %.1f s (%d int8 kernel calls): %s", seconds, int8, path)
    return module


def _float_model(reference: torch.nn.Module) -> torch.nn.Module | None:
    """The float exported graph ``reference`` was quantized from (with its output key, if served through one)."""
    from quantstage.quant.data.outputs import OutputOf

    if isinstance(reference, OutputOf):
        inner = _float_model(reference.model)
        return None if inner is None else OutputOf(inner, reference.key)
    graph = getattr(reference, "float_graph", None)
    return graph if isinstance(graph, torch.nn.Module) else None


def _within_quantization_noise(
    reference: torch.nn.Module,
    args: tuple[Any, ...],
    expected: Any,
    got: Any,
    sqnr: float,
    label: str,
    min_sqnr_db: float,
    margin_db: float = 1.0,
) -> None:
    """Accept a package that disagrees with the reference by less than the quantization itself does: when both
    are about as close to the float model (SQNR to it within ``margin_db``), the package is another rounding
    of the same int8 model (dynamic int8 on a model with activation outliers: a one-step rounding difference
    in one layer changes the next layer's scale; all-MiniLM-L6-v2 measures ~17.5 dB to float for both, 20 dB
    to each other). Otherwise raise ConversionError."""
    float_model = _float_model(reference)
    if float_model is not None:
        with torch.no_grad():
            floats = float_model(*args)
        ref_db, pkg_db = _sqnr(floats, expected), _sqnr(floats, got)
        if pkg_db >= ref_db - margin_db:
            logger.info(
                "the AOTInductor package differs from the reference quantized model at the %s (SQNR %.1f dB) as "
                "much as int8 differs from float: both %.1f / %.1f dB to the float model; accepted",
                label,
                sqnr,
                ref_db,
                pkg_db,
            )
            return
        detail = f"; to the float model: package {pkg_db:.1f} dB, reference {ref_db:.1f} dB"
    else:
        detail = ""
    raise ConversionError(
        f"the AOTInductor package disagrees with the reference quantized model at the {label} (SQNR "
        f"{sqnr:.1f} dB < {min_sqnr_db:g}{detail}): an Inductor lowering bug; fix: use engine 'fx', or report it "
        f"with the model"
    )


def _first_row(args: tuple[Any, ...]) -> tuple[Any, ...]:
    batch = next((int(a.shape[0]) for a in args if isinstance(a, torch.Tensor) and a.dim() > 0), 0)
    return tuple(a[:1] if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == batch else a for a in args)


def _flat(output: Any) -> torch.Tensor:
    leaves = [t for t in torch.utils._pytree.tree_leaves(output) if isinstance(t, torch.Tensor)]
    return torch.cat([t.detach().double().flatten() for t in leaves]) if leaves else torch.zeros(1)


def _sqnr(expected: Any, got: Any) -> float:
    ref, out = _flat(expected), _flat(got)
    if ref.shape != out.shape:
        return float("-inf")
    noise = (ref - out).pow(2).sum()
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(ref.pow(2).sum().clamp_min(1e-30) / noise))
