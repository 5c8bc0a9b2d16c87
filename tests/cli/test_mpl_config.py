"""Matplotlib's configuration and cache live in a private folder of the run.

Each test is a real process with its own ``TMPDIR``. Another user can
create ``$TMPDIR/bids_group_app-mpl/matplotlibrc`` (a predictable shared
folder); the run must not read it, must not write there, and must leave
nothing in ``$TMPDIR`` or in ``-w``. A ``MPLCONFIGDIR`` the user set is used.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PLANTED = "savefig.facecolor: red\nfigure.facecolor: red\n"


def _command():
    script = Path(sys.executable).with_name("bids_group_app")
    return [str(script)] if script.is_file() and os.access(script, os.X_OK) else [sys.executable, "-m", "bids_group_app"]


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


def _environment(tmpdir, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "MATPLOTLIBRC")}
    return {**env, "TMPDIR": str(tmpdir), **extra}


def _run(bids, out, env, *options):
    return subprocess.run([*_command(), bids, str(out), "group", "--filter", "contrast=motor", "--quiet", *options],
                          env=env, cwd=env["TMPDIR"], capture_output=True, text=True, timeout=600)


def _red_fraction(png):
    import matplotlib.image as mpimg

    rgb = mpimg.imread(png)[..., :3]
    return float(np.mean((rgb[..., 0] > 0.9) & (rgb[..., 1] < 0.1) & (rgb[..., 2] < 0.1)))


@pytest.fixture(scope="module")
def planted(nilearn_dataset, tmp_path_factory):
    """Two runs with a planted ``$TMPDIR/bids_group_app-mpl/matplotlibrc``: without and with ``-w``."""
    root = tmp_path_factory.mktemp("mplconfig")
    runs = {}
    for name, options in (("tmpdir", []), ("workdir", ["-w", str(root / "work-workdir")])):
        tmpdir = root / f"tmp-{name}"
        (tmpdir / "bids_group_app-mpl").mkdir(parents=True)
        (tmpdir / "bids_group_app-mpl" / "matplotlibrc").write_text(PLANTED)
        before = _listing(tmpdir)
        proc = _run(nilearn_dataset["root"], root / f"out-{name}", _environment(tmpdir), *options)
        runs[name] = (proc, root / f"out-{name}", tmpdir, before)
    return runs, root


@pytest.mark.parametrize("name", ["tmpdir", "workdir"])
def test_planted_matplotlibrc_is_not_read_and_nothing_is_left(planted, name):
    runs, root = planted
    proc, out, tmpdir, before = runs[name]
    assert proc.returncode == 0, proc.stderr
    figures = sorted(out.glob("figures/*_design.png")) + sorted(out.glob("figures/*_mask.png"))
    assert figures
    for png in figures:
        assert _red_fraction(png) < 0.01, f"{png.name} was drawn with the planted matplotlibrc"
    assert _listing(tmpdir) == before, "the run wrote into $TMPDIR (or into the planted folder)"
    if name == "workdir":
        assert _listing(root / "work-workdir") == [], "the run left its matplotlib folder in -w"


def test_a_user_set_mplconfigdir_is_used(nilearn_dataset, tmp_path):
    tmpdir, mine = tmp_path / "tmp", tmp_path / "my-mpl"
    tmpdir.mkdir()
    mine.mkdir()
    (mine / "matplotlibrc").write_text(PLANTED)
    proc = _run(nilearn_dataset["root"], tmp_path / "out", _environment(tmpdir, MPLCONFIGDIR=str(mine)))
    assert proc.returncode == 0, proc.stderr
    (design, *_) = sorted((tmp_path / "out").glob("figures/*_design.png"))
    assert _red_fraction(design) > 0.01, "the user's own MPLCONFIGDIR was not honoured"
    assert _listing(tmpdir) == []


def test_private_mplconfigdir_is_fresh_private_and_removed(tmp_path, monkeypatch):
    from bids_group_app.cli.run import private_mplconfigdir

    monkeypatch.delenv("MPLCONFIGDIR", raising=False)
    work = tmp_path / "work" / "deeper"
    with private_mplconfigdir(work) as folder:
        assert Path(folder).parent == work and os.environ["MPLCONFIGDIR"] == folder
        assert Path(folder).stat().st_mode & 0o777 == 0o700
        (Path(folder) / "fontlist.json").write_text("{}")
        with private_mplconfigdir(work) as inner:  # nested: the variable is set, so it is used
            assert inner == folder
    assert not Path(folder).exists() and "MPLCONFIGDIR" not in os.environ
    assert list(work.iterdir()) == []
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mine"))
    with private_mplconfigdir(work) as folder:
        assert folder == str(tmp_path / "mine")
    assert os.environ["MPLCONFIGDIR"] == str(tmp_path / "mine")
