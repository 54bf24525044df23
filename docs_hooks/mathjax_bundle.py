"""MkDocs hook: MathJax is served from the built site, not a CDN, so the docs work offline.

The es5 bundle ``tex-svg.js`` (SVG output: the glyphs are inside the script, so no font
file is fetched) and the TeX extensions it may autoload come from the PyPI package
django-static-mathjax (MathJax 3.2.2, Apache-2.0, no dependencies; the ``docs`` and
``dev`` extras install it). After each build they are copied to
``<site>/javascripts/mathjax/``; mkdocs.yml loads ``javascripts/mathjax/tex-svg.js`` after
the configuration in ``docs/javascripts/mathjax.js``. The theme's Google fonts are off
(``font: false`` in mkdocs.yml). tests/browser/test_docs_offline.py opens the built site
from file:// with every other request refused.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

BUNDLE = "javascripts/mathjax"
"""Where the bundle lands inside the built site."""
FILES = ("tex-svg.js",)
FOLDERS = ("input/tex/extensions",)


def mathjax_es5() -> Path:
    """The es5 folder of the installed MathJax (django-static-mathjax's ``mathjax`` package)."""
    try:
        import mathjax
    except ImportError:
        raise RuntimeError(
            "the docs need MathJax from PyPI: pip install -e '.[docs]' (django-static-mathjax)"
        ) from None
    return Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"


def copy_bundle(site_dir: str | Path) -> Path:
    """Copy the bundle into `site_dir`; returns the folder it went to."""
    src, dest = mathjax_es5(), Path(site_dir) / BUNDLE
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copy2(src / name, dest / name)
    for folder in FOLDERS:
        shutil.copytree(src / folder, dest / folder, dirs_exist_ok=True)
    return dest


def on_post_build(config: Any, **kwargs: Any) -> None:
    """MkDocs event: the site is built; add the MathJax bundle to it."""
    copy_bundle(config["site_dir"])
