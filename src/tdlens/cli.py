"""The `tdlens` command line (docs/model.md §12): the one module that registers commands.

Command bodies live here, in :mod:`tdlens.sweeps.commands` and in
:mod:`tdlens.export.commands`; only these print.

Exit codes: 0 success, 1 a check failed (a sanity check; health FAIL only with
--strict; a run that failed, or whose report or status could not be written), 2 bad
input, 130/143/129 a run stopped by SIGINT/SIGTERM/SIGHUP. Expected failures print one
line; an unexpected error prints one line too and the traceback only with
``tdlens --debug`` (or ``TDLENS_DEBUG=1``).
"""

from __future__ import annotations

import gc
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from tdlens.config import ConfigError, RunConfig, printable

app = typer.Typer(
    name="tdlens",
    help="A workbench for off-policy TD learning with an unfixed behaviour policy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True, markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)
"""Markup is off: text is printed as written (`E_mu[rho^2]`, a path with brackets); the
few styled prints pass ``markup=True`` and escape what they interpolate."""
_debug = {"on": os.environ.get("TDLENS_DEBUG", "") not in ("", "0")}


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of an unexpected error.")
    ] = False,
) -> None:
    """A workbench for off-policy TD learning with an unfixed behaviour policy."""
    _debug["on"] = _debug["on"] or debug


