"""TensorBoard export: event files that TensorBoard's own reader loads (see tdlens.export).

Written with the ``tensorboard`` package's own event-file writer and summary protos, so no
TensorFlow or PyTorch is needed. Each scalar is written twice under its tag: as a float64
tensor (TensorBoard's scalar plugin reads it, so every value reads back exactly) and as a
classic ``simple_value`` (float32), which ``EventAccumulator.Scalars()`` and older readers
return. Images are tagged ``plots/<metric>``, the figure's metric without its
data-dependent note (``plots/w_norm``, not ``plots/01_w_norm_changed_0.0035_of_its_level``),
so the same plot of two runs lines up. A run with no series to export (a run that failed
before its first iteration) gets no event file.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tdlens.export import ExportError, Target, scalar_series, tags, targets
from tdlens.pages.honest import FLAT_NOTE
from tdlens.pages.kit import figure_specs

_DASH = {"dash": "--", "dot": ":", "dashdot": "-.", "longdash": "--", "longdashdot": "-."}


def _tensorboard() -> Any:
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, types_pb2
        from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
        from tensorboard.plugins.scalar import metadata as scalar_metadata
        from tensorboard.plugins.text.summary_v2 import text_pb
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        raise ExportError(
            "TensorBoard export needs the tensorboard package: pip install 'tdlens[tensorboard]'"
        ) from None
    return (
        event_pb2,
        summary_pb2,
        tensor_pb2,
        types_pb2,
        TensorShapeProto,
        scalar_metadata,
        text_pb,
        EventFileWriter,
    )


def report_images(run_dir: Path) -> list[tuple[str, bytes]]:
    """The figures of the run's HTML report as (title, PNG bytes), in page order: each
    plotly spec of run_report.html (:func:`tdlens.pages.kit.figure_specs`), or of the
    page rendered in memory when the run has none (a sweep run), drawn again with
    matplotlib, since TensorBoard shows images, not scripts."""
    path = run_dir / "run_report.html"
    if path.is_file():
        text = path.read_text(encoding="utf-8", errors="replace")
    else:
        from tdlens.report import build_report, render_html

        text = render_html(build_report(run_dir))
    specs = figure_specs(text)
    return [(spec["layout"].get("title", {}).get("text", "plot"), spec_png(spec)) for spec in specs]


_NOTES = re.compile(rf": (changed .* of its level|{re.escape(FLAT_NOTE)})$")


def image_tag(title: str) -> str:
    """``plots/<metric>``: a figure's title without the notes that depend on the data (``:
    changed 0.35% of its level``, ``: no change beyond noise``, `` at iteration 79``)."""
    name = _NOTES.sub("", re.sub(r" at iteration \d+", "", title))
    return f"plots/{_slug(name)}"


def spec_png(spec: dict[str, Any]) -> bytes:
    """A plotly spec's scatter, bar and heatmap traces as a PNG (no timestamp metadata,
    so the bytes are reproducible)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    layout = spec.get("layout", {})
    for trace in spec.get("data", []):
        kind, name = trace.get("type", "scatter"), trace.get("name")
        if kind == "heatmap":
            z = np.array(trace["z"], dtype=float)
            ax.imshow(z, origin="lower", aspect="auto", cmap="RdBu_r")
        elif kind == "bar":
            ax.bar(trace["x"], trace["y"], label=name)
        else:
            dash = _DASH.get(trace.get("line", {}).get("dash", ""), "-")
            marker = "o" if "markers" in trace.get("mode", "lines") else None
            ls = "none" if trace.get("mode") == "markers" else dash
            ax.plot(trace["x"], trace["y"], ls=ls, marker=marker, ms=3, label=name)
    ax.set_title(layout.get("title", {}).get("text", ""), fontsize=10)
    ax.set_xlabel(layout.get("xaxis", {}).get("title", {}).get("text", ""))
    ax.set_ylabel(layout.get("yaxis", {}).get("title", {}).get("text", ""))
    if layout.get("yaxis", {}).get("type") == "log":
        ax.set_yscale("log")
    elif layout.get("yaxis", {}).get("range"):
        ax.set_ylim(*layout["yaxis"]["range"])
    if any(t.get("name") for t in spec.get("data", []) if t.get("type") != "heatmap"):
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    return buf.getvalue()


def _png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "plot"


def run_logdir(out: Path, target: Target) -> Path:
    """``<out>/<run id>``, or ``<out>/<sweep>/<run id>`` for a sweep's run."""
    return out / target.sweep / target.run_id if target.sweep else out / target.run_id


