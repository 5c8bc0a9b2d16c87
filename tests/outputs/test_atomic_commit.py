"""A run's results appear all at once or not at all: fault injection on real processes.

The test-only hooks of :mod:`bids_group_app.outputs.writer` stop a run at a
known point -- ``BIDS_GROUP_APP_TEST_COMMIT_DELAY`` just before the commit
point (everything staged, reports rendered, lock held),
``BIDS_GROUP_APP_TEST_COMMIT_PAUSE`` between the first and the second rename
of the commit -- and say so on stderr; the test then sends the signal.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bids_group_app.outputs.writer import MANIFEST, STAGING_PREFIX, OutputWriter, recover

PAUSE_LINE = "pausing between two renames of the commit"
DELAY_LINE = "waiting before the commit"


def snapshot(root):
    """``{relative path: sha256}`` of every file under ``root`` (staging folders included)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def start(argv, **env):
    return subprocess.Popen([sys.executable, "-m", "bids_group_app", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env})


def wait_for(proc, text, timeout=600):
    """Read the process's stderr until a line holds ``text``; returns the lines read."""
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if text in line:
            return lines
    proc.wait(timeout=timeout)
    raise AssertionError(f"the run ended (exit {proc.returncode}) before saying {text!r}:\n{''.join(lines)}")


def finish(proc, timeout=600):
    """Wait for the process; returns its exit code and the rest of its stderr."""
    _, rest = proc.communicate(timeout=timeout)
    return proc.returncode, rest


@pytest.fixture(scope="module")
def previous(nilearn_dataset, tmp_path_factory):
    """An OUTPUT_DIR holding an earlier run's results, and its snapshot."""
    out = tmp_path_factory.mktemp("atomic") / "previous"
    proc = start([nilearn_dataset["root"], out, "group", "--quiet", "--filter", "contrast=motor"])
    code, err = finish(proc)
    assert code == 0, err
    return out, snapshot(out)


def _design(out, listed):
    """The design sidecar the second run committed."""
    (design,) = [rel for rel in listed if rel.endswith("_design.json")]
    return json.loads((out / design).read_text())


