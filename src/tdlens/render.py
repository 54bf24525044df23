"""An episode of the behaviour policy mu as an animated GIF (``tdlens render``).

The pictures are :func:`tdlens.torus.draw.draw_state`'s, with a legend naming every
mark (adventurer, action, ghost and its catch radius, goblets by type) and a caption
(config, seed, step, the policy that acts); this module adds the policy (features,
initial parameters), so it sits above the learner.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from tdlens.config import RunConfig
from tdlens.features import make_feature_maps
from tdlens.learner import init_params
from tdlens.rollout import draw_noise, roll_out
from tdlens.rundir.files import file_mode
from tdlens.seeding import stream
from tdlens.torus.draw import draw_state, legend_handles
from tdlens.torus.dynamics import TorusState, reset_from_uniforms, step


def episode_frames(cfg: RunConfig, steps: int) -> list[np.ndarray]:
    """Roll out one environment for `steps` steps under mu and render every step.

    The episode is the trainer's own rollout (:func:`tdlens.rollout.roll_out` of one
    chain whose noise :func:`tdlens.rollout.draw_noise` draws from stream ``render``):
    ``u_t = m_mu(s_t) + sigma_mu z_t``, ``a_t = v_max tanh(u_t)`` when squash_action,
    clipped by the environment when clip_action (docs/model.md §1, §3). Its executed
    actions and environment noise replay on :func:`tdlens.torus.dynamics.step` (the same
    states, bit for bit) for the pictures. Frame ``t`` shows ``s_{t+1}`` with the executed
    ``a_t`` and the events of that transition, as ``env.render()`` after a step does, plus
    the legend and caption of :func:`frame_figure`; frames are ``FRAME_PX`` (width,
    height).
    """
    if steps < 1:
        raise ValueError(f"steps: must be >= 1, got {steps}")
    maps = make_feature_maps(cfg)
    theta_mu = init_params(cfg, maps).theta_mu
    noise = draw_noise([stream(cfg.seed, "render")], steps, cfg)
    paths = roll_out(cfg, maps, theta_mu, np.array([cfg.sigma_mu]), noise, keep_psi=False)
    state = reset_from_uniforms(noise.reset, cfg.env)
    frames = []
    for t in range(steps):
        state = step(state, paths.a[t], noise.z_env[t], noise.u_env[t], cfg.env)
        frames.append(frame_rgb(frame_figure(state, cfg, paths.a[t, 0], t + 1, steps)))
    return frames


FRAME_PX = (560, 360)
"""Width and height of a GIF frame: the torus, its legend beside it, the caption below."""
_DPI = 100


def caption(cfg: RunConfig, t: int, steps: int) -> str:
    """The frame's caption: config, step t of `steps`, and the policy that acts.

    ``"sanity (seed 0) | step 3/100 | policy: mu at initialisation (theta_mu of seed 0,
    sigma_mu 0.3), untrained | p_mix 0.1, gamma 0.95"``, split over two lines.
    """
    squash = ", squashed" if cfg.squash_action else ""
    return (
        f"{cfg.name} (seed {cfg.seed}) | step {t}/{steps} | p_mix {cfg.env.p_mix:g}, "
        f"gamma {cfg.gamma:g}\npolicy: behaviour mu at initialisation (theta_mu of seed "
        f"{cfg.seed}, sigma_mu {cfg.sigma_mu:g}{squash}), untrained"
    )


def frame_figure(
    state: TorusState, cfg: RunConfig, action: np.ndarray, t: int, steps: int
) -> Figure:
    """One GIF frame: the torus (:func:`tdlens.torus.draw.draw_state`, titled with the step
    and the transition's events), a legend naming every mark
    (:func:`tdlens.torus.draw.legend_handles`) and the :func:`caption`."""
    width, height = FRAME_PX
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    FigureCanvasAgg(fig)
    side = 0.78 * height / width  # the torus axes: 78% of the height, square
    ax = fig.add_axes((0.02, 0.16, side, 0.78))
    draw_state(ax, state, cfg.env, action=action, title=f"t={t}")
    fig.legend(
        handles=legend_handles(cfg.env),
        loc="center left",
        bbox_to_anchor=(0.04 + side, 0.56),
        fontsize=8,
        frameon=False,
        handlelength=1.8,
    )
    fig.text(0.02, 0.02, caption(cfg, t, steps), fontsize=7, va="bottom", ha="left")
    return fig


def frame_rgb(fig: Figure) -> np.ndarray:
    """A figure drawn on its Agg canvas as an ``[height, width, 3]`` uint8 RGB array."""
    canvas = fig.canvas
    canvas.draw()
    return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])


def render_episode_gif(cfg: RunConfig, steps: int, out_path: str | Path, fps: int = 10) -> Path:
    """Write an animated GIF of `steps` frames (see :func:`episode_frames`) to `out_path`.

    Written atomically: a temporary file in the same directory, then ``os.replace``.
    Every frame carries its step number, so no two consecutive frames are identical
    (Pillow would merge them).
    """
    if steps < 1:
        raise ValueError(f"steps: must be >= 1, got {steps}")
    if fps < 1:
        raise ValueError(f"fps: must be >= 1, got {fps}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(frame) for frame in episode_frames(cfg, steps)]
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), file_mode())
            images[0].save(
                fh,
                format="GIF",
                save_all=True,
                append_images=images[1:],
                duration=max(1, math.floor(1000 / fps)),
                loop=0,
            )
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_path
