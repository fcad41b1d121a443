"""A battery of bad inputs, as a careless user gives them: every one exits 2 (3 for a failed gate) with
one line on stderr that names the problem and the fix, no traceback, and nothing registered, moved or
left RUNNING in MLflow."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from torch import nn

from quantstage.flows.cli import EXIT_BAD_INPUT, EXIT_GATE_FAILED, main
from tests.conftest import REPO_ROOT
from tests.helpers import register
from tests.models import Flat100, GatedNet

HERE = "tests.e2e.test_bad_inputs"


# ---------------------------------------------------------------------------------------- factories


class Raising(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("this model's forward is broken")


class DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.fc(x.flatten(1))}


def raising_factory() -> nn.Module:
    raise ValueError("hidden size must be divisible by the number of heads")


def not_a_module() -> object:
    return {"weights": [1, 2, 3]}


def flat_factory() -> nn.Module:
    return Flat100()


def forward_raises() -> nn.Module:
    return Raising()


def dict_out() -> nn.Module:
    return DictOut()


# ---------------------------------------------------------------------------------------- files


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("bad")
    out: dict[str, str] = {}

    def write(name: str, data: bytes | str) -> None:
        path = d / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        out[name] = str(path)

    write("binary.yaml", b"\x00\x01\x02\xff\xfebinary")
    write("broken.yaml", "model_uri: [a\n  b: c\n")
    write("list.yaml", "- model_uri: models:/x@y\n")
    write("typo.yaml", "modle_uri: models:/x@y\n")
    write("bad_mode.yaml", "model_uri: models:/m@a\nspec:\n  mode: bogus\n")
    write("fallback_qat.yaml", "model_uri: models:/m@a\nqat_checkpoint: q.pt\nfallback:\n  enabled: true\n")
    write("broken.json", '{"backend": "x86",,}')
    write("unknown_field.yaml", "backend: x86\ncalibration_batchez: 4\n")
    write("list_spec.yaml", "- backend: x86\n")
    write("strict_skip.yaml", "skip_modules: [head.nope]\nstrict_skips: true\n")
    write("truncated.safetensors", b'\x10\x00\x00\x00\x00\x00\x00\x00{"a":')
    write("notes.txt", "hello")
    torch.save(Flat100().state_dict(), d / "flat.pt")
    out["flat.pt"] = str(d / "flat.pt")
    x = np.random.rand(64, 1, 8, 8).astype(np.float32)
    x[3, 0, 2, 2] = np.nan
    np.savez(d / "nan.npz", x=x, labels=np.zeros(64, dtype=np.int64))
    np.savez(d / "strings.npz", x=np.array(["a sentence"] * 8), labels=np.zeros(8, dtype=np.int64))
    np.save(d / "objects.npy", np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)
    torch.save({"x": torch.rand(8, 1, 8, 8), "meta": Path("/tmp")}, d / "pickled.pt")
    for name in ("nan.npz", "strings.npz", "objects.npy", "pickled.pt"):
        out[name] = str(d / name)
    return out


# ---------------------------------------------------------------------------------------- running


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, list[str]]:
    code = main(argv)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    return code, err


def _check(code: int, err: list[str], expected: int, pattern: str) -> None:
    assert code == expected, (code, err)
    lines = [line for line in err if line.startswith("quantstage:")]
    assert len(lines) == 1, err  # one line of our own (Prefect's own log lines may precede it)
    assert "Traceback" not in "\n".join(err), err
    assert re.search(pattern, lines[0]), lines[0]
    assert "\x1b[" not in lines[0], lines[0]  # no terminal colour codes


def _store_state() -> tuple[set[str], dict[str, dict[str, str]], int]:
    client = mlflow.MlflowClient()
    models = {m.name: dict(m.aliases) for m in client.search_registered_models()}
    running = sum(
        1
        for e in client.search_experiments()
        for r in client.search_runs([e.experiment_id], "attributes.status = 'RUNNING'")
    )
    return set(models), models, running


# ------------------------------------------------------------------------------ before any flow runs

PARAMETERS: list[tuple[list[str], str]] = [
    (["convert"], r"no model given; pass MODEL_URI"),
    (["convert", "digits-cnn"], r"model_uri 'digits-cnn' is not of a supported form"),
    (["convert", "models:/"], r"is not of a supported form"),
    (["convert", "s3://bucket/model"], r"is not of a supported form"),
    (
        ["convert", "models:/m@a", "--mode", "int4"],
        r"spec\.mode: Input should be 'static', 'dynamic', 'float16' or 'qat'",
    ),
    (["convert", "models:/m@a", "--backend", "arm"], r"spec\.backend: .*'arm'"),
    (
        ["convert", "models:/m@a", "--calibration-batches", "0"],
        r"spec\.calibration_batches: .*greater than or equal to 1",
    ),
    (["convert", "models:/m@a", "--calibration-batches", "many"], r"argument --calibration-batches: invalid int value"),
    (["convert", "models:/m@a", "--skip-object-type", "torch.nn.Lineer"], r"cannot resolve 'torch\.nn\.Lineer'"),
    (["convert", "models:/m@a", "--skip-module", " head"], r"skip_modules entry ' head' is not a module path"),
    (
        ["convert", "models:/m@a", "--tracing", "partial"],
        r"spec\.tracing: Input should be 'auto', 'whole' or 'submodules'",
    ),
    (["convert", "models:/m@a", "--task", "translation"], r"evaluation\.task: Input should be"),
    (["convert", "models:/m@a", "--pooling", "max"], r"evaluation\.pooling: Input should be 'mean', 'cls' or 'none'"),
    (["convert", "models:/m@a", "--promote-if", "always"], r"promote_if: Input should be 'gates' or 'better'"),
    (
        ["convert", "models:/m@a", "--max-accuracy-drop", "-0.5"],
        r"gates\.max_accuracy_drop: .*greater than or equal to 0",
    ),
    (["convert", "models:/m@a", "--max-accuracy-drop", "a lot"], r"'a lot' is not a number; give one, or none"),
    (["convert", "models:/m@a", "--min-cosine", "1.5"], r"gates\.min_cosine: .*less than or equal to 1"),
    (
        ["convert", "models:/m@a", "--min-quantized-fraction", "2"],
        r"gates\.min_quantized_fraction: .*less than or equal to 1",
    ),
    (["convert", "models:/m@a", "--alias", "latest"], r"alias 'latest' is reserved by MLflow"),
    (["convert", "models:/m@a", "--alias", "V2"], r"alias 'V2' is reserved by MLflow"),
    (["convert", "models:/m@a", "--alias", "prod.v1"], r"alias 'prod\.v1' may hold only letters, digits"),
    (
        ["convert", "models:/m@a", "--registered-name", "team/model"],
        r"registered_name 'team/model' is not a registry name",
    ),
    (["convert", "models:/m@a", "--registered-name", "../etc"], r"registered_name '\.\./etc' is not a registry name"),
    (["convert", "models:/m@a", "--registered-name", "a:b"], r"registered_name 'a:b' is not a registry name"),
    (["convert", "models:/m@a", "--registered-name", "m"], r"registered_name 'm' is the source model's own name"),
    (["convert", "models:/m/3", "--registered-name", "m"], r"is the source model's own name: .*fix: pick another name"),
    (["convert", "models:/m@a", "--model-factory", "pkg.mod:build"], r"give exactly one of model_uri"),
    (["convert", "--model-factory", "nocolon"], r"factory 'nocolon' must be 'package\.module:callable'"),
    (
        ["convert", "--model-factory", f"{HERE}:flat_factory", "--model-kwarg", "width"],
        r"--model-kwarg 'width' is not KEY=VALUE",
    ),
    (
        ["convert", "--model-factory", f"{HERE}:flat_factory", "--data-kwarg", "=3"],
        r"--data-kwarg '=3' is not KEY=VALUE",
    ),
    (["convert", "models:/m@a", "--data", "mnist"], r"data\.source"),
    (["convert", "models:/m@a", "--batch-size", "0"], r"data\.batch_size: .*greater than or equal to 1"),
    (["convert", "models:/m@a", "--bogus"], r"unrecognized arguments: --bogus"),
    (["convert", "--config", "/nonexistent/params.yaml"], r"config file '/nonexistent/params\.yaml' does not exist"),
    (
        ["convert", "models:/m@a", "--spec", "/nonexistent/spec.yaml"],
        r"spec file '/nonexistent/spec\.yaml' does not exist",
    ),
    (
        ["convert", "models:/m@a", "--spec", str(REPO_ROOT / "deploy/specs/float16.yaml"), "--backend", "arm"],
        r"spec\.backend",
    ),
    (
        ["convert", "models:/m@a", "--engine", "tvm"],
        r"spec\.engine: Input should be 'fx', 'pt2e' or 'auto' \(got 'tvm'\)",
    ),
    (
        ["convert", "models:/m@a", "--engine", "pt2e", "--backend", "qnnpack"],
        r"backend 'qnnpack' with engine 'pt2e'.*fix:",
    ),
    (["convert", "models:/m@a", "--engine", "pt2e", "--mode", "float16"], r"mode 'float16' with engine 'pt2e'.*fix:"),
    (
        ["convert", "models:/m@a", "--engine", "pt2e", "--tracing", "submodules"],
        r"tracing = 'submodules' has no meaning",
    ),
    (
        ["convert", "models:/m@a", "--engine", "pt2e", "--skip-object-type", "operator.add"],
        r"object type 'operator\.add' cannot be configured by X86InductorQuantizer; allowed: torch\.cat",
    ),
    (["sweep", "models:/m@a", "--grid", "engine=[fx, tvm]"], r"candidate 1 \(grid engine=\"tvm\"\)"),
    (["sweep", "models:/m@a"], r"no candidates: give candidates"),
    (["sweep", "models:/m@a", "--grid", "backend=x86"], r"--grid 'backend=x86' is not FIELD=\[v1, v2, \.\.\.\]"),
    (["sweep", "models:/m@a", "--grid", "backend=[x86, arm]"], r"candidate 1 \(grid backend=\"arm\"\)"),
    (["sweep", "models:/m@a", "--grid", "backend=[x86]", "--task-runner", "spark"], r"task_runner: Input should be"),
    (
        ["sweep", "models:/m@a", "--candidate", "/nonexistent/c.yaml"],
        r"spec file '/nonexistent/c\.yaml' does not exist",
    ),
    (["sweep", "models:/m@a", "--grid", "backend=[x86]", "--alias", "latest"], r"alias 'latest' is reserved"),
]

FILE_PARAMETERS: list[tuple[list[str], str]] = [
    (["convert", "--config", "{binary.yaml}"], r"config file '.*binary\.yaml' is not text"),
    (["convert", "--config", "{broken.yaml}"], r"config file '.*broken\.yaml' is not valid YAML: line 2, column 4"),
    (["convert", "--config", "{list.yaml}"], r"config file '.*list\.yaml' must hold a mapping of fields, got a list"),
    (["convert", "--config", "{typo.yaml}"], r"unknown key 'modle_uri'; did you mean 'model_uri'\?"),
    (["convert", "--config", "{bad_mode.yaml}"], r"spec\.mode: Input should be"),
    (["convert", "--config", "{fallback_qat.yaml}"], r"fallback\.enabled re-quantizes with layers kept float"),
    (["convert", "models:/m@a", "--spec", "{broken.json}"], r"spec file '.*broken\.json' is not valid JSON: line 1"),
    (
        ["convert", "models:/m@a", "--spec", "{unknown_field.yaml}"],
        r"calibration_batchez: Extra inputs are not permitted",
    ),
    (["convert", "models:/m@a", "--spec", "{list_spec.yaml}"], r"must hold a mapping of fields, got a list"),
    (["convert", "models:/m@a", "--spec", "{binary.yaml}"], r"spec file '.*binary\.yaml' is not text"),
    (["convert", "models:/m@a", "--data", "{notes.txt}"], r"data\.source"),
]


@pytest.mark.parametrize(("argv", "pattern"), PARAMETERS, ids=[" ".join(a)[:60] for a, _ in PARAMETERS])
def test_bad_parameters_exit_2_with_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], pattern: str) -> None:
    _check(*_run(capsys, argv), EXIT_BAD_INPUT, pattern)


@pytest.mark.parametrize(("argv", "pattern"), FILE_PARAMETERS, ids=[" ".join(a)[:60] for a, _ in FILE_PARAMETERS])
def test_bad_files_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], argv: list[str], pattern: str
) -> None:
    argv = [re.sub(r"\{([^}]+)\}", lambda m: files[m.group(1)], a) for a in argv]
    _check(*_run(capsys, argv), EXIT_BAD_INPUT, pattern)


# ------------------------------------------------------------------------------ once the flow runs

FLOW_CASES: list[tuple[list[str], str]] = [
    (
        ["convert", "models:/no-such-model@champion"],
        r"does not resolve in the MLflow registry .*register the model first",
    ),
    (["convert", "{flat100}"], r"data batch of shape \(32, 1, 8, 8\) does not fit Flat100\.forward"),
    (
        ["convert", "--model-factory", f"{HERE}:raising_factory"],
        r"model factory '.*:raising_factory' raised ValueError: hidden size",
    ),
    (["convert", "--model-factory", f"{HERE}:not_a_module"], r"returned a dict, not a torch\.nn\.Module"),
    (
        ["convert", "--model-factory", f"{HERE}:no_such_function"],
        r"model factory '.*:no_such_function' is not importable",
    ),
    (
        ["convert", "--model-factory", f"{HERE}:flat_factory", "--weights", "{truncated.safetensors}"],
        r"is not a readable \.safetensors file",
    ),
    (["convert", "--model-factory", f"{HERE}:flat_factory", "--weights", "/nonexistent/w.pt"], r"does not exist"),
    (
        ["convert", "--model-factory", f"{HERE}:forward_raises"],
        r"Raising\.forward raised ValueError on a data batch of shape .*this model's forward is broken",
    ),
    (
        ["convert", "--model-factory", f"{HERE}:dict_out", "--output", "hidden"],
        r"returns dict \(logits: Tensor\), whose 'hidden' is missing; allowed: \['logits'\]",
    ),
    (
        ["convert", "{digits}", "--data", "{nan.npz}"],
        r"(calibration|evaluation) batch \d+, input 'x': 1 of \d+ values are NaN or Inf; .*fix: clean the data",
    ),
    (["convert", "{digits}", "--data", "{strings.npz}"], r"holds <U10 values; allowed: numbers"),
    (["convert", "{digits}", "--data", "{objects.npy}"], r"cannot be read as \.npy without unpickling"),
    (["convert", "{digits}", "--data", "{pickled.pt}"], r"could not be loaded with torch\.load\(weights_only=True\)"),
    (
        ["convert", "{digits}", "--spec", "{strict_skip.yaml}"],
        r"1 skip\(s\) match nothing in the traced DigitsCNN \(strict_skips is on\): ; - skip module_name 'head\.nope'|skip module_name 'head\.nope' matches no module",
    ),
    (
        ["convert", "{gated}", "--tracing", "whole"],
        r"torch\.fx cannot symbolically trace GatedNet \(failed in module 'block'",
    ),
    (
        ["convert", "{gated}", "--engine", "pt2e"],
        r"torch\.export cannot capture GatedNet \(.*\); fix: .*or use engine 'fx'",
    ),
]


@pytest.fixture(scope="module")
def registered(digits_source: str) -> dict[str, str]:
    return {
        "digits": "models:/digits-cnn@champion",
        "flat100": register(Flat100(), "flat100-bad", torch.randn(2, 100)),
        "gated": register(GatedNet(), "gated-bad", torch.rand(2, 1, 8, 8)),
    }


@pytest.mark.flow
@pytest.mark.parametrize(("argv", "pattern"), FLOW_CASES, ids=[" ".join(a)[:60] for a, _ in FLOW_CASES])
def test_bad_inputs_found_by_the_flow(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], registered: dict[str, str], argv: list[str], pattern: str
) -> None:
    values = files | registered
    argv = [re.sub(r"\{([^}]+)\}", lambda m: values[m.group(1)], a) for a in argv]
    names_before, aliases_before, _ = _store_state()
    _check(*_run(capsys, [*argv, "--registered-name", "bad-input-int8"]), EXIT_BAD_INPUT, pattern)
    names_after, aliases_after, running = _store_state()
    assert "bad-input-int8" not in names_after and aliases_after == aliases_before, "something was registered or moved"
    assert running == 0, "an MLflow run was left RUNNING"


@pytest.mark.flow
def test_a_failed_gate_exits_3_with_one_line(capsys: pytest.CaptureFixture[str], registered: dict[str, str]) -> None:
    argv = ["convert", registered["digits"], "--registered-name", "bad-gate-int8", "--min-sqnr-db", "500"]
    _check(
        *_run(capsys, argv),
        EXIT_GATE_FAILED,
        r"gate failed: bad-gate-int8 version 1 failed its gates \(output SQNR .* was not moved",
    )
    assert _store_state()[2] == 0


@pytest.fixture()
def tracking_uri(mlflow_store: str) -> Iterator[None]:
    """Lets a test point MLflow elsewhere and puts the session store back after."""
    yield
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_store
    mlflow.set_tracking_uri(mlflow_store)


@pytest.mark.flow
@pytest.mark.parametrize(
    ("uri", "pattern"),
    [
        ("http://127.0.0.1:9", r"MLflow tracking server 'http://127\.0\.0\.1:9' does not answer \(connection refused"),
        (
            "sqlite:////nonexistent-folder/mlflow.db",
            r"the folder '/nonexistent-folder' for its database does not exist",
        ),
        # what a read-only mount looks like, even to root (os.access says yes to root there)
        ("sqlite:////proc/x.db", r"the folder '/proc' for its database is not writable"),
    ],
    ids=["closed-port", "missing-folder", "unwritable-folder"],
)
def test_an_unusable_store_fails_in_seconds(
    capsys: pytest.CaptureFixture[str], prefect_harness: None, tracking_uri: None, uri: str, pattern: str
) -> None:
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    started = time.monotonic()
    code, err = _run(capsys, ["convert", "models:/digits-cnn@champion"])
    _check(code, err, EXIT_BAD_INPUT, pattern)
    assert time.monotonic() - started < 30, "the store check took too long"


@pytest.mark.flow
@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else False, reason="root writes anywhere")
def test_an_unwritable_store_fails(capsys, prefect_harness: None, tracking_uri: None, tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    uri = f"sqlite:///{folder}/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    _check(*_run(capsys, ["convert", "models:/digits-cnn@champion"]), EXIT_BAD_INPUT, r"is not writable")


# ------------------------------------------------------------------------------ the Python API


def test_the_convert_fx_drop_in_checks_the_convert_time_mapping() -> None:
    from quantstage.quant import FxSpec, convert, prepare
    from quantstage.quant.engines.fx import _torch as _fx
    from quantstage.quant.errors import SpecError
    from tests.models import SmallCNN

    prepared = prepare(SmallCNN().eval(), (torch.rand(2, 1, 8, 8),), FxSpec())
    changed = _fx.QConfigMapping().set_global(_fx.ao_quantization.default_qconfig)
    with pytest.raises(SpecError, match=r"convert-time qconfig_mapping changes the global qconfig"):
        convert(prepared, qconfig_mapping=changed)


def test_quantize_refuses_non_finite_and_missing_inputs() -> None:
    from quantstage.quant import FxSpec, quantize
    from quantstage.quant.errors import DataError
    from tests.models import SmallCNN

    with pytest.raises(DataError, match=r"quantize needs example_inputs or calibration batches"):
        quantize(SmallCNN().eval(), FxSpec(), [])
    with pytest.raises(DataError, match=r"static mode got no calibration batches"):
        quantize(SmallCNN().eval(), FxSpec(), [], example_inputs=(torch.rand(2, 1, 8, 8),))


@pytest.mark.parametrize("delay_s", [0.4, 1.5, 4.0])
def test_ctrl_c_at_any_moment_exits_130_with_one_line(tmp_path: Path, delay_s: float) -> None:
    """SIGINT to the real command at several moments — during its imports (torch, Prefect), while
    Prefect's API starts, while the model loads: exit 130, one line, no traceback."""
    import signal
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    argv = ["convert", "--model-factory", "tests.models:build_encoder", "--data", "tests.models:encoder_batches"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "quantstage.flows.cli", *argv, "--mode", "dynamic"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    time.sleep(delay_s)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    ours = [line for line in stderr.splitlines() if line.startswith("quantstage:")]
    assert ours == ["quantstage: interrupted: the conversion stopped; its MLflow run is marked FAILED"], stderr


def test_an_error_after_ctrl_c_is_reported_as_the_interrupt(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C inside a lazy import leaves a half-initialised module whose next use raises anything."""
    import quantstage.flows.cli as cli
    import quantstage.flows.cli.convert as cli_convert

    def half_imported(args: object) -> int:
        cli._INTERRUPTED.set()  # what the SIGINT handler records
        raise AttributeError("module 'torch._dynamo' has no attribute 'guards'")

    monkeypatch.setattr(cli_convert, "_cmd_convert", half_imported)
    code, err = _run(capsys, ["convert", "models:/m@a"])
    assert code == 130 and err == ["quantstage: interrupted: the conversion stopped; its MLflow run is marked FAILED"]


def test_interrupt_exits_130_with_one_line(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import quantstage.flows.cli.convert as cli_convert

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_convert, "_cmd_convert", interrupted)
    code, err = _run(capsys, ["convert", "models:/m@a"])
    assert code == 130 and len(err) == 1 and err[0].startswith("quantstage: interrupted"), err
    assert sys.exc_info()[0] is None