DEFAULT_CONFIG = "seed_plateau"
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key: --set env.p_mix=0.01 (repeatable)."),
]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one clear error line (control characters escaped) and exit (2 = bad input)."""
    err.print(f"[bold red]error:[/] {escape(printable(message))}", highlight=False, markup=True)
    raise typer.Exit(code)


def load_cli_config(arg: str | None, overrides: list[str] | None, name: str | None) -> RunConfig:
    """The config of a command (tdlens.api.load_run_config); bad input exits 2."""
    from tdlens.api import load_run_config

    try:
        return load_run_config(arg or DEFAULT_CONFIG, overrides or [], name)
    except ConfigError as exc:
        fail(str(exc))


@app.command()
def run(
    config: Annotated[
        str | None,
        typer.Argument(
            help="Config YAML or shipped name (default: seed_plateau); with --resume "
            "a run directory."
        ),
    ] = None,
    overrides: SetOption = None,
    output_dir: Annotated[Path, typer.Option(help="Parent folder of new runs.")] = Path(
        "outputs/runs"
    ),
    run_dir: Annotated[
        Path | None, typer.Option(help="Exact run directory (default: <output-dir>/<time>_<name>).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Run name (sets the config's name).")] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --run-dir (or CONFIG) from its checkpoint.")
    ] = False,
    restart: Annotated[
        bool,
        typer.Option(
            help="Start the run in --run-dir (or CONFIG) over from its config.json, on "
            "purpose; its old files move to previous/<time>/."
        ),
    ] = False,
    strict: Annotated[bool, typer.Option(help="Exit 1 when the report's health is FAIL.")] = False,
    catalog: Annotated[
        Path | None,
        typer.Option(
            help="Catalog to index the run in (default: $TDLENS_CATALOG or outputs/catalog.sqlite)."
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(help="Start even when the estimated memory or disk exceeds what is free."),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the resolved config (YAML) and the memory/disk estimate; write nothing.",
        ),
    ] = False,
) -> None:
    """Run the actor-critic with probes and write a run report."""
    from tdlens.api import create_runner
    from tdlens.rundir.files import RunFileError
    from tdlens.rundir.lock import RunLockedError
    from tdlens.runs.budget import ResourceError
    from tdlens.runs.runner import RunDirError, RunFinishedError

    if resume and restart:
        fail("--resume and --restart exclude each other; choose one")
    if resume or restart:
        flag = "--resume" if resume else "--restart"
        target = run_dir or (Path(config) if config else None)
        if target is None:
            fail(f"{flag} needs the run directory: tdlens run RUN_DIR {flag}")
        if overrides:
            fail(f"{flag} uses the run's own config.json; --set is not allowed")
        cfg = None
    else:
        cfg = load_cli_config(config, overrides, name)
        target = run_dir
    if dry_run:
        raise typer.Exit(_dry_run(cfg, target, output_dir, force, restart))
    try:
        runner = create_runner(
            cfg,
            target,
            output_dir=output_dir,
            resume=resume,
            force=force,
            catalog=catalog,
            on_catalog_error=_catalog_warning,
            restart=restart,
        )
    except RunFinishedError as exc:
        out.print(str(exc), highlight=False)
        raise typer.Exit(0) from None
    except (RunDirError, ConfigError, RunFileError, ResourceError) as exc:
        fail(str(exc))
    cfg = runner.cfg
    if not cfg.sigma_condition_ok:
        err.print(
            "[yellow]warning:[/] " + escape(_sigma_warning(cfg)), highlight=False, markup=True
        )
    out.print(f"run directory: {printable(str(runner.run_dir))}", highlight=False)
    # the start-up's objects (~50k: NumPy, SciPy, pydantic, typer) outlive the run:
    # frozen meanwhile, the collector's full passes skip them (two instead of three in a
    # seed run, ~0.15 s less; BENCHMARKS.md issue 28 session 10)
    gc.freeze()
    try:
        result = _run_with_progress(runner)
    except (RunLockedError, RunFileError, RunDirError, ResourceError) as exc:
        fail(str(exc))
    finally:
        gc.unfreeze()  # an in-process caller (the tests) keeps a heap it can collect
    if result.resumed_from:
        out.print(f"resumed from {printable(result.resumed_from)}", highlight=False)
    _print_outcome(result.run_dir, result.status, result.reason)
    for what in result.unwritten:
        err.print(
            f"[yellow]warning:[/] could not write {escape(what)}", highlight=False, markup=True
        )
    if any(w.startswith("status.json") for w in result.unwritten):
        err.print(
            "status.json still says 'running'; `tdlens runs list` and `tdlens report` show "
            "the run as crashed, and `--resume` continues it",
            highlight=False,
        )
    _index_in_catalog(catalog, result.run_dir)
    _print_report_line(result.run_dir)
    code = result.exit_code
    if code == 0 and (result.unwritten or (strict and _health(result.run_dir) == "FAIL")):
        code = 1
    raise typer.Exit(code)


def _sigma_warning(cfg: RunConfig) -> str:
    """Why a config with sigma_pi^2 >= 2 sigma_mu^2 and no rho clip will FAIL its report."""
    return (
        f"sigma_pi^2 = {cfg.sigma_pi**2:.4g} >= 2 sigma_mu^2 = {2 * cfg.sigma_mu**2:.4g} "
        "with rho unclipped: E_mu[rho^2] is infinite; the report will FAIL sigma_condition"
    )


def _dry_run(
    cfg: RunConfig | None, target: Path | None, output_dir: Path, force: bool, restart: bool = False
) -> int:
    """``tdlens run --dry-run``: the resolved config as YAML on stdout (it loads back as the
    same config), then, as YAML comments, the memory/disk estimate of
    :mod:`tdlens.runs.budget` and where the run would go. Creates nothing. Returns the exit
    code: 0, or 2 as a real run would (a run the budget refuses without --force; a config
    that does not load or a directory a run could not use exit 2 at once)."""
    import yaml

    from tdlens.config import config_from_json
    from tdlens.runs.budget import (
        ResourceError,
        available_memory,
        check_resources,
        estimate,
        free_disk,
        human,
    )
    from tdlens.runs.runner import check_creatable, default_run_dir

    if cfg is None:  # --resume / --restart: the run's own config
        assert target is not None
        if not (target / "config.json").is_file():
            fail(f"--resume: '{target}' is not a run directory (no config.json)")
        try:
            cfg = config_from_json(target / "config.json")
        except ConfigError as exc:
            fail(str(exc))
        verb = "would restart (old files to previous/<time>/)" if restart else "would resume"
    else:
        if output_dir.exists() and not output_dir.is_dir():
            fail(f"--output-dir '{output_dir}' is a file; it must be a folder (or not exist yet)")
        target = target or default_run_dir(output_dir, cfg.name)
        if target.is_dir() and any(target.iterdir()):
            fail(f"run directory '{target}' already exists; pass --resume to continue it")
        try:
            check_creatable(target)
        except ValueError as exc:
            fail(str(exc))
        verb = "would write"
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip()
    out.print(text, highlight=False, markup=False)
    est = estimate(cfg)
    memory, disk = available_memory(), free_disk(target)
    terms = ", ".join(f"{k} {human(v)}" for k, v in est.memory_terms.items() if v)
    lines = [
        f"config_hash: {cfg.config_hash()}",
        f"estimated peak memory: {human(est.peak_bytes)} ({terms})"
        + (f" of {human(memory)} available" if memory is not None else ""),
        f"estimated disk: {human(est.disk_bytes)}"
        + (f" of {human(disk)} free" if disk is not None else ""),
    ]
    if not cfg.sigma_condition_ok:
        lines.append(f"warning: {_sigma_warning(cfg)}")
    code = 0
    try:
        check_resources(cfg, target)
    except ResourceError as exc:
        verdict = "--force: would start anyway; " if force else "would be refused: "
        lines.append(verdict + str(exc))
        code = 0 if force else 2
    lines.append(f"{verb}: {target} (dry run: nothing written)")
    for line in lines:
        out.print(f"# {line}", highlight=False, markup=False)
    return code


def _run_with_progress(runner, console: Console | None = None):
    """tdlens.api.execute with a live progress bar when `console` (stdout) is a terminal,
    else one plain line per iteration (tdlens.api.PlainProgress). Both number iterations
    as the tables do: ``iter 79 (80/80 done)`` after the 0-based iteration 79."""
    from tdlens.api import PlainProgress, execute, probe_every

    console = console or out
    if not console.is_terminal:
        return execute(runner, PlainProgress(probe_every(runner.cfg)))
    with Progress(*_bar_columns(), console=console, transient=False) as bar:
        return execute(runner, _live_progress(bar, runner.cfg))


def _bar_columns() -> tuple:
    """``seed_plateau iter 78 ━━━━ 79/80 done 0:07:30 ETA 44s td_loss ... w_norm ...
    probes at iter 74 (every, 43.9s)`` (fresh columns per bar: they cache renders); the
    ETA is tdlens.api.Eta's, which times probe rounds apart from iterations."""
    return (
        TextColumn("[bold]{task.fields[name]}[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("done"),
        TimeElapsedColumn(),
        TextColumn("ETA {task.fields[eta]}"),
        TextColumn("{task.fields[info]}", markup=False),
    )


def _live_progress(bar: Progress, cfg: RunConfig):
    """The on_progress hook that moves `bar`: ``iter n``, n + 1 of outer_iters done,
    td_loss, w_norm and the newest probe round (its 0-based iteration, reason, seconds)."""
    from tdlens.api import Eta, probe_every
    from tdlens.pages.fmt import duration_text
    from tdlens.runs.runner import Progress as RunProgress

    name = escape(printable(cfg.name))
    task = bar.add_task("starting", total=cfg.outer_iters, name=name, info="", eta="-")
    last_probe = {"text": "no probe round yet"}
    clock = Eta(probe_every(cfg))

    def live(p: RunProgress) -> None:
        if p.probe_reason:
            last_probe["text"] = f"probes at iter {p.n} ({p.probe_reason}, {p.probe_seconds:.1f}s)"
        info = (
            f"td_loss {p.metrics['td_loss']:.3g}  w_norm {p.metrics['w_norm']:.5g}  "
            f"{last_probe['text']}"
        )
        _, eta = clock.update(p)
        if eta is None:  # the end, or the first iteration (its time includes the compile)
            eta_text = "0s" if p.n + 1 >= p.outer_iters else "-"
        else:
            eta_text = duration_text(eta)
        bar.update(task, description=f"iter {p.n}", completed=p.n + 1, info=info, eta=eta_text)

    return live


def _catalog_warning(path: Path, error: str) -> None:
    err.print(
        "[yellow]warning:[/] " + escape(f"run not indexed in catalog '{path}': {error}"),
        highlight=False,
        markup=True,
    )


def _index_in_catalog(catalog: Path | None, run_dir: Path, quiet: bool = False) -> None:
    """Index a run in the SQLite catalog (tdlens.api.index_in_catalog); errors only warn."""
    from tdlens.api import index_in_catalog

    path, error = index_in_catalog(catalog, run_dir)
    if error is not None:
        _catalog_warning(path, error)
    elif not quiet:
        out.print(f"catalog: {path}", highlight=False)


def _health(run_dir: Path) -> str | None:
    import json

    path = Path(run_dir) / "run_report.json"
    try:
        return json.loads(path.read_text())["health"]["status"]
    except (OSError, KeyError, ValueError, TypeError):
        return None


def _print_outcome(run_dir: Path, status: str, reason: str | None) -> None:
    health = _health(run_dir)
    text = f"status: {status}" + (f" ({reason})" if reason else "")
    out.print(printable(text), highlight=False)
    if health is not None:
        out.print(f"health: {health}", highlight=False)


def _print_report_line(run_dir: Path) -> None:
    """The last line of ``tdlens run``: where the report is, Markdown and HTML page."""
    report, page = Path(run_dir) / "run_report.md", Path(run_dir) / "run_report.html"
    if report.exists():
        html = f" (with plots: {printable(str(page))})" if page.exists() else ""
        out.print(f"report: {printable(str(report))}{html}", highlight=False)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    strict: Annotated[bool, typer.Option(help="Exit 1 when health is FAIL.")] = False,
) -> None:
    """(Re)generate run_report.md/.json/.html from a run directory's files alone."""
    from tdlens.report import write_report
    from tdlens.rundir.files import RunFileError

    if not (run_dir / "config.json").is_file():
        fail(f"'{run_dir}' is not a run directory (no config.json)")
    try:
        paths = write_report(run_dir)
    except (RunFileError, ConfigError) as exc:
        fail(str(exc))
    for p in paths:
        out.print(f"wrote {p}", highlight=False)
    health = _health(run_dir)
    out.print(f"health: {health}", highlight=False)
    raise typer.Exit(1 if strict and health == "FAIL" else 0)


