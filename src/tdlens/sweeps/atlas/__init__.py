"""The regime atlas: phase diagrams of a sweep's regime labels (issue #14, docs/model.md §11).

``write_atlas(sweep_dirs, docs)`` reads one or two finished sweeps (plan.json and every
run directory, through the same records as the summary) and writes a Markdown page with
PNG phase diagrams beside it (``<docs stem>/``):

- **step x mismatch** (the first sweep, which varies alpha_w): every run at
  ``x = alpha_w / critical_step`` (its own latest stability round; the median over the
  sweep when a run has none, e.g. diverged before its first probe) and ``y`` = the
  mismatch axis (``theta_mu_offset_scale``, else ``sigma_pi / sigma_mu``, else
  ``sigma_mu / sigma_pi``), one panel per value of beta, coloured by regime label
  (mechanism included) and marked by mechanism. Theory boundaries: ``eta =
  critical_step`` is the vertical line ``x = 1``; ``eig_min_real = 0`` is the horizontal
  line where the median ``eig_min_real`` over a mismatch value changes sign from
  positive to negative (linear interpolation between the two mismatch values), with the
  band where the medians of ``eig_min_real_lo`` and ``eig_min_real_hi`` change sign
  (when the stability probe writes them); else the page states its range. For
  ``sigma_pi`` the closed form ``sigma_pi / sigma_mu = sqrt(2 / gamma)`` (docs/triad.md:
  every ratio truncated) is drawn as a thin line for comparison.
- **beta x offset** (the second sweep, else the first): per value of alpha_w one panel,
  each cell the majority label of its runs (seeds).

and for every label each sweep produced, one ``tdlens run`` command that reproduces a run
of that label (the sweep's base, its overrides and that run's swept values), plus the
shipped regime configs. A sweep with a ``seeds`` axis is drawn at its first seed; the page
gains a table of how many grid points keep their label at every seed
(:mod:`~tdlens.sweeps.atlas.seeds`). Pure reading and drawing: no run is started, except
with ``explain_iters`` (``tdlens atlas --explain``): each representative run is then tested
by its intervention twins and the page gains their table
(:mod:`~tdlens.sweeps.atlas.twins`). The page's hand-written tail, from
:data:`~tdlens.sweeps.atlas.page.HAND_WRITTEN` on, is kept when it is regenerated.

Modules, by job: :mod:`~tdlens.sweeps.atlas.data` (records -> points),
:mod:`~tdlens.sweeps.atlas.geometry` (crossings and boundaries),
:mod:`~tdlens.sweeps.atlas.plot` (matplotlib) and :mod:`~tdlens.sweeps.atlas.page`
(Markdown, :func:`~tdlens.sweeps.atlas.page.write_atlas`).
"""
