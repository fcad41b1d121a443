"""The publish step: register, compare with the alias holder and promote, one registrar at a time."""

from __future__ import annotations

import threading

import mlflow
import pytest
import torch

from quantstage.tasks.publish import PublishRequest, publish_model
from tests.models import Flat100

pytestmark = pytest.mark.flow

NAME = "publish-race-int8"


def _logged(accuracy: float) -> tuple[str, str]:
    """A run holding a logged model and its int8 accuracy: (run id, model URI)."""
    from quantstage.tasks.log_model import log_pytorch_model

    with mlflow.start_run(run_name=f"candidate {accuracy}") as run:
        mlflow.log_metric("int8_accuracy", accuracy)
        uri = log_pytorch_model(Flat100().eval(), torch.randn(2, 100))
    return run.info.run_id, uri


def _request(run_id: str, uri: str, accuracy: float, key: str) -> PublishRequest:
    return PublishRequest(
        name=NAME,
        model_uri=uri,
        run_id=run_id,
        passed=True,
        metrics={"int8_accuracy": accuracy},
        lineage={"idempotency_key": key, "mlflow_run_id": run_id, "eval_digest": "same"},
        eval_digest="same",
    )


def test_concurrent_publishers_leave_the_alias_on_the_best(mlflow_store: str, prefect_harness: None) -> None:
    """Both newcomers beat the holder; the holder comparison runs inside the registry lock, so the
    second to register compares with the first and the alias ends on the better one, whatever the order."""
    holder = _logged(0.90)
    assert publish_model.fn(_request(*holder, 0.90, "k-holder")).promoted
    better, best = _logged(0.92), _logged(0.95)
    results = {}

    def run(label: str, logged: tuple[str, str], accuracy: float) -> None:
        results[label] = publish_model.fn(_request(*logged, accuracy, f"k-{label}"))

    threads = [threading.Thread(target=run, args=a) for a in (("better", better, 0.92), ("best", best, 0.95))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert str(champion.version) == results["best"].version, {
        k: (v.version, v.promoted, v.reason) for k, v in results.items()
    }
    assert results["best"].promoted
    assert client.get_model_version(NAME, results["better"].version).tags["promoted"] in ("true", "false")


def test_a_retry_completes_its_own_registration(mlflow_store: str, prefect_harness: None) -> None:
    """Publishing the same run twice (a retry after a transient failure) registers one version."""
    logged = _logged(0.5)
    first = publish_model.fn(_request(*logged, 0.5, "k-retry"))
    again = publish_model.fn(_request(*logged, 0.5, "k-retry"))
    assert again.version == first.version and again.duplicate_of is None
    other = publish_model.fn(_request(*_logged(0.5), 0.5, "k-retry"))  # another run, same key: a duplicate
    assert other.version is None and other.duplicate_of == first.version


@pytest.mark.parametrize("fresh_model", [True, False])
def test_a_failure_mid_publication_withdraws_the_version(
    mlflow_store: str, prefect_harness: None, monkeypatch: pytest.MonkeyPatch, fresh_model: bool
) -> None:
    """Register → promote → tag is one transaction: a failure after the alias moved leaves no
    untagged version, the alias back on its holder, and no empty registered model."""
    import sys

    publishing = sys.modules[publish_model.fn.__module__]
    name = f"withdraw-{fresh_model}-int8"
    client = mlflow.MlflowClient()
    holder = None
    if not fresh_model:
        holder = publish_model.fn(_request(*_logged(0.5), 0.5, "k-holder").model_copy(update={"name": name})).version

    def broken_tag(*args: object, **kwargs: object) -> None:
        raise RuntimeError("store went away while tagging")

    monkeypatch.setattr(publishing, "tag_version", broken_tag)
    request = _request(*_logged(0.9), 0.9, "k-new").model_copy(update={"name": name})
    with pytest.raises(RuntimeError, match="tagging"):
        publish_model.fn(request)
    versions = client.search_model_versions(f"name = '{name}'")
    if fresh_model:
        assert versions == [] and not client.search_registered_models(f"name = '{name}'")
    else:
        assert [str(v.version) for v in versions] == [holder]
        assert str(client.get_model_version_by_alias(name, "champion").version) == holder
    monkeypatch.undo()  # the rerun completes it: one new version, promoted
    done = publish_model.fn(request)
    assert done.promoted and len(client.search_model_versions(f"name = '{name}'")) == (1 if fresh_model else 2)
