"""Command-line commands of sweeps, catalog and comparisons (docs/model.md §11 and §12).

The command functions of ``sweep``, ``summarize``, ``atlas``, ``runs list``,
``runs show``, ``runs reindex`` and ``compare``; :mod:`tdlens.cli` registers them. Bad input (spec,
backend, --where, unknown run) prints one line naming the problem and exits 2 with
nothing written; a sweep in which any run failed or was left incomplete exits 1; a
sweep interrupted by SIGINT, SIGTERM or SIGHUP exits 130, 143 or 129.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tdlens.config import ConfigError, printable
from tdlens.pages.fmt import duration_text
from tdlens.rundir.files import RunFileError

out = Console(soft_wrap=True, markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)

CatalogOption = Annotated[
    Path | None,
    typer.Option(help="Catalog database (default: $TDLENS_CATALOG or outputs/catalog.sqlite)."),
]


def _fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True)
    raise typer.Exit(code)


def _fmt(value: Any) -> str:
    """A cell for the terminal: fmt's text with control characters (ANSI escapes in a run
    name or reason) escaped, never printed raw."""
    from tdlens.pages.fmt import fmt

    return printable(fmt(value))


# --------------------------------------------------------------------------- sweep


def sweep(
    spec: Annotated[
        str | None,
        typer.Argument(
            help="Sweep spec YAML (with --resume also a sweep directory); or use --base/--grid."
        ),
    ] = None,
    base: Annotated[
        str | None,
        typer.Option(help="Inline sweep: the base config (YAML or shipped name), no spec file."),
    ] = None,
    grid: Annotated[
        list[str] | None,
        typer.Option(
            help="Inline sweep axis: KEY=V1,V2,... or KEY=linspace(a,b,n) or "
            "KEY=logspace(a,b,n) (repeatable; first = slowest)."
        ),
    ] = None,
    seeds: Annotated[
        int | None, typer.Option(help="Inline sweep: run every point with seeds 0..N-1.")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Inline sweep: override a base config key (repeatable)."),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Inline sweep: its name (default: <base>_sweep).")
    ] = None,
    backend: Annotated[str, typer.Option(help="Where runs execute: local or ray.")] = "local",
    jobs: Annotated[
        int | None, typer.Option(help="Parallel workers (default: the number of cores).")
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster to join: HOST:PORT of its head, or auto (default: a local Ray)."
        ),
    ] = None,
    retries: Annotated[
        int,
        typer.Option(
            help="Times a run whose worker process or node died is retried (from its "
            "checkpoint) before it is recorded failed."
        ),
    ] = 2,
    output_dir: Annotated[
        Path,
        typer.Option(help="Parent folder of new sweeps (with --resume: or the sweep itself)."),
    ] = Path("outputs/sweeps"),
    catalog: CatalogOption = None,
    resume: Annotated[
        bool, typer.Option(help="Skip finished runs, resume incomplete ones from checkpoints.")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            help="Print the plan and the disk, memory and time it expects; write nothing."
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            help="Start even when the sweep's disk or memory estimate exceeds the machine's."
        ),
    ] = False,
    metric: Annotated[
        str | None, typer.Option(help="Heatmap metric of the summary (default value_gap/td_loss).")
    ] = None,
) -> None:
    """Run a grid of configs on a process pool or Ray and summarize it.

    The grid comes from a spec YAML or from the command line: --base sanity --grid
    alpha_w=0.08,0.8,8 --grid "beta=linspace(0.01,0.2,5)" --seeds 3 builds the same spec
    (kept in the sweep directory as spec.yaml). logspace(a,b,n), here or as a spec's
    logspace entry, means n values geometrically spaced from a to b (not 10**a to 10**b).
    """
    from tdlens.catalog.records import FINAL_METRICS
    from tdlens.sweeps.backends import BackendError, default_jobs
    from tdlens.sweeps.ray_backend import import_ray
    from tdlens.sweeps.sweep import BACKENDS, prepare_sweep

    if backend not in BACKENDS:
        _fail(f"--backend '{backend}': choose one of {', '.join(BACKENDS)}")
    n_jobs = jobs if jobs is not None else default_jobs()
    if n_jobs < 1:
        _fail(f"--jobs: expected >= 1, got {n_jobs}")
    if address and backend != "ray":
        _fail("--address is for --backend ray")
    if retries < 0:
        _fail(f"--retries: expected >= 0, got {retries}")
    if metric is not None and metric not in FINAL_METRICS:
        _fail(f"--metric '{metric}': choose one of {', '.join(FINAL_METRICS)}")
    try:
        prepared = prepare_sweep(
            _spec_source(spec, base, grid, seeds, overrides, name), output_dir, resume=resume
        )
    except (ConfigError, RunFileError) as exc:
        _fail(str(exc))
    if dry_run:
        _print_plan(prepared)
        raise typer.Exit(_print_budget(prepared, n_jobs, backend, force))
    if not force:
        from tdlens.runs.budget import ResourceError

        try:
            _check_budget(prepared, n_jobs, backend)
        except ResourceError as exc:
            _fail(str(exc))
    if backend == "ray":
        try:
            import_ray(address)
        except BackendError as exc:
            _fail(str(exc))
    out.print(
        f"sweep directory: {prepared.sweep_dir} ({len(prepared.runs)} runs, {backend}, "
        f"{n_jobs} job(s))",
        highlight=False,
    )
    session: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if backend == "ray":  # join or start Ray first: its errors come before anything is written
        from tdlens.sweeps.ray_backend import ray_session

        session = ray_session(n_jobs, address)
    try:
        with session:
            result = _execute(prepared, backend, n_jobs, address, catalog, metric, retries)
    except BackendError as exc:
        _fail(str(exc))
    except OSError as exc:  # the driver's own files (plan.json, a full disk)
        where = f" writing '{exc.filename}'" if exc.filename else ""
        _fail(f"{exc.strerror or exc}{where}; continue with --resume once it is fixed", 1)
    except KeyboardInterrupt as exc:
        from tdlens.runs.runner import EXIT_SIGNAL
        from tdlens.sweeps.backends import signal_of

        signum = signal_of(exc)
        name = signal.Signals(signum).name
        err.print(f"interrupted by {name}: continue with --resume", highlight=False)
        raise typer.Exit(EXIT_SIGNAL.get(signum, 130)) from None
    _report_result(result)


def _execute(
    prepared: Any,
    backend: str,
    n_jobs: int,
    address: str | None,
    catalog: Path | None,
    metric: str | None,
    retries: int,
) -> Any:
    from tdlens.catalog.store import catalog_path
    from tdlens.sweeps.sweep import execute_sweep

    def run(on_outcome: Any) -> Any:
        return execute_sweep(
            prepared,
            backend=backend,
            jobs=n_jobs,
            address=address,
            catalog=catalog_path(catalog),
            on_outcome=on_outcome,
            metric=metric,
            retries=retries,
            on_retry=_print_retry,
        )

    printer = _outcome_printer(time.monotonic())
    if not out.is_terminal:
        return run(printer)
    with sweep_progress_bar(out) as bar:
        return run(_with_bar(bar, printer))


def sweep_progress_bar(console: Console) -> Any:
    """A live bar of the whole sweep on a terminal: runs done of the runs to execute, the
    elapsed time and rich's ETA; the per-run lines print above it."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]sweep"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("runs done"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _with_bar(bar: Any, printer: Any) -> Any:
    """An on_outcome hook that prints the run's line and moves `bar` to `done` of `total`
    (the runs this invocation executes, not those skipped as finished; unknown until the
    first run reports)."""
    task = bar.add_task("sweep", total=None)

    def on_outcome(outcome: Any, done: int, total: int) -> None:
        printer(outcome, done, total)
        bar.update(task, completed=done, total=total)

    return on_outcome


