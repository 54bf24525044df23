"""The command functions of ``tdlens export tensorboard|mlflow RUN_OR_SWEEP``.

:mod:`tdlens.cli` registers them. Bad input (not a run or sweep, a tracking URI that is
not a local SQLite file, a missing extra) prints one line and exits 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

out = Console(soft_wrap=True, markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)

HELP = "Export runs and sweeps to TensorBoard or MLflow (optional extras)."
Target = Annotated[Path, typer.Argument(help="A run directory or a sweep directory.")]


def _fail(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True)
    raise typer.Exit(2)


def tensorboard(
    target: Target,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Log folder: one subfolder per run, replaced on export.")
    ] = Path("outputs/tensorboard"),
) -> None:
    """Write TensorBoard event files: every curve and probe column, the report, its plots.

    View them with: tensorboard --logdir OUT
    """
    from tdlens.config import ConfigError
    from tdlens.export import ExportError
    from tdlens.export.tensorboard_export import export_tensorboard
    from tdlens.rundir.files import RunFileError

    dropped: list[str] = []

    def show(t, logdir: Path, counts: dict[str, int]) -> None:
        note = "" if counts["images"] else " (no plots)"
        out.print(
            f"{t.run_id}: {counts['series']} series, {counts['images']} plots -> {logdir}{note}",
            highlight=False,
        )

    def drop(run_id: str, why: str) -> None:
        dropped.append(run_id)
        out.print(f"{run_id}: dropped, {why}", highlight=False)

    try:
        written = export_tensorboard(target, out_dir, on_run=show, on_drop=drop)
    except (ExportError, RunFileError, ConfigError) as exc:
        _fail(str(exc))
    if not written:
        err.print(f"error: nothing exported from '{target}' (see above)", highlight=False)
        raise typer.Exit(1)
    note = f", dropped {len(dropped)}: {', '.join(dropped)}" if dropped else ""
    out.print(
        f"exported {len(written)} run(s){note}; view: tensorboard --logdir {out_dir}",
        highlight=False,
    )


def mlflow(
    target: Target,
    tracking_uri: Annotated[
        str, typer.Option(help="A local SQLite store: sqlite:///PATH (created when missing).")
    ] = "sqlite:///outputs/mlflow.db",
    experiment: Annotated[
        str, typer.Option(help="MLflow experiment (created when missing).")
    ] = "tdlens",
) -> None:
    """Log params, metrics by iteration, status/health/regime tags and the report files.

    A run exported again replaces its earlier MLflow run (or is left alone when unchanged).
    """
    from tdlens.config import ConfigError
    from tdlens.export import ExportError
    from tdlens.export.mlflow_export import export_mlflow
    from tdlens.rundir.files import RunFileError

    def show(t, rid: str, written: bool) -> None:
        what = "logged" if written else "up to date"
        out.print(f"{t.run_id}: {what} as MLflow run {rid}", highlight=False)

    try:
        ids = export_mlflow(target, tracking_uri, experiment, on_run=show)
    except (ExportError, RunFileError, ConfigError) as exc:
        _fail(str(exc))
    out.print(
        f"exported {len(ids)} run(s) to experiment '{experiment}'; view: mlflow ui "
        f"--backend-store-uri {tracking_uri}",
        highlight=False,
    )
