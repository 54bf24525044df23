"""TensorBoard export: event files that TensorBoard's own reader loads (see tdlens.export).

Written with the ``tensorboard`` package's own event-file writer and summary protos, so no
TensorFlow or PyTorch is needed. Scalars are stored as float64 tensors (TensorBoard's
scalar plugin reads them), so every value reads back exactly, not rounded to float32.
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
from tdlens.report.kit import figure_specs

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
    """The figures of run_report.html as (title, PNG bytes), in page order: each plotly
    spec the page holds (:func:`tdlens.report.kit.figure_specs`) drawn again with
    matplotlib, since TensorBoard shows images, not scripts."""
    path = run_dir / "run_report.html"
    if not path.is_file():
        return []
    specs = figure_specs(path.read_text(encoding="utf-8", errors="replace"))
    return [(spec["layout"].get("title", {}).get("text", "plot"), spec_png(spec)) for spec in specs]


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
    if logdir.exists():
        shutil.rmtree(logdir)
    logdir.mkdir(parents=True)
    series = scalar_series(target.data)
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
        for k, (caption, png) in enumerate(images):
            width, height = _png_size(png)
            image = summary_pb2.Summary.Image(
                height=height, width=width, colorspace=4, encoded_image_string=png
            )
            value = summary_pb2.Summary.Value(tag=f"plots/{k:02d}_{_slug(caption)}", image=image)
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
) -> list[Path]:
    """Write one TensorBoard run folder per run of `path` (a run or sweep directory) under
    `out`, replacing earlier exports of the same runs; returns the folders written."""
    _tensorboard()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out '{out}' is a file; it must be a folder (or not exist yet)")
    written = []
    for target in targets(path):
        logdir = run_logdir(out, target)
        counts = write_run(target, logdir)
        if on_run is not None:
            on_run(target, logdir, counts)
        written.append(logdir)
    return written