def _report_result(result: Any) -> None:
    """The end of `tdlens sweep`: counts, files written, warnings; exits 1 if a run failed."""
    counts = ", ".join(f"{k}={v}" for k, v in sorted(result.counts.items()))
    out.print(
        f"done: {len(result.outcomes)} run(s) executed ({counts or 'none'}), "
        f"{result.skipped} skipped as finished",
        highlight=False,
    )
    for path in result.summary_paths:
        out.print(f"wrote {path}", highlight=False)
    if result.summary_error:
        err.print(
            f"[yellow]summary failed:[/] {escape(str(result.summary_error))}",
            highlight=False,
            markup=True,
        )
    if result.catalog_error:
        err.print(
            f"[yellow]catalog not updated:[/] {escape(str(result.catalog_error))}",
            highlight=False,
            markup=True,
        )
    if result.stopped:
        err.print(f"stopped: {result.stopped}", highlight=False)
    if result.record_error:
        err.print(
            f"[yellow]sweep.json not updated:[/] {escape(result.record_error)}",
            highlight=False,
            markup=True,
        )
    bad = sum(o.status in ("failed", "incomplete", "running") for o in result.outcomes.values())
    bad += bool(result.record_error)
    if bad:
        err.print(f"{bad} run(s) failed or incomplete; see sweep.json", highlight=False)
    raise typer.Exit(1 if bad else 0)


