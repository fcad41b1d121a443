"""What a delivery means: by default only versions quantstage did not register itself."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mlflow.entities.webhook import WebhookEvent
from mlflow.webhooks.types import get_example_payload_for_event

from quantstage.quant import FxSpec
from quantstage.tasks.record import lineage
from quantstage.webhook.config import OWN_TAGS, WebhookConfig, config_from_env
from quantstage.webhook.filters import decide, parse
from quantstage.webhook.signature import Refused

CONFIG = WebhookConfig(secret="s" * 32)


def _body(data: dict[str, Any], event: str = "model_version.created") -> bytes:
    entity, action = event.rsplit(".", 1)
    return json.dumps({"entity": entity, "action": action, "timestamp": "2025-01-01T00:00:00Z", "data": data}).encode()


def _decide(data: dict[str, Any], event: str = "model_version.created", config: WebhookConfig = CONFIG) -> str:
    decision = decide(config, *parse(_body(data, event)))
    return ("emit: " if decision.emit else "ignore: ") + decision.reason


def test_a_trained_model_version_is_emitted() -> None:
    data = {"name": "my-model", "version": "3", "source": "models:/m-1", "run_id": "r1", "tags": {"team": "a"}}
    assert _decide(data) == "emit: model_version.created my-model/3"


def test_quantstage_never_converts_its_own_versions() -> None:
    assert _decide({"name": "my-model-int8", "version": "1"}).startswith("ignore: model 'my-model-int8' ends with")
    # a custom registered_name: the lineage tags every quantstage version carries give it away
    tags = lineage(
        source_label="models:/m/1",
        source_name="m",
        source_version="1",
        source_run_id="r",
        spec=FxSpec(),
        passed=True,
        run_id="r2",
        flow_run_id="f",
        idempotency_key="k",
        eval_digest="e",
        promote_if="better",
    )
    assert set(OWN_TAGS) <= set(tags)
    assert "lineage tags (idempotency_key, spec_hash)" in _decide({"name": "fast-m", "version": "2", "tags": tags})


def test_mlflows_test_delivery_is_acknowledged_not_converted() -> None:
    for event in ("model_version.created", "model_version_alias.created"):
        example = dict(get_example_payload_for_event(WebhookEvent(*event.rsplit(".", 1))))
        assert "MLflow's test payload" in _decide(example, event, CONFIG.model_copy(update={"events": (event,)}))


def test_filters_by_name_event_and_alias() -> None:
    teams = CONFIG.model_copy(update={"models": "team-a-.*"})
    assert (
        _decide({"name": "team-b-x", "version": "1"}, config=teams)
        == "ignore: model 'team-b-x' does not match 'team-a-.*'"
    )
    alias = {"name": "m", "version": "4", "alias": "staging"}
    assert _decide(alias, "model_version_alias.created").startswith("ignore: event model_version_alias.created is not")
    aliases = CONFIG.model_copy(update={"events": ("model_version_alias.created",), "aliases": ("champion",)})
    assert _decide(alias, "model_version_alias.created", aliases) == "ignore: alias 'staging' is not in ['champion']"
    assert _decide({**alias, "alias": "champion"}, "model_version_alias.created", aliases).startswith("emit:")


@pytest.mark.parametrize(
    ("body", "status", "pattern"),
    [
        (b"{nope", 400, "body is not JSON"),
        (b'["a"]', 422, "not an MLflow webhook delivery"),
        (_body({"name": "p"}, "prompt.created"), 422, "event 'prompt.created' is not one quantstage acts on"),
        (_body({"name": "m", "version": "../1"}), 422, r"data.version is '../1'"),
        (_body({"name": "a/b", "version": "1"}), 422, r"data.name is 'a/b'"),
        (_body({"name": "m", "version": "1"}, "model_version_alias.created"), 422, "has no 'alias'"),
    ],
    ids=["not-json", "not-an-object", "unknown-event", "bad-version", "bad-name", "alias-missing"],
)
def test_unknown_payloads_are_refused_in_one_line(body: bytes, status: int, pattern: str) -> None:
    with pytest.raises(Refused, match=pattern) as refused:
        parse(body)
    assert refused.value.status == status and "\n" not in refused.value.reason


def test_settings_from_the_environment_under_flags() -> None:
    environ = {
        "QUANTSTAGE_WEBHOOK_SECRET": "x" * 20,
        "QUANTSTAGE_WEBHOOK_EVENTS": "model_version.created, model_version_alias.created",
    }
    config = config_from_env({"port": 6000, "models": None}, environ)
    assert config.port == 6000 and config.events == ("model_version.created", "model_version_alias.created")
    assert config.models == ".*" and config.secret.get_secret_value() == "x" * 20
