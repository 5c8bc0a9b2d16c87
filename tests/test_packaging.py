"""Packaging: every subpackage of the source tree is installed (pyproject lists them by hand)."""

from __future__ import annotations

from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_pyproject():
    """A subpackage missing from ``[tool.setuptools] packages`` works in the source tree and the editable
    install, but not in ``pip install .`` or the container (the participant level's ``firstlevel`` was)."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "bids_group_app").rglob("__init__.py")}
    assert found - listed == set(), f"subpackages not installed by pip install .: {sorted(found - listed)}"
