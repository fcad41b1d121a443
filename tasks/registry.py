"""The MLflow model registry as quantstage uses it: versions found by idempotency key, the
alias holder to compare with, and one registrar at a time across every worker."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import mlflow
from prefect import task

from quantstage.tasks._common import IO_RETRIES, run_logger

__all__ = [
    "REGISTRY_LIMIT",
    "alias_version",
    "compare_with_holder",
    "register_model",
    "find_version",
    "find_version_by_key",
    "register_version",
    "registry_lock",
    "set_alias",
    "tag_version",
    "withdraw_version",
]

REGISTRY_LIMIT = "quantstage-registry"


def find_version(name: str, key: str) -> dict[str, Any] | None:
    """The registered version of ``name`` tagged ``idempotency_key=key`` (the oldest), or None:
    ``{"version", "run_id", "source", "tags", "metrics"}``."""
    client = mlflow.MlflowClient()
    found = client.search_model_versions(f"name = '{name}' and tags.idempotency_key = '{key}'")
    if not found:
        return None
    mv = min(found, key=lambda v: int(v.version))
    run_id = mv.tags.get("mlflow_run_id") or mv.run_id or ""
    metrics = client.get_run(run_id).data.metrics if run_id else {}
    return {
        "version": str(mv.version),
        "run_id": run_id,
        "source": mv.source,
        "tags": dict(mv.tags),
        "metrics": dict(metrics),
    }


@task(name="find_version_by_key", **IO_RETRIES)
def find_version_by_key(name: str, key: str) -> dict[str, Any] | None:
    """``find_version`` as a task (the idempotency check before any work)."""
    return find_version(name, key)


def register_version(model_uri: str, name: str, tags: Mapping[str, str], description: str = "") -> str:
    """Register ``model_uri`` as a new version of ``name`` with lineage ``tags``; return the version."""
    import torch

    client = mlflow.MlflowClient()
    try:
        client.get_registered_model(name)
        existed = True
    except mlflow.exceptions.MlflowException:
        existed = False
    try:
        mv = mlflow.register_model(model_uri, name, tags={"torch_version": torch.__version__, **tags})
    except BaseException:
        if not existed:  # no empty registered model left behind by a failure between its two steps
            with contextlib.suppress(Exception):
                if not client.search_model_versions(f"name = '{name}'"):
                    client.delete_registered_model(name)
        raise
    if description:
        mlflow.MlflowClient().update_model_version(name, mv.version, description=description)
    run_logger().info("registered %s version %s", name, mv.version)
    return str(mv.version)


def tag_version(name: str, version: str, tags: Mapping[str, str]) -> None:
    """Set ``tags`` on registry version ``name``/``version``."""
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def set_alias(name: str, version: str, alias: str) -> None:
    """Point ``alias`` of registered model ``name`` at ``version``."""
    mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
    run_logger().info("models:/%s@%s -> version %s", name, alias, version)


def alias_version(name: str, alias: str) -> str | None:
    """The version ``alias`` of ``name`` points at now (None: no such alias or model)."""
    holder = _alias_holder(mlflow.MlflowClient(), name, alias)
    return None if holder is None else str(holder.version)


def withdraw_version(name: str, version: str, alias: str, previous: str | None) -> None:
    """Undo a registration that could not be completed, best effort: point ``alias`` back at
    ``previous`` (or remove it), delete ``version`` and the registered model if it is left empty.

    The rollback half of publishing's register → promote → tag transaction; whatever cannot be
    undone now (the store is down) is completed instead by the rerun, which finds the version by
    its idempotency key."""
    client = mlflow.MlflowClient()
    with contextlib.suppress(Exception):
        if alias_version(name, alias) == str(version):
            if previous is None:
                client.delete_registered_model_alias(name, alias)
            else:
                client.set_registered_model_alias(name, alias, previous)
    with contextlib.suppress(Exception):
        client.delete_model_version(name, version)
        if not client.search_model_versions(f"name = '{name}'"):
            client.delete_registered_model(name)
    run_logger().warning("withdrew %s version %s: its publication did not complete", name, version)


@contextlib.contextmanager
def registry_lock(timeout_seconds: float = 300) -> Iterator[None]:
    """One registrar at a time across every worker: a Prefect global concurrency limit of 1
    (``quantstage-registry``, created on first use) around check → register → compare → promote."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(REGISTRY_LIMIT)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=REGISTRY_LIMIT, limit=1))
    with concurrency(REGISTRY_LIMIT, occupy=1, timeout_seconds=timeout_seconds, strict=True):
        yield


def _alias_holder(client: mlflow.MlflowClient, name: str, alias: str) -> Any:
    try:
        aliases = client.get_registered_model(name).aliases
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":  # nothing registered under this name yet
            return None
        raise
    if alias not in aliases:
        return None
    return client.get_model_version_by_alias(name, alias)


def compare_with_holder(
    name: str, version: str, alias: str, metrics: Mapping[str, float], eval_digest: str
) -> tuple[bool, str]:
    """Whether the new ``version`` is at least as good as the version holding ``alias``, and why.

    Compares ``int8_accuracy`` (else ``output_sqnr_db``) from the holder's MLflow run, only when
    the holder was evaluated on the same data and metrics (its ``eval_digest`` tag); otherwise
    says that it falls back to the gates."""
    client = mlflow.MlflowClient()
    holder = _alias_holder(client, name, alias)
    if holder is None:
        return True, f"no version holds @{alias} yet"
    if str(holder.version) == str(version):
        return True, f"version {version} already holds @{alias}"
    if holder.tags.get("eval_digest") != eval_digest:
        return True, (
            f"version {holder.version} holds @{alias} but was evaluated on other data/metrics "
            f"(eval_digest {holder.tags.get('eval_digest', 'missing')} != {eval_digest}): gates only"
        )
    run_id = holder.tags.get("mlflow_run_id") or holder.run_id
    theirs = client.get_run(run_id).data.metrics if run_id else {}
    for metric in ("int8_accuracy", "output_sqnr_db"):
        if metric in theirs and metric in metrics:
            mine, best = float(metrics[metric]), float(theirs[metric])
            if mine >= best:
                return True, f"{metric} {mine:.4f} >= {best:.4f} of version {holder.version} (@{alias})"
            return False, f"{metric} {mine:.4f} < {best:.4f} of version {holder.version}, which keeps @{alias}"
    return True, f"version {holder.version} (@{alias}) has no comparable metric logged: gates only"


@task(name="register_model", **IO_RETRIES)
def register_model(model_uri: str, name: str, tags: Mapping[str, str], alias: str | None = None) -> str:
    """Register ``model_uri`` as a new version of ``name`` (and point ``alias`` at it); return the version.
    For a training pipeline's float model; converted models go through ``tasks.publish``."""
    version = register_version(model_uri, name, tags)
    if alias:
        set_alias(name, version, alias)
    return version