def fresh_copy(previous, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(previous[0], out)
    assert snapshot(out) == previous[1]
    return out


# a second run into the same OUTPUT_DIR (maps smoothed: a model of its own,
# beside the first) that rewrites the files the runs share
SECOND_RUN = ["group", "--filter", "contrast=motor", "--smoothing-fwhm", "6"]


@pytest.mark.parametrize("signum", [signal.SIGTERM,  # SIGINT and SIGHUP take the same path: run them with -m slow
                                    pytest.param(signal.SIGINT, marks=pytest.mark.slow),
                                    pytest.param(signal.SIGHUP, marks=pytest.mark.slow)])
def test_signal_before_the_commit_point_leaves_the_previous_state(signum, previous, nilearn_dataset, tmp_path):
    out = fresh_copy(previous, tmp_path)
    proc = start([nilearn_dataset["root"], out, *SECOND_RUN], BIDS_GROUP_APP_TEST_COMMIT_DELAY="60")
    wait_for(proc, DELAY_LINE)
    proc.send_signal(signum)
    code, rest = finish(proc)
    assert code == 128 + signum, rest
    lines = [line for line in rest.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("bids_group_app: interrupted by "), rest
    assert signal.Signals(signum).name in lines[0] and "no results were committed" in lines[0]
    assert "Traceback" not in rest
    assert snapshot(out) == previous[1]  # nothing changed, no staging folder left


def paused_in_commit(dataset, out, seconds):
    """The second run, paused between its first two renames: (process, staging folder, files of its manifest)."""
    proc = start([dataset["root"], out, *SECOND_RUN], BIDS_GROUP_APP_TEST_COMMIT_PAUSE=str(seconds))
    wait_for(proc, PAUSE_LINE)
    staging = next(out.glob(f"{STAGING_PREFIX}*"))
    return proc, staging, json.loads((staging / MANIFEST).read_text())["Files"]


def test_sigterm_during_the_commit_completes_it(previous, nilearn_dataset, tmp_path):
    out = fresh_copy(previous, tmp_path)
    proc, staging, listed = paused_in_commit(nilearn_dataset, out, seconds=5)
    proc.send_signal(signal.SIGTERM)
    code, rest = finish(proc)
    assert code == 0, rest
    assert "SIGTERM was received during the commit, which was completed first" in rest.splitlines()[-1]
    assert not list(out.glob(f"{STAGING_PREFIX}*"))
    assert all((out / rel).is_file() for rel in listed)
    assert _design(out, listed)["SmoothingFWHM"] == 6


def test_sigkill_during_the_commit_is_completed_by_the_next_reader(previous, nilearn_dataset, tmp_path):
    out = fresh_copy(previous, tmp_path)
    proc, staging, listed = paused_in_commit(nilearn_dataset, out, seconds=60)
    # what the run committed: the staged files and the one already moved
    committed = {rel: (staging / rel if (staging / rel).exists() else out / rel).read_bytes() for rel in listed}
    proc.kill()
    proc.communicate(timeout=60)
    # on disk, a mixture: one file moved, the others still staged
    moved = [rel for rel in listed if not (staging / rel).exists()]
    assert len(moved) == 1 and len(listed) > 10

    # a reader (here --reports-only) completes the commit before reading
    done = start([nilearn_dataset["root"], out, "group", "--reports-only", "--quiet"])
    code, rest = finish(done)
    assert code == 0, rest
    assert not list(out.glob(f"{STAGING_PREFIX}*"))
    for rel, content in committed.items():
        if rel.endswith((".nii.gz", ".tsv")) or rel.startswith("node-"):
            assert (out / rel).read_bytes() == content, rel
    assert _design(out, listed)["SmoothingFWHM"] == 6
    # every file of the previous run is either the same or replaced by the new run's
    assert set(previous[1]) <= set(snapshot(out))


def test_sigterm_while_fitting_exits_143_and_leaves_nothing(previous, nilearn_dataset, tmp_path):
    out = fresh_copy(previous, tmp_path)
    proc = start([nilearn_dataset["root"], out, *SECOND_RUN, "--n-perm", "100000"])
    wait_for(proc, "fitting node")
    proc.send_signal(signal.SIGTERM)
    code, rest = finish(proc)
    assert code == 143, rest
    assert rest.splitlines()[-1].startswith("bids_group_app: interrupted by SIGTERM; no results were committed")
    assert "Traceback" not in rest
    assert snapshot(out) == previous[1]


def _dead_commit(out, files, moved):
    """A staging folder as a run killed during its commit leaves it: manifest written, ``moved`` files moved."""
    writer = OutputWriter(out)
    for rel, text in files.items():
        writer.text(rel, text)
    (writer.staging / MANIFEST).write_text(json.dumps({"Files": list(files)}))
    for rel in moved:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(writer.staging / rel, out / rel)
    os.close(writer._alive)  # the run dies: its lock is released
    writer._alive = None
    from bids_group_app.outputs import writer as module

    module._OWN_STAGING.discard(os.path.realpath(writer.staging))
    return writer.staging


def test_recover_rolls_dead_commits_forward_oldest_first_and_drops_uncommitted(tmp_path):
    out = tmp_path / "out"
    first = _dead_commit(out, {"a.txt": "first", "node-x/b.txt": "first"}, moved=["a.txt"])
    os.utime(first / MANIFEST, (1, 1))
    _dead_commit(out, {"node-x/b.txt": "second", "c.txt": "second"}, moved=[])
    uncommitted = OutputWriter(out)
    uncommitted.text("d.txt", "never committed")
    os.close(uncommitted._alive)
    uncommitted._alive = None
    from bids_group_app.outputs import writer as module

    module._OWN_STAGING.discard(os.path.realpath(uncommitted.staging))
    assert recover(out) == 2
    assert {p: (out / p).read_text() for p in ("a.txt", "node-x/b.txt", "c.txt")} == {
        "a.txt": "first", "node-x/b.txt": "second", "c.txt": "second"}
    assert not (out / "d.txt").exists()
    assert not list(out.glob(f"{STAGING_PREFIX}*"))


def test_a_live_runs_commit_is_not_taken_for_a_dead_one(tmp_path):
    out = tmp_path / "out"
    writer = OutputWriter(out)
    writer.text("a.txt", "live")
    (writer.staging / MANIFEST).write_text(json.dumps({"Files": ["a.txt"]}))
    from bids_group_app.outputs import writer as module

    module._OWN_STAGING.discard(os.path.realpath(writer.staging))  # as if another process held it
    try:
        assert recover(out) == 0  # its lock is held: it is alive
        assert (writer.staging / "a.txt").is_file() and not (out / "a.txt").exists()
    finally:
        writer.abort()


def test_signal_before_the_commit_point_removes_the_output_dir_it_created(nilearn_dataset, tmp_path):
    out = tmp_path / "new" / "out"
    proc = start([nilearn_dataset["root"], out, *SECOND_RUN], BIDS_GROUP_APP_TEST_COMMIT_DELAY="60")
    wait_for(proc, DELAY_LINE)  # under the lock: OUTPUT_DIR/.bidsignore exists by now
    assert (out / ".bidsignore").is_file()
    proc.send_signal(signal.SIGTERM)
    code, rest = finish(proc)
    assert code == 143, rest
    assert not (tmp_path / "new").exists()