def write_run(target: Target, logdir: Path) -> dict[str, int]:
    """Replace `logdir` with the event file of one run; returns what was written."""
    (event_pb2, summary_pb2, tensor_pb2, types_pb2, shape, scalar_md, text_pb, writer_cls) = (
        _tensorboard()
    )
    series = scalar_series(target.data)
    if not series:  # nothing to export: no event file (the caller says so)
        return {"series": 0, "images": 0}
    if logdir.exists():
        shutil.rmtree(logdir)
    logdir.mkdir(parents=True)
    metadata = scalar_md.create_summary_metadata(display_name="", description="")
    by_step: dict[int, list[Any]] = defaultdict(list)
    for tag, points in series.items():
        for step, value in points:
            tensor = tensor_pb2.TensorProto(
                dtype=types_pb2.DT_DOUBLE, tensor_shape=shape(), double_val=[value]
            )
            by_step[step].append(
                summary_pb2.Summary.Value(tag=tag, metadata=metadata, tensor=tensor)
            )
            by_step[step].append(summary_pb2.Summary.Value(tag=tag, simple_value=value))
    writer = writer_cls(str(logdir))
    now = time.time()
    try:
        for step in sorted(by_step):
            summary = summary_pb2.Summary(value=by_step[step])
            writer.add_event(event_pb2.Event(wall_time=now, step=step, summary=summary))
        texts = {
            "report": _report_text(target.path),
            "config": "```json\n" + json.dumps(target.data.config_data, indent=1) + "\n```",
            "tags": "\n".join(f"- {k}: {v}" for k, v in tags(target).items()),
        }
        for tag, text in texts.items():
            writer.add_event(event_pb2.Event(wall_time=now, step=0, summary=text_pb(tag, text)))
        images = report_images(target.path)
        used: dict[str, int] = {}
        for caption, png in images:
            width, height = _png_size(png)
            image = summary_pb2.Summary.Image(
                height=height, width=width, colorspace=4, encoded_image_string=png
            )
            tag = image_tag(caption)
            used[tag] = used.get(tag, 0) + 1
            tag = tag if used[tag] == 1 else f"{tag}_{used[tag]}"
            value = summary_pb2.Summary.Value(tag=tag, image=image)
            summary = summary_pb2.Summary(value=[value])
            writer.add_event(event_pb2.Event(wall_time=now, step=0, summary=summary))
        writer.flush()
    finally:
        writer.close()
    return {"series": len(series), "images": len(images)}


def _report_text(run_dir: Path) -> str:
    path = run_dir / "run_report.md"
    return path.read_text(encoding="utf-8") if path.is_file() else "(no run_report.md)"


def export_tensorboard(
    path: str | Path,
    out: str | Path,
    on_run: Callable[[Target, Path, dict[str, int]], None] | None = None,
    on_drop: Callable[[str, str], None] | None = None,
) -> list[Path]:
    """Write one TensorBoard run folder per run of `path` (a run or sweep directory) under
    `out`, replacing earlier exports of the same runs; returns the folders written.

    A run with nothing to export (no series: it failed before its first iteration) and a
    sweep's run that never started are dropped: ``on_drop(run_id, why)``."""
    _tensorboard()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out '{out}' is a file; it must be a folder (or not exist yet)")
    found = targets(path)
    if on_drop is not None:
        for run_id in not_started(path, found):
            on_drop(run_id, "never started (no config.json)")
    written = []
    for target in found:
        logdir = run_logdir(out, target)
        counts = write_run(target, logdir)
        if not counts["series"]:
            if on_drop is not None:
                on_drop(target.run_id, _nothing(target))
            continue
        if on_run is not None:
            on_run(target, logdir, counts)
        written.append(logdir)
    return written


def _nothing(target: Target) -> str:
    status = target.data.status
    why = f"{status.get('status') or 'unknown'}"
    if status.get("reason"):
        why += f": {status['reason']}"
    return f"nothing to export, no learning-curve or probe rows ({why})"


def not_started(path: str | Path, found: list[Target]) -> list[str]:
    """The run ids of a sweep's plan that `found` (its started runs) lacks."""
    from tdlens.sweeps.plan import read_plan

    path = Path(path)
    if not (path / "plan.json").is_file():
        return []
    have = {t.run_id for t in found}
    return [e["run_id"] for e in read_plan(path)["runs"] if e["run_id"] not in have]
