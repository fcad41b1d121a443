"""One conversion run, from its key to its verdict: the lifecycle both flows share.

``ConversionRun`` owns, in order: the idempotency key (the tracking store checked first); the runs of
that key a dead flow run left RUNNING, marked FAILED (``recover_orphaned_runs``); a version of that
key already registered — skipped when its promotion was decided, its promotion decided now when a
stopped run registered it and no more (``resume``, what ``tasks.publish`` promises); the source and
the data; the MLflow run, open while the flow's body runs and closed on every exit — FINISHED,
FAILED with a one-line ``quantstage.error`` tag, KILLED when the flow run is cancelled (the flows'
``on_cancellation``/``on_crashed`` hooks cover a process that dies); the publication of the winner
(register → compare → promote → event, atomic in ``tasks.publish``), a duplicate when another run of
the same key registered first, and the report with its verdict.

The flows keep their story: ``convert_flow`` runs one unit inside the run, ``sweep_flow`` many
units and a ranking; both hand the lifecycle a ``Winner`` and read back a ``Publication`` or a
``Settled`` (the registry already held the answer).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any, Literal, Protocol

from prefect import runtime
from prefect.settings import PREFECT_UI_URL

from quantstage.quant.data.model_source import ModelSource
from quantstage.quant.data.sources import Dataset, DataSpec
from quantstage.quant.engines import QuantSpec
from quantstage.quant.report.markdown import set_verdict
from quantstage.tasks.data_lineage import log_data_lineage
from quantstage.tasks.load import SourceModel, identify_source, load_dataset, load_model
from quantstage.tasks.preflight import check_tracking_store
from quantstage.tasks.publish import Publication, PublishRequest, event_payload, publish_model
from quantstage.tasks.record import lineage
from quantstage.tasks.registry import find_version_by_key
from quantstage.tasks.report import publish_report
from quantstage.tasks.runs import close_failed, close_runs_of, end_run, failure_of, recover_orphaned_runs, start_run

__all__ = ["ConversionRun", "RunKind", "RunParams", "Settled", "Winner"]

RunKind = Literal["convert", "sweep"]
# what the messages call a run of each kind: (noun, past participle, verb)
_WORDS: dict[str, tuple[str, str, str]] = {
    "convert": ("conversion", "converted", "convert"),
    "sweep": ("sweep", "swept", "sweep"),
}


class RunParams(Protocol):
    """What the lifecycle reads of a flow's parameters (``StageParams`` and its subclasses have it)."""

    @property
    def source(self) -> ModelSource: ...
    @property
    def source_label(self) -> str: ...
    @property
    def target_name(self) -> str: ...
    @property
    def data(self) -> DataSpec: ...
    @property
    def output(self) -> str | None: ...
    @property
    def experiment(self) -> str: ...
    @property
    def alias(self) -> str: ...
    @property
    def promote_if(self) -> Literal["gates", "better"]: ...
    @property
    def force(self) -> bool: ...
    def eval_digest(self) -> str: ...
    def idempotency_key(self, identity: str) -> str: ...


@dataclasses.dataclass(frozen=True)
class Winner:
    """The model a run publishes: a single conversion's unit, or a sweep's best candidate."""

    run_id: str  # the MLflow run that logged it
    model_uri: str
    spec: QuantSpec
    passed: bool
    metrics: dict[str, float]
    report: str  # verdict line pending the promotion
    description: str = ""
    extra_lineage: dict[str, str] = dataclasses.field(default_factory=dict)
    candidate: int | None = None  # a sweep's winner: its index (its run is tagged the winner)


@dataclasses.dataclass(frozen=True)
class Settled:
    """What the registry already held for the key: a version skipped, resumed, or registered meanwhile."""

    key: str
    version: str
    run_id: str
    model_uri: str
    tags: dict[str, str]
    metrics: dict[str, float]
    reason: str
    promoted: bool = False
    resumed: bool = False

    @property
    def skipped(self) -> bool:
        """Nothing was done: the version was complete (or registered meanwhile by another run)."""
        return not self.resumed

    @property
    def candidate(self) -> int | None:
        """The index of the sweep candidate the version came from (None: a single conversion)."""
        index = self.tags.get("sweep_candidate", "")
        return int(index) if index.isdigit() else None