def _spec_source(
    spec: str | None,
    base: str | None,
    grid: list[str] | None,
    seeds: int | None,
    overrides: list[str] | None,
    name: str | None,
) -> Any:
    """The spec file argument, or the SweepSpec of the inline options (exit 2 on misuse)."""
    from tdlens.sweeps.inline import inline_spec

    inline = {"--grid": grid, "--seeds": seeds, "--set": overrides, "--name": name}
    given = [option for option, value in inline.items() if value]
    if spec is not None:
        if base is not None or given:
            used = ", ".join(["--base"] * (base is not None) + given)
            _fail(f"give a spec file or an inline sweep (--base, --grid), not both ({used})")
        return spec
    if base is None:
        if given:
            _fail(f"{given[0]} is for an inline sweep: add --base CONFIG")
        _fail("give a sweep spec YAML, or --base CONFIG --grid KEY=VALUES for an inline sweep")
    if not grid:
        _fail("--grid: give at least one axis, e.g. --grid alpha_w=0.08,0.8,8")
    return inline_spec(base, grid, seeds, overrides or [], name)


def _outcome_printer(start: float):
    """One progress line per finished run, with the elapsed time and an ETA."""

    def print_outcome(outcome: Any, done: int, total: int) -> None:
        reason = f" ({outcome.reason})" if outcome.reason and outcome.status != "complete" else ""
        out.print(
            f"[{done}/{total}] {outcome.run_id}: {outcome.status}{reason} "
            f"{outcome.seconds:.1f}s; {progress_text(time.monotonic() - start, done, total)}",
            highlight=False,
            markup=False,
        )

    return print_outcome


def _print_retry(task: Any, attempt: int, why: str) -> None:
    """One line per retry of a run whose worker or node died."""
    ckpt = Path(task.run_dir) / "checkpoints"
    how = "from its checkpoint" if ckpt.is_dir() and any(ckpt.iterdir()) else "from the start"
    out.print(
        f"[retry] {task.run_id}: {why}; attempt {attempt} ({how})",
        highlight=False,
        markup=False,
    )


def progress_text(elapsed: float, done: int, total: int) -> str:
    """``elapsed 1h02m, ETA 3h10m``: the remaining runs at the mean wall time per finished
    run so far (``elapsed (total - done) / done``; parallel workers are in that mean)."""
    text = f"elapsed {duration_text(elapsed)}"
    if 0 < done < total:
        text += f", ETA {duration_text(elapsed * (total - done) / done)}"
    return text


def _to_run(prepared: Any) -> list[Any]:
    """The configs of the runs the sweep would execute (on resume: not the final ones)."""
    from tdlens.sweeps.backends import FINAL_STATUSES, _status_of
    from tdlens.sweeps.plan import run_dir

    return [
        r.config
        for r in prepared.runs
        if not prepared.resume
        or _status_of(run_dir(prepared.sweep_dir, r.run_id)).get("status") not in FINAL_STATUSES
    ]


def _check_budget(prepared: Any, n_jobs: int, backend: str) -> Any:
    """:func:`tdlens.runs.budget.check_sweep_resources` of the runs to execute (the memory
    of a Ray cluster's nodes is theirs to check: only the disk, where the runs land)."""
    import sys

    from tdlens.runs.budget import check_sweep_resources

    memory = sys.maxsize if backend == "ray" else None
    return check_sweep_resources(_to_run(prepared), n_jobs, prepared.sweep_dir, memory=memory)


