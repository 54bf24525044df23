"""The building blocks of every page: the run report, sweep summaries and comparisons,
suites and the exporters.

:mod:`~tdlens.pages.fmt` (numbers as text), :mod:`~tdlens.pages.kit` (escaping, tables,
plotly figures and the page shell), :mod:`~tdlens.pages.honest` (how much a series
really changed, and a y range that shows it) and :mod:`~tdlens.pages.plots` (the
figures). They read run data and format it; they never run anything.
"""