@app.command()
def explain(
    run_dir: Annotated[Path, typer.Argument(help="A run directory with checkpoints.")],
    iters: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Iterations each twin runs after the branch point (default: 20; for a "
            "diverged label the run's whole length, outer_iters - at).",
        ),
    ] = None,
    at: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Branch at the newest checkpoint at or before this iteration; 0 branches "
            "from the initial state (default: 0 for a diverged label, which claims its "
            "intervention would have prevented the divergence; else outer_iters - iters).",
        ),
    ] = None,
    jobs: Annotated[int, typer.Option(help="Twins run at once.")] = 1,
    backend: Annotated[str, typer.Option(help="Sweep backend: local or ray.")] = "local",
    address: Annotated[
        str | None, typer.Option(help="Ray cluster HOST:PORT or auto (--backend ray).")
    ] = None,
    label: Annotated[
        str | None,
        typer.Option(help="Test this label's interventions instead of the run's own label."),
    ] = None,
    catalog: Annotated[
        Path | None,
        typer.Option(
            help="Catalog to index the twins in (default: $TDLENS_CATALOG or "
            "outputs/catalog.sqlite)."
        ),
    ] = None,
) -> None:
    """Test the run's regime label by intervention twins: branches of the run from one
    checkpoint (a diverged label: from the start, for the run's whole length), one per
    intervention of the label plus an unchanged control, run --iters iterations; writes
    explain.{md,json,html} in the run directory (docs/model.md)."""
    from tdlens.rundir.files import RunFileError
    from tdlens.runs.runner import RunDirError
    from tdlens.sweeps.backends import BackendError
    from tdlens.sweeps.explain import ExplainError, summary_line
    from tdlens.sweeps.explain import explain as run_explain

    try:
        result = run_explain(
            run_dir,
            iters,
            jobs=jobs,
            backend=backend,
            address=address,
            label=label,
            catalog=catalog,
            at=at,
        )
    except (ExplainError, RunDirError, ConfigError, RunFileError, BackendError) as exc:
        fail(str(exc))
    for twin in result["twins"]:
        out.print(f"{twin['name']}: {twin['verdict']} ({twin['why']})", highlight=False)
    out.print(summary_line(result), highlight=False)
    for name in ("explain.md", "explain.json", "explain.html"):
        out.print(f"wrote {printable(str(run_dir / name))}", highlight=False)


