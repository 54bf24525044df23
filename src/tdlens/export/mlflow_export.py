"""MLflow export into a local SQLite tracking store (see tdlens.export).

Only ``sqlite:///PATH`` tracking URIs are accepted: the export never starts a server and
never reaches the network. MLflow's usage telemetry is switched off for the process
(``MLFLOW_DISABLE_TELEMETRY``, ``DO_NOT_TRACK``) before MLflow is imported. Artifacts go
to the experiment's artifact location; a new experiment gets ``<PATH's folder>/mlartifacts``.

Per run: the resolved config as params (dotted keys), every series as metrics with the
iteration as step, status/health/regime (and the run and sweep ids) as tags, the report
files as artifacts. MLflow stores +-inf as +-1.7976931348623157e308 (the largest double).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tdlens.config import flatten
from tdlens.export import (
    ARTIFACTS,
    ExportError,
    Target,
    fingerprint,
    scalar_series,
    tags,
    targets,
)

DEFAULT_EXPERIMENT = "tdlens"
BATCH = 1000
"""Metrics per log_batch call (MLflow's limit); params go 100 at a time."""
RUN_STATUS = {
    "complete": "FINISHED",
    "diverged": "FINISHED",
    "incomplete": "KILLED",
    "failed": "FAILED",
    "crashed": "FAILED",
}
"""MLflow's status for each final tdlens status (a ``running`` run stays RUNNING)."""


def sqlite_path(tracking_uri: str) -> Path:
    """The database file of a ``sqlite:///PATH`` URI (ExportError for any other URI)."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix) or len(tracking_uri) == len(prefix):
        raise ExportError(
            f"--tracking-uri '{tracking_uri}': expected sqlite:///PATH (a local SQLite store; "
            "use sqlite:////abs/path for an absolute path)"
        )
    return Path(tracking_uri.removeprefix(prefix))


def client(tracking_uri: str) -> Any:
    """An MlflowClient on the SQLite store (created when missing), telemetry off."""
    db = sqlite_path(tracking_uri)
    if db.exists() and not db.is_file():
        raise ExportError(f"--tracking-uri: '{db}' is not a file")
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["DO_NOT_TRACK"] = "true"
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ExportError(
            "MLflow export needs the mlflow package: pip install 'tdlens[mlflow]'"
        ) from None
    db.parent.mkdir(parents=True, exist_ok=True)
    for name in ("mlflow", "alembic"):  # their INFO lines on creating the tables are noise
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id(mlflow_client: Any, name: str, tracking_uri: str) -> str:
    """The id of experiment `name`, created (artifacts beside the database) when missing."""
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            mlflow_client.restore_experiment(found.experiment_id)
        return str(found.experiment_id)
    root = sqlite_path(tracking_uri).resolve().parent / "mlartifacts" / name
    return str(mlflow_client.create_experiment(name, artifact_location=root.as_uri()))


def export_run(mlflow_client: Any, exp_id: str, target: Target) -> tuple[str, bool]:
    """Log one run; returns (MLflow run id, whether it was written: False = up to date)."""
    from mlflow.entities import Metric, Param, RunTag

    print_ = fingerprint(target.path)
    old = _tagged_runs(mlflow_client, exp_id, target.run_id)
    for previous in old:
        if previous.data.tags.get("tdlens_fingerprint") == print_ and len(old) == 1:
            return previous.info.run_id, False
    for previous in old:
        mlflow_client.delete_run(previous.info.run_id)
    all_tags = {**tags(target), "tdlens_fingerprint": print_}
    created = mlflow_client.create_run(exp_id, tags=all_tags, run_name=target.run_id)
    rid = created.info.run_id
    params = [Param(k, str(v)) for k, v in sorted(flatten(target.data.config_data).items())]
    for i in range(0, len(params), 100):
        mlflow_client.log_batch(rid, params=params[i : i + 100])
    stamp = int(time.time() * 1000)
    metrics = [
        Metric(tag, value, stamp, step)
        for tag, points in scalar_series(target.data).items()
        for step, value in points
    ]
    for i in range(0, len(metrics), BATCH):
        mlflow_client.log_batch(rid, metrics=metrics[i : i + BATCH])
    mlflow_client.log_batch(rid, tags=[RunTag("mlflow.note.content", _note(target.path))])
    for name in ARTIFACTS:
        if (target.path / name).is_file():
            mlflow_client.log_artifact(rid, str(target.path / name))
    status = RUN_STATUS.get(str(target.data.status.get("status")))
    if status is not None:
        mlflow_client.set_terminated(rid, status=status)
    return rid, True


def _tagged_runs(mlflow_client: Any, exp_id: str, run_id: str) -> list[Any]:
    """The active MLflow runs tagged ``tdlens_run_id = run_id`` (any characters in it)."""
    for quote in ("'", '"'):
        if quote not in run_id:
            where = f"tags.tdlens_run_id = {quote}{run_id}{quote}"
            return list(mlflow_client.search_runs([exp_id], filter_string=where))
    found, token = [], None
    while True:  # both quotes in the id: filter here, page by page
        page = mlflow_client.search_runs([exp_id], page_token=token)
        found += [r for r in page if r.data.tags.get("tdlens_run_id") == run_id]
        token = page.token
        if not token:
            return found


def _note(run_dir: Path) -> str:
    report = run_dir / "run_report.md"
    return report.read_text(encoding="utf-8")[:5000] if report.is_file() else ""


def export_mlflow(
    path: str | Path,
    tracking_uri: str,
    experiment: str | None = None,
    on_run: Callable[[Target, str, bool], None] | None = None,
) -> list[str]:
    """Log every run of `path` (a run or sweep directory) into the SQLite store at
    `tracking_uri`, in `experiment` (default ``tdlens``); returns the MLflow run ids."""
    found = targets(path)
    mlflow_client = client(tracking_uri)
    exp_id = experiment_id(mlflow_client, experiment or DEFAULT_EXPERIMENT, tracking_uri)
    ids = []
    for target in found:
        rid, written = export_run(mlflow_client, exp_id, target)
        if on_run is not None:
            on_run(target, rid, written)
        ids.append(rid)
    return ids