def _print_budget(prepared: Any, n_jobs: int, backend: str, force: bool) -> int:
    """The dry run's expected disk, memory and time; 2 when the sweep would be refused."""
    from tdlens.runs.budget import SUMMARY_BYTES, ResourceError, duration, estimate_sweep, human

    est = estimate_sweep(_to_run(prepared), n_jobs)
    runs_bytes = max(est.disk_bytes - SUMMARY_BYTES, 0)
    per_run = human(runs_bytes / est.runs) if est.runs else "0 B"
    out.print(
        f"expects: {est.runs} run(s) to execute, about {human(est.disk_bytes)} on disk "
        f"(~{per_run} a run: run_report.md/.json, the final checkpoint, no HTML; and "
        f"{human(SUMMARY_BYTES)} of summaries), "
        f"peak memory {human(est.peak_bytes)} ({est.workers} at once), "
        f"about {duration(est.compute_seconds)} of compute: ~{duration(est.wall_seconds)} "
        f"on {n_jobs} job(s) (a guide within ~2x, tdlens.runs.budget)",
        highlight=False,
    )
    try:
        _check_budget(prepared, n_jobs, backend)
    except ResourceError as exc:
        out.print(("--force: would start anyway; " if force else "would be refused: ") + str(exc))
        return 0 if force else 2
    return 0


def _print_plan(prepared: Any) -> None:
    plan = prepared.plan
    out.print(f"plan of sweep '{plan['name']}': {len(plan['runs'])} runs", highlight=False)
    out.print("   #  run_id  config_hash  overrides", highlight=False)
    for entry in plan["runs"]:
        overrides = ", ".join(f"{k}={_fmt(v)}" for k, v in entry["overrides"].items())
        out.print(
            f"{entry['index']:>4}  {entry['run_id']}  {entry['config_hash']}  {overrides}",
            highlight=False,
            markup=False,
        )
    axes = "; ".join(f"{a['key']}: {len(a['values'])} values" for a in plan["axes"])
    out.print(f"axes: {axes}", highlight=False)
    out.print(f"base: {plan['base_file']}", highlight=False)
    verb = "would resume" if prepared.resume else "would write"
    out.print(f"{verb}: {prepared.sweep_dir} (dry run: nothing written)", highlight=False)


# --------------------------------------------------------------------------- summarize


def summarize(
    sweep_dir: Annotated[Path, typer.Argument(help="A sweep directory (holds plan.json).")],
    metric: Annotated[
        str | None, typer.Option(help="Heatmap metric (default: value_gap, else td_loss).")
    ] = None,
    catalog: CatalogOption = None,
) -> None:
    """Write summary.csv/.json/.md/.html of a sweep and index its runs in the catalog."""
    from tdlens.catalog import store as cat
    from tdlens.sweeps.plan import is_sweep_dir
    from tdlens.sweeps.summary import SummaryError
    from tdlens.sweeps.summary import summarize as make_summary

    if not is_sweep_dir(sweep_dir):
        _fail(f"'{sweep_dir}' is not a sweep directory (no plan.json)")
    try:
        summary = make_summary(sweep_dir, metric)
    except (SummaryError, RunFileError, ConfigError) as exc:
        _fail(str(exc))
    try:
        path = cat.catalog_path(catalog)
        cat.index_runs(path, summary.records, summary.name, sweep_dir)
        cat.index_sweep(path, sweep_dir, name=summary.name, n_runs=len(summary.records))
    except cat.CatalogError as exc:
        err.print(
            f"[yellow]catalog not updated:[/] {escape(str(exc))}", highlight=False, markup=True
        )
    for p in summary.paths:
        out.print(f"wrote {p}", highlight=False)
    regimes: dict[str, int] = {}
    for r in summary.records:
        regimes[r.regime] = regimes.get(r.regime, 0) + 1
    out.print(
        "regimes: " + ", ".join(f"{k}={v}" for k, v in sorted(regimes.items())), highlight=False
    )


