"""Where the templates are: the top-level ``boilerplate/`` folder of the source
tree (the methods text, its HTML page, the references, and the HTML report),
installed as the package ``bids_group_app.templates``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

TEMPLATE_PACKAGE = "bids_group_app.templates"


def template_dir():
    """The folder of the templates (installed or source tree).

    Returns
    -------
    pathlib.Path
    """
    try:
        spec = importlib.util.find_spec(TEMPLATE_PACKAGE)
    except ModuleNotFoundError:
        spec = None
    candidates = list(spec.submodule_search_locations or []) if spec else []
    candidates.append(Path(__file__).resolve().parents[2] / "boilerplate")
    for folder in map(Path, candidates):
        if (folder / "citation.md.j2").is_file():
            return folder
    raise FileNotFoundError(f"boilerplate templates not found (looked in {', '.join(map(str, candidates))})")