class ConversionRun:
    """One run of ``params`` from key to verdict (see the module docstring); ``kind`` words its messages."""

    def __init__(self, params: RunParams, kind: RunKind) -> None:
        self.params, self.kind = params, kind
        self.flow_run_id = str(runtime.flow_run.id)
        self.key = ""
        self.run_id = ""
        self.source: SourceModel | None = None
        self.dataset: Dataset | None = None
        self._closing: dict[str, str] = {}

    def settle(self) -> Settled | None:
        """The key; its orphaned runs closed; a version of it skipped or its promotion resumed (the
        answer), or None: the work has to be done."""
        check_tracking_store()  # seconds, one line, before anything is loaded
        self.key = self.params.idempotency_key(identify_source(self.params.source))
        recover_orphaned_runs(self.params.experiment, self.key)
        if self.params.force or not (existing := find_version_by_key(self.params.target_name, self.key)):
            return None
        if "promoted" not in existing["tags"]:  # registered, promotion never decided: finish that run
            return self._resume(existing)
        return self._skipped(existing, f"already {_WORDS[self.kind][1]}")

    def load(self) -> tuple[SourceModel, Dataset]:
        """The float model and the data; the key again when the source changed meanwhile."""
        params = self.params
        self.source = load_model(params.source)
        if (loaded_key := params.idempotency_key(self.source.identity)) != self.key:
            print(
                f"{params.source_label} changed while loading (now {self.source.identity}); idempotency key recomputed"
            )
            self.key = loaded_key
        self.dataset = load_dataset(params.data, self.source.model, params.output)
        return self.source, self.dataset

    def tags(self) -> dict[str, str]:
        """The tags every MLflow run of this flow run carries (the hooks and the orphan recovery find them by)."""
        return {
            "quantstage.source_uri": self.params.source_label,
            "quantstage.flow_run_id": self.flow_run_id,
            "quantstage.idempotency_key": self.key,
        }

    @contextlib.contextmanager
    def opened(self, run_name: str, tags: Mapping[str, str] | None = None) -> Iterator[str]:
        """The run's MLflow run (with the data lineage), open for the block: FINISHED when it ends, FAILED
        or KILLED (with the one-line reason) when it raises — and so is any other run of this flow run
        still RUNNING (a sweep's candidates)."""
        assert self.dataset is not None, "load() before opened()"
        self.run_id = start_run(self.params.experiment, run_name, self.tags() | dict(tags or {}))
        try:
            log_data_lineage(self.run_id, self.dataset, self.params.data)
            yield self.run_id
        except BaseException as exc:
            close_failed(self.run_id, exc)  # never raises: the error raised stays the original one
            close_runs_of(self.flow_run_id, *failure_of(exc))
            raise
        end_run(self.run_id, "FINISHED", self._closing)

    def publish(self, winner: Winner) -> Publication | Settled:
        """Register ``winner`` with its lineage, decide its promotion, publish the report with the verdict;
        a ``Settled`` when another run of the same key registered first (nothing registered)."""
        params, name = self.params, self.params.target_name
        tags = self._lineage(winner)
        published = publish_model(
            self._request(winner.model_uri, winner.run_id, tags, winner.passed, winner.metrics, winner.description)
        )
        if published.duplicate_of is not None:  # a concurrent run with the same key won
            self._closing = {"quantstage.duplicate_of": f"{name}/{published.duplicate_of}"}
            existing = find_version_by_key(name, self.key) or _duplicate(published.duplicate_of)
            return self._skipped(
                existing, f"registered meanwhile by another {'sweep' if self.kind == 'sweep' else 'run'}"
            )
        alias = params.alias if published.promoted else None
        publish_report(set_verdict(winner.report, winner.passed, alias, published.reason), name, winner.run_id)
        if winner.candidate is not None:  # a sweep's winner: its own run says so, and the sweep's
            registered = {"quantstage.registered_version": published.version or ""}
            end_run(winner.run_id, "FINISHED", {"quantstage.winner": "true"} | registered)
            self._closing = {"quantstage.winner": str(winner.candidate)} | registered
        return published

    def _lineage(self, winner: Winner) -> dict[str, str]:
        source = self.source
        assert source is not None, "load() before publish()"
        return lineage(
            source_label=self.params.source_label,
            source_name=source.name,
            source_version=source.version,
            source_run_id=source.run_id,
            spec=winner.spec,
            passed=winner.passed,
            run_id=winner.run_id,
            flow_run_id=self.flow_run_id,
            idempotency_key=self.key,
            eval_digest=self.params.eval_digest(),
            promote_if=self.params.promote_if,
            flow_run_url=runtime.flow_run.ui_url if PREFECT_UI_URL.value() else None,
            extra=winner.extra_lineage,
        )

    def _request(
        self,
        model_uri: str,
        run_id: str,
        tags: dict[str, str],
        passed: bool,
        metrics: dict[str, float],
        description: str,
    ) -> PublishRequest:
        """What publishing one model asks for (the alias, the comparison, the event)."""
        params = self.params
        return PublishRequest(
            name=params.target_name,
            model_uri=model_uri,
            run_id=run_id,
            lineage=tags,
            passed=passed,
            metrics=metrics,
            description=description,
            alias=params.alias,
            promote_if=params.promote_if,
            eval_digest=params.eval_digest(),
            force=params.force,
            event=event_payload(
                metrics,
                source_uri=params.source_label,
                source_version=tags.get("source_version", ""),
                mlflow_run_id=run_id,
                flow_run_id=tags.get("flow_run_id", ""),
            ),
        )

    def _resume(self, existing: dict[str, Any]) -> Settled:
        """A version registered by a run stopped before its promotion was decided: decide it now, close its runs."""
        tags, run_id, version = existing["tags"], existing["run_id"], existing["version"]
        passed = tags.get("gates_passed") == "true"
        published = publish_model(self._request(existing["source"], run_id, tags, passed, existing["metrics"], ""))
        closing = {"quantstage.resumed_by": self.flow_run_id}
        if parent := tags.get("sweep_run_id"):  # a sweep's winner: the sweep's run is complete too
            registered = {"quantstage.registered_version": version}
            end_run(parent, "FINISHED", closing | registered | {"quantstage.winner": tags.get("sweep_candidate", "")})
            closing |= registered | {"quantstage.winner": "true"}
        end_run(run_id, "FINISHED" if passed else "FAILED", closing)
        noun = _WORDS[self.kind][0]
        reason = f"resumed the publication of version {version} (its {noun} stopped after registering it): {published.reason}"
        print(reason)
        return _settled(self.key, existing, reason, promoted=published.promoted, resumed=True)

    def _skipped(self, existing: dict[str, Any], why: str) -> Settled:
        """The version ``existing`` (``find_version``'s dict) answers for the key: skipped because ``why``."""
        tags, key = existing["tags"], self.key
        if self.kind == "sweep":
            held = (
                f"is the winner of a sweep with idempotency key {key[:12]}… (candidate {tags.get('sweep_candidate')})"
            )
        else:
            held = f"has idempotency key {key[:12]}… (gates_passed={tags.get('gates_passed')})"
        reason = (
            f"{why}: {self.params.target_name} version {existing['version']} {held}; "
            f"pass force=True to {_WORDS[self.kind][2]} again"
        )
        print(f"skipped: {reason}")
        return _settled(key, existing, reason)


def _settled(key: str, existing: dict[str, Any], reason: str, promoted: bool = False, resumed: bool = False) -> Settled:
    return Settled(
        key=key,
        version=existing["version"],
        run_id=existing["run_id"],
        model_uri=existing["source"],
        tags=dict(existing["tags"]),
        metrics=dict(existing["metrics"]),
        reason=reason,
        promoted=promoted,
        resumed=resumed,
    )


def _duplicate(version: str) -> dict[str, Any]:
    """What is known of a version registered meanwhile that the registry search does not show (yet)."""
    return {"version": version, "run_id": "", "source": "", "tags": {}, "metrics": {}}