def atlas(
    sweep_dirs: Annotated[
        list[Path],
        typer.Argument(
            help="One or two finished sweep directories (plan.json): the first (varies "
            "alpha_w) for step x mismatch, the second (else the first) for beta x offset."
        ),
    ],
    out_file: Annotated[
        Path,
        typer.Option(
            "--out", help="The Markdown page to write; its images go to <stem>/ beside it."
        ),
    ] = Path("outputs/atlas.md"),
    docs: Annotated[
        Path | None,
        typer.Option(
            help="Regenerate a docs page instead of --out (explicitly: --docs docs/atlas.md)."
        ),
    ] = None,
    explain_twins: Annotated[
        bool,
        typer.Option(
            "--explain/--no-explain",
            help="Test each label's representative run by its intervention twin (tdlens "
            "explain; its explain.json is reused when it tests the same label) and add the "
            "twin table.",
        ),
    ] = False,
    explain_iters: Annotated[
        int, typer.Option("--explain-iters", help="Iterations each twin runs (--explain).")
    ] = 20,
    jobs: Annotated[int, typer.Option(help="Parallel workers of the twins (--explain).")] = 1,
) -> None:
    """Draw the regime atlas of one or two sweeps: phase diagrams (step x mismatch, beta x
    mismatch) with the theory boundaries, label agreement over seeds (sweeps with a seeds
    axis), one command per regime and, with --explain, what each label's intervention twin
    did, as a Markdown page (outputs/atlas.md; the docs page docs/atlas.md only with --docs
    docs/atlas.md)."""
    from tdlens.sweeps.atlas.data import AtlasError
    from tdlens.sweeps.atlas.page import write_atlas
    from tdlens.sweeps.plan import is_sweep_dir

    if len(sweep_dirs) > 2:
        _fail(f"SWEEP_DIRS: expected one or two sweep directories, got {len(sweep_dirs)}")
    for sweep_dir in sweep_dirs:
        if not is_sweep_dir(sweep_dir):
            _fail(f"'{sweep_dir}' is not a sweep directory (no plan.json)")
    option, page = ("--docs", docs) if docs is not None else ("--out", out_file)
    if page.suffix != ".md":
        _fail(f"{option} '{page}': expected a .md file")
    if explain_iters < 1:
        _fail(f"--explain-iters: expected >= 1, got {explain_iters}")
    if jobs < 1:
        _fail(f"--jobs: expected >= 1, got {jobs}")
    shown = " ".join(f"OUT/{d.name}" for d in sweep_dirs)
    flags = f" --explain --explain-iters {explain_iters}" if explain_twins else ""
    try:
        result = write_atlas(
            sweep_dirs,
            page,
            f"tdlens atlas {shown} {option} {page}{flags}",
            explain_iters=explain_iters if explain_twins else None,
            jobs=jobs,
        )
    except (AtlasError, RunFileError, ConfigError) as exc:
        _fail(str(exc))
    for p in (result.page, *result.images):
        out.print(f"wrote {p}", highlight=False)
    out.print(
        "regimes: " + ", ".join(f"{k}={v}" for k, v in sorted(result.labels.items())),
        highlight=False,
    )


def laws(
    sweep_dir: Annotated[
        Path, typer.Argument(help="A finished sweep directory (plan.json) over alpha_w and B.")
    ],
    docs: Annotated[
        Path | None,
        typer.Option(
            help="The Markdown page to write (e.g. docs/laws.md), its figures in <stem>/; "
            "default SWEEP_DIR/laws.md."
        ),
    ] = None,
    constant: Annotated[
        Path | None,
        typer.Option(help="A constant-step run for the constant vs annealed panel."),
    ] = None,
    annealed: Annotated[
        Path | None,
        typer.Option(help="Its twin with an alpha_w schedule (schedules.alpha_w.kind)."),
    ] = None,
) -> None:
    """Draw the plateau laws of a sweep: the measured noise floor against eta / B and the
    relaxation time against 1 / eta, with fitted and predicted slopes, as a Markdown page
    (and, with --constant and --annealed, one panel of the two runs with their bands)."""
    from tdlens.sweeps.laws import LawsError, write_laws
    from tdlens.sweeps.plan import is_sweep_dir

    if not is_sweep_dir(sweep_dir):
        _fail(f"'{sweep_dir}' is not a sweep directory (no plan.json)")
    page = docs if docs is not None else sweep_dir / "laws.md"
    if page.suffix != ".md":
        _fail(f"--docs '{docs}': expected a .md file")
    if (constant is None) != (annealed is None):
        _fail("--constant and --annealed go together (the panel compares the two runs)")
    compare = (constant, annealed) if constant is not None and annealed is not None else None
    shown = f"tdlens laws OUT/{sweep_dir.name}"
    if compare is not None:
        shown += f" --constant OUT/{constant.name} --annealed OUT/{annealed.name}"
    if docs is not None:
        shown += f" --docs {docs}"
    reproduce = []
    if compare is not None:
        from tdlens.config import config_from_json

        for run in compare:
            try:
                reproduce.append(_run_command(config_from_json(run / "config.json"), run))
            except (ConfigError, RunFileError, OSError) as exc:
                _fail(f"{run}: {exc}")
    try:
        result = write_laws(sweep_dir, page, shown, compare, reproduce)
    except (LawsError, RunFileError, ConfigError) as exc:
        _fail(str(exc))
    out.print(f"wrote {page}", highlight=False)
    out.print(
        f"floor slope {result.floor_measured.text()} (predicted "
        f"{result.floor_predicted.slope:.3g}); relaxation slope "
        f"{result.tau_measured.text()} (predicted {result.tau_predicted.slope:.3g})",
        highlight=False,
    )


