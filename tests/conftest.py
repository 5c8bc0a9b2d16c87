"""Shared fixtures: synthetic datasets (one per layout) and an in-process CLI runner.

Datasets are written once per test session with
:func:`bids_group_app.example_data.make_example_dataset` (default small grid,
20x24x20 voxels of 8 mm) and must be treated as read-only by the tests:
write outputs to ``tmp_path``/``tmp_path_factory`` folders, never into a
dataset.
"""

from __future__ import annotations

from pathlib import Path

import os

import pytest

from bids_group_app.example_data import make_example_dataset
from browser import Browser, chromium_path


def invoke_cli(argv):
    """Run ``bids_group_app`` in-process and return its exit code.

    Parameters
    ----------
    argv : sequence of str or path-like
        The command line without the program name, e.g.
        ``[bids_dir, out_dir, "group", "--two-sample", "group"]``.

    Returns
    -------
    int
        The exit code ``bids_group_app.cli.run.main`` returns (0 on
        success). Error messages go to stderr, which pytest shows for a
        failing test.

    Notes
    -----
    ``--no-reports`` is added (the statistics tests do not need the HTML
    report, whose figures take seconds); tests/reporting/test_report.py renders them.
    """
    from bids_group_app.cli.run import main

    argv = [str(a) for a in argv]
    if "--reports-only" not in argv and "--no-reports" not in argv:
        argv.append("--no-reports")
    return main(argv)


@pytest.fixture(scope="session")
def run_cli():
    """The :func:`invoke_cli` helper: ``run_cli([bids_dir, out_dir, "group", ...]) -> exit code``."""
    return invoke_cli


@pytest.fixture(scope="session")
def cli():
    """Alias of :func:`run_cli`."""
    return invoke_cli


class _DatasetFactory:
    """Write each (layout, options) dataset once per session and return its truth."""

    def __init__(self, tmp_path_factory):
        self._tmp = tmp_path_factory
        self._cache = {}

    def __call__(self, layout, **kwargs):
        key = (layout, tuple(sorted(kwargs.items())))
        if key not in self._cache:
            name = "-".join([f"ds-{layout}"] + [f"{k}{v}" for k, v in sorted(kwargs.items())])
            root = self._tmp.mktemp(name, numbered=True)
            truth = make_example_dataset(root, layout, **kwargs)
            truth["root"] = str(Path(root))
            self._cache[key] = truth
        return self._cache[key]


@pytest.fixture(scope="session")
def example_dataset(tmp_path_factory):
    """Factory ``example_dataset(layout, **make_example_dataset_kwargs) -> truth``.

    The same arguments give the same (cached) dataset within a session.
    ``truth["root"]`` is the BIDS_DIR to pass to the CLI.
    """
    return _DatasetFactory(tmp_path_factory)


@pytest.fixture(scope="session")
def nilearn_dataset(example_dataset):
    """Layout (a): nilearn ``save_glm_to_bids`` first-level statmaps (truth dict)."""
    return example_dataset("nilearn")


@pytest.fixture(scope="session")
def fitlins_dataset(example_dataset):
    """Layout (b): FitLins ``node-subjectLevel`` statmaps (truth dict)."""
    return example_dataset("fitlins")


@pytest.fixture(scope="session")
def seed004_dataset(example_dataset):
    """Layout (c): seed-004 style 9 condition effect maps per subject (truth dict)."""
    return example_dataset("seed004")


@pytest.fixture(scope="session")
def vbm_dataset(example_dataset):
    """Layout (d): CAT12 grey-matter probability maps (truth dict)."""
    return example_dataset("vbm")


@pytest.fixture(scope="session")
def mixed_dataset(example_dataset):
    """Layout (a) with mixed file formats (.nii, NIfTI-2, scaled int16, NaN background)."""
    return example_dataset("nilearn", mixed_formats=True)


@pytest.fixture(scope="session")
def chromium():
    """A headless Chromium driven over the DevTools pipe (:mod:`browser`), for the report tests."""
    path = chromium_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is required for the report tests in CI (apt-get install chromium)")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    browser = Browser(path)
    yield browser
    browser.close()