@app.command()
def render(
    config: Annotated[str | None, typer.Argument(help="Config YAML or shipped name.")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Number of steps to record.")] = 100,
    out_file: Annotated[Path, typer.Option("--out", help="Output GIF path.")] = Path(
        "outputs/episode.gif"
    ),
    overrides: SetOption = None,
) -> None:
    """Record one episode under the config's behaviour policy as an animated GIF."""
    from tdlens.render import render_episode_gif

    cfg = load_cli_config(config, overrides, None)
    if out_file.suffix.lower() != ".gif":
        fail(f"--out '{out_file}': expected a .gif file name")
    path = render_episode_gif(cfg, steps, out_file)
    out.print(f"wrote {path} ({steps} frames)", highlight=False)


@app.command()
def calibrate(
    run_or_config: Annotated[str, typer.Argument(help="A run directory or a config YAML/name.")],
    grid: Annotated[
        str, typer.Option(help="Comma-separated multiples f of the critical step.")
    ] = "0.5,0.8,0.9,1.1,1.25,1.5,2",
    iters: Annotated[int, typer.Option(min=2, help="Training iterations per f.")] = 60,
    out_dir: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path(
        "outputs/calibrate"
    ),
    overrides: SetOption = None,
) -> None:
    """Train at alpha_w = f x critical step (policies frozen) and compare the empirical
    divergence threshold with the stability probe's critical step and its interval."""
    from tdlens.runs import calibrate as cal

    try:
        fs = tuple(float(x) for x in grid.split(","))
    except ValueError:
        fail(f"--grid '{grid}': expected comma-separated numbers such as 0.5,1,2")
    if not fs or any(not f > 0 for f in fs):
        fail(f"--grid '{grid}': every f must be > 0")
    path = Path(run_or_config)
    if path.is_dir() and not (path / "config.json").is_file():
        fail(f"'{path}' is not a run directory (no config.json)")
    cfg = load_cli_config(
        str(path / "config.json") if path.is_dir() else run_or_config, overrides, None
    )
    result = cal.calibrate(cfg, fs, iters)
    for p in cal.write(result, out_dir):
        out.print(f"wrote {p}", highlight=False)
    lo, hi = result.predicted_interval
    stable, div = result.empirical_bracket
    empirical = (
        f"stable up to f = {stable:g}, diverged at f = {div:g}"
        if div != float("inf")
        else f"no f up to {stable:g} diverged within {iters} iterations"
    )
    out.print(
        f"critical_step {result.critical_step:.4g} (alpha_w {result.critical_alpha_w:.4g}); "
        f"predicted f in [{lo:.3g}, {hi:.3g}]; empirical: {empirical}",
        highlight=False,
    )


@app.command()
def sanity(
    base: Annotated[
        str | None, typer.Option(help="Base config YAML or shipped name (default: sanity).")
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("outputs/sanity"),
    only: Annotated[
        list[str] | None, typer.Option(help="Run only this check (repeatable).")
    ] = None,
    overrides: SetOption = None,
) -> None:
    """Run the behavioural sanity suite and the base-check matrix C0..C7.

    Exits 1 when any check fails.
    """
    from tdlens.suites import SANITY_CHECKS, run_suite

    cfg = load_cli_config(base or "sanity", overrides, None)
    unknown = [n for n in only or [] if n not in SANITY_CHECKS]
    if unknown:
        fail(f"--only: unknown check(s) {', '.join(unknown)}; known: {', '.join(SANITY_CHECKS)}")

    def show(res) -> None:
        verdict = "[green]PASS[/]" if res.passed else "[bold red]FAIL[/]"
        text = escape(f"{res.name} ({res.seconds:.1f}s): {res.observed}")
        out.print(f"{verdict} {text}", highlight=False, markup=True)

    suite = run_suite(cfg, out_dir, only=only, on_check=show)
    out.print(f"summary: {suite.out_dir / 'SUMMARY.md'}", highlight=False)
    raise typer.Exit(0 if suite.passed else 1)


audit_app = typer.Typer(help="Audits of a finished run.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


AUDIT_ROWS = (
    ("E_mu[rho]", "rho_mean"),
    ("E_mu[rho^2]", "rho2_mean"),
    ("E_mu[min(rho, c)]", "clipped_mean"),
)
"""The rows of `tdlens audit rho`: label and rho_audit column prefix."""
AUDIT_AGREE_Z = 1e-6
"""|z - z_report| below which a replayed audit agrees with the report (float rounding)."""


@audit_app.command("rho")
def audit_rho(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh",
            help="Audit an independent chain instead of replaying the report's own draws.",
        ),
    ] = False,
) -> None:
    """Importance ratios at the run's newest checkpoint vs their closed forms, beside the
    report's own audit at that iteration.

    By default the audit replays the chain the run's rho audit drew at that iteration, so
    its numbers are the report's; --fresh draws an independent chain (a second sample:
    its z-scores differ from the report's by sampling noise). Exits 1 when the audit fails.
    """
    from rich.table import Table

    from tdlens.rundir.files import RunFileError
    from tdlens.runs.audit import audit_run_rho

    if not (run_dir / "config.json").is_file():
        fail(f"'{run_dir}' is not a run directory (no config.json)")
    try:
        res = audit_run_rho(run_dir, "fresh" if fresh else "replay")
    except (RunFileError, ConfigError) as exc:
        fail(str(exc))
    n, row, rep = res.n, res.row, res.report_row or {}
    nan = float("nan")
    table = Table(title=f"rho audit of {run_dir} at iteration {n} ({res.draws} draws)")
    for header in ("quantity", "empirical", "theory", "z"):
        table.add_column(header, justify="left" if header == "quantity" else "right")
    if res.report_row is not None:
        table.add_column(f"report z (iter {res.report_iter})", justify="right")
    for label, key in AUDIT_ROWS:
        cells = [
            label,
            f"{row.get(key + '_emp', nan):.4g}",
            f"{row.get(key + '_theory', nan):.4g}",
            f"{row.get(key + '_z', nan):.3g}",
        ]
        if res.report_row is not None:
            cells.append(f"{rep.get(key + '_z', nan):.3g}")
        table.add_row(*cells)
    sup = ["max rho", f"{row.get('rho_max_emp', nan):.4g}"]
    sup += [f"<= {row.get('rho_sup_theory', nan):.4g}", ""]
    table.add_row(*sup, *([""] if res.report_row is not None else []))
    out.print(table)
    passed = bool(row.get("passed", 0))
    reliable = bool(row.get("reliable", 1))
    note = "" if reliable else " (the rho^2 z-score is left out: infinite variance)"
    out.print(
        f"verdict: {'PASS' if passed else 'FAIL'}: max |z| = {row.get('max_abs_z', nan):.3g} "
        f"vs {row.get('z_threshold', nan):.3g}{note}, n = {int(row.get('n', 0))}",
        highlight=False,
        markup=False,
    )
    out.print(_audit_comparison(res), highlight=False, markup=False)
    raise typer.Exit(0 if passed else 1)


def _audit_comparison(res) -> str:
    """One line saying whether the audit and the report's audit agree, and why not."""
    if res.report_row is None:
        return (
            f"report: the run has no rho audit up to iteration {res.n} "
            "(probes.rho_audit disabled or no probe round ran); nothing to compare"
        )
    if res.report_iter != res.n:
        return (
            f"report: its newest rho audit is at iteration {res.report_iter}, before the "
            f"checkpoint's iteration {res.n}: other parameters, so other numbers"
        )
    gaps = [
        abs(res.row.get(k + "_z", 0.0) - res.report_row.get(k + "_z", 0.0)) for _, k in AUDIT_ROWS
    ]
    gap = max((g for g in gaps if g == g), default=0.0)
    if res.same_sample:
        how = "agree" if gap <= AUDIT_AGREE_Z else f"DIFFER (max |z - z_report| = {gap:.3g})"
        return (
            f"report: same iteration, same parameters, same draws (the report's own chain "
            f"replayed): the z-scores {how}"
        )
    return (
        f"report: same iteration and parameters but an independent chain (--fresh): both "
        f"z are N(0, 1) draws, so they differ by sampling noise (sd of the difference "
        f"~1.4; here max |z - z_report| = {gap:.3g}); without --fresh the audit replays "
        "the report's draws"
    )


def _register_sweep_commands() -> None:
    """The sweep, catalog and compare commands (their bodies live in tdlens.sweeps.commands)."""
    from tdlens.sweeps import commands as sc

    app.command("sweep")(sc.sweep)
    app.command("summarize")(sc.summarize)
    app.command("atlas")(sc.atlas)
    app.command("laws")(sc.laws)
    runs_app = typer.Typer(help="Query the run catalog (SQLite).", no_args_is_help=True)
    runs_app.command("list")(sc.runs_list)
    runs_app.command("show")(sc.runs_show)
    runs_app.command("reindex")(sc.runs_reindex)
    app.add_typer(runs_app, name="runs")
    app.command("compare")(sc.compare)


def _register_export_commands() -> None:
    """tdlens export tensorboard|mlflow (their bodies live in tdlens.export.commands)."""
    from tdlens.export import commands as ec

    export_app = typer.Typer(help=ec.HELP, no_args_is_help=True)
    export_app.command("tensorboard")(ec.tensorboard)
    export_app.command("mlflow")(ec.mlflow)
    app.add_typer(export_app, name="export")


_register_sweep_commands()
_register_export_commands()


def main(argv: list[str] | None = None) -> int:
    """The console entry point: the app, with unexpected errors as one line (module doc).

    Usage errors and every command's exit code leave through ``SystemExit`` as usual.
    The process ends next, so its objects are frozen (:func:`gc.freeze`) on the way out:
    the interpreter's exit still frees them by reference count, but its cyclic collector
    no longer walks the ~150k objects of numba, SciPy and a run (0.3-0.6 s after
    ``tdlens run``, BENCHMARKS.md issue 28 session 9).
    """
    try:
        app(args=argv)
    except Exception as exc:
        if _debug["on"]:
            traceback.print_exc()
        else:
            what = " ".join(f"{type(exc).__name__}: {exc}".split())
            err.print(
                f"[bold red]error:[/] {escape(what)} (run `tdlens --debug ...` for the traceback)",
                highlight=False,
                markup=True,
            )
        return 1
    finally:
        gc.freeze()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