def _run_command(cfg: Any, run: Path) -> str:
    """``tdlens run <name> --set key=value ...`` reproducing `run` from the shipped config
    its config is named after, each key that differs set; ``tdlens run RUN/config.json``
    when no shipped config has that name."""
    from tdlens.config import find_config, load_config, shipped_configs

    if not (shipped_configs() / f"{cfg.name}.yaml").is_file():
        return f"tdlens run OUT/{run.name}/config.json"
    base = load_config(find_config(cfg.name)).to_dict()
    sets: list[str] = []

    def walk(a: Any, b: Any, key: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in b:
                walk(a.get(k), b[k], f"{key}.{k}" if key else k)
        elif a != b:
            sets.append(f"--set {key}={b}")

    walk(base, cfg.to_dict(), "")
    return " ".join(["tdlens run", cfg.name, *sets, f"--run-dir OUT/{run.name}"])


# --------------------------------------------------------------------------- runs


def runs_list(
    where: Annotated[
        str | None,
        typer.Option(help="SQL condition on the runs table, e.g. \"health = 'FAIL'\"."),
    ] = None,
    sweep: Annotated[
        str | None,
        typer.Option(
            help="Only runs of this sweep: its name, or its id (the sweep directory's name, "
            "<time>_<name>, which tells apart two sweeps of one name)."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(help="Rows to show (0: all).")] = 100,
    catalog: CatalogOption = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format", help="table (for reading), csv or json (the list columns and path)."
        ),
    ] = "table",
    timeout: Annotated[
        float, typer.Option(help="Seconds the --where query may run before it is stopped.")
    ] = 10.0,
) -> None:
    """List cataloged runs (read-only query; columns: see `tdlens runs show`).

    A run marked running whose process is gone shows as ``crashed``.
    """
    import csv
    import sys

    from tdlens.catalog import store as cat

    if fmt not in ("table", "csv", "json"):
        _fail(f"--format '{fmt}': expected table, csv or json")
    try:
        rows = cat.query_runs(cat.catalog_path(catalog), where, sweep, timeout=timeout)
    except cat.CatalogError as exc:
        _fail(str(exc))
    shown = [_observed(row) for row in (rows if limit <= 0 else rows[:limit])]
    columns = [*cat.LIST_COLUMNS, "path"]
    if fmt == "json":
        print(json.dumps([{c: row.get(c) for c in columns} for row in shown], indent=1))
        return
    if fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(
            [printable(v) if isinstance(v, str) else v for v in (row.get(c) for c in columns)]
            for row in shown
        )
        return
    cells = [{c: _fmt(row.get(c)) for c in cat.LIST_COLUMNS} for row in shown]
    fitted = fit_columns(cells, cat.LIST_COLUMNS, out.width)
    table = Table(title=f"{len(rows)} run(s)")
    for col in fitted:
        widest = max(len(col), *(len(r[col]) for r in cells))
        table.add_column(col, no_wrap=True, min_width=widest)
    for row in cells:
        table.add_row(*[row[c] for c in fitted])
    out.print(table, crop=False)
    hidden = [c for c in cat.LIST_COLUMNS if c not in fitted]
    if hidden:
        out.print(
            f"({', '.join(hidden)} hidden to fit {out.width} columns; --format csv or json "
            "shows every column)",
            highlight=False,
            markup=False,
        )
    if len(shown) < len(rows):
        out.print(f"({len(rows) - len(shown)} more; --limit 0 shows all)", highlight=False)


LIST_HIDE_ORDER = ("seconds", "sweep_id", "iters", "value_gap", "w_norm", "td_loss", "health")
"""Columns `tdlens runs list` hides first, in this order, when the terminal is too narrow
(id, status and regime always stay)."""


def table_width(cells: Sequence[dict[str, str]], columns: Sequence[str]) -> int:
    """Characters a rich box table needs to show `columns` unwrapped: per column its widest
    cell or header plus 2 of padding and 1 of border, plus the closing border."""
    return 1 + sum(max(len(c), *(len(r[c]) for r in cells)) + 3 for c in columns)


def fit_columns(cells: Sequence[dict[str, str]], columns: Sequence[str], width: int) -> list[str]:
    """`columns` minus those of LIST_HIDE_ORDER, dropped in order, until the table fits in
    `width`; nothing is ever wrapped (an id is one piece even when it alone is wider)."""
    kept = list(columns)
    for name in LIST_HIDE_ORDER:
        if table_width(cells, kept) <= width:
            break
        if name in kept:
            kept.remove(name)
    return kept


def _observed(row: dict[str, Any]) -> dict[str, Any]:
    """A catalog row whose run is marked running but whose process is gone: ``crashed``."""
    from tdlens.rundir.status import observed_status

    return observed_status(row["path"], row) if row.get("status") == "running" else row


def runs_reindex(
    roots: Annotated[
        list[Path] | None,
        typer.Argument(help="Folders to search for run and sweep directories (default: outputs)."),
    ] = None,
    catalog: CatalogOption = None,
) -> None:
    """Rebuild the catalog from the run and sweep directories on disk (e.g. when corrupt).

    A sweep whose plan.json cannot be read, and a symbolic link, are skipped and named.
    """
    from tdlens.catalog import store as cat
    from tdlens.sweeps.reindex import reindex

    roots = roots or [Path("outputs")]
    missing = [str(r) for r in roots if not r.is_dir()]
    if missing:
        _fail(f"no such folder: {', '.join(missing)}")
    path = cat.catalog_path(catalog)
    try:
        n_runs, n_sweeps, skipped = reindex(path, roots)
    except (cat.CatalogError, RunFileError, OSError) as exc:
        _fail(f"reindex into '{path}' failed: {exc}")
    for why in skipped:
        err.print(f"skipped: {why}", highlight=False, markup=False)
    out.print(f"catalog {path}: {n_runs} run(s), {n_sweeps} sweep(s)", highlight=False)


def runs_show(
    run: Annotated[str, typer.Argument(help="Run id, id prefix or run directory path.")],
    catalog: CatalogOption = None,
) -> None:
    """Show everything the catalog holds about a run."""
    from tdlens.catalog import store as cat

    try:
        rows = cat.find_runs(cat.catalog_path(catalog), run)
    except cat.CatalogError as exc:
        _fail(str(exc))
    if not rows:
        _fail(f"no run '{run}' in the catalog")
    for row in map(_observed, rows):
        table = Table(title=row["id"], show_header=False)
        table.add_column("key")
        table.add_column("value", overflow="fold")
        for key, value in row.items():
            if key in ("params", "metrics") and value:
                value = json.dumps(json.loads(value), indent=1)
            table.add_row(key, _fmt(value))
        out.print(table)


# --------------------------------------------------------------------------- compare


def compare(
    targets: Annotated[
        list[str], typer.Argument(help="Run directories, sweep directories, run ids or sweeps.")
    ],
    out_file: Annotated[Path, typer.Option("--out", help="Output HTML file.")] = Path(
        "outputs/compare.html"
    ),
    catalog: CatalogOption = None,
) -> None:
    """Side-by-side final metrics/health and overlaid curves in one self-contained HTML."""
    from tdlens.catalog.store import CatalogError
    from tdlens.sweeps.compare import CompareError
    from tdlens.sweeps.compare import compare as make_compare

    if out_file.suffix.lower() not in (".html", ".htm"):
        _fail(f"--out '{out_file}': expected an .html file name")
    try:
        path = make_compare(targets, out_file, catalog)
    except (CompareError, CatalogError, RunFileError) as exc:
        _fail(str(exc))
    out.print(f"wrote {path}", highlight=False)
