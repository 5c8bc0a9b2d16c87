"""Staging folders: a run killed mid-way (``kill -9``) leaves its staging
folder in OUTPUT_DIR; a later run (or ``--reports-only``) removes it, but
never the staging folder of a run that is still alive.

A run is alive while it holds the lock on its staging folder (the process
that holds it is simulated with :class:`OutputWriter` in a helper process).
"""

import logging
import os
import signal
import subprocess
import sys
import time

from bids_group_app.outputs.writer import TEST_COMMIT_DELAY, OutputWriter

STAGING = ".bids_group_app-staging-*"

# a writer in another process that stays alive until its stdin is closed
LIVE_WRITER = """
import sys
from bids_group_app.outputs.writer import OutputWriter
writer = OutputWriter(sys.argv[1])
writer.text("partial.txt", "a live run's staged file")
print(writer.staging, flush=True)
sys.stdin.read()
writer.abort()
"""


def _wait_for(condition, process, timeout=300):
    """Poll ``condition()`` until true; fail if ``process`` ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _staged_maps(out):
    return list(out.glob(f"{STAGING}/node-*/*_statmap.nii.gz"))


def test_staging_of_a_killed_run_is_removed_of_a_live_run_kept(example_dataset, tmp_path, run_cli, caplog):
    truth = example_dataset("nilearn")
    out = tmp_path / "out"
    # a run that waits before its commit, killed once its maps are staged;
    # meanwhile another run (simulated) starts and stays alive
    doomed = subprocess.Popen(
        [sys.executable, "-m", "bids_group_app", truth["root"], str(out), "group", "--quiet", "--no-reports",
         "--filter", "contrast=language"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, TEST_COMMIT_DELAY: "600"})
    live = None
    try:
        _wait_for(lambda: _staged_maps(out), doomed)
        dead = _staged_maps(out)[0].parent.parent
        live = subprocess.Popen([sys.executable, "-c", LIVE_WRITER, str(out)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        alive = out / os.path.basename(live.stdout.readline().strip())
        assert alive.name.startswith(".bids_group_app-staging-"), live.communicate()
        assert dead.is_dir(), "a live run's staging folder was removed"
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.communicate()
        with caplog.at_level(logging.INFO, logger="bids_group_app"):
            assert run_cli([truth["root"], out, "group", "--filter", "contrast=motor"]) == 0
        assert not dead.exists(), "the killed run's staging folder is left"
        assert f"removed {dead.name}" in caplog.text, caplog.text
        assert (alive / "partial.txt").is_file(), "a live run's staging folder was removed"
        assert sorted(p.name for p in out.glob(STAGING)) == [alive.name]
    finally:
        if doomed.poll() is None:
            os.kill(doomed.pid, signal.SIGKILL)
            doomed.communicate()
        if live is not None:
            live.stdin.close()
            assert live.wait(timeout=60) == 0, live.stderr.read()
    assert not list(out.glob(STAGING))
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".bidsignore"]

    # --reports-only removes the staging folder of a dead run too (here one
    # that died before it even locked its folder)
    stale = out / ".bids_group_app-staging-0123456789ab"
    (stale / "node-x").mkdir(parents=True)
    (stale / "node-x" / "map.nii.gz").write_bytes(b"")
    assert run_cli([truth["root"], out, "group", "--reports-only"]) == 0
    assert not stale.exists()


def test_writer_keeps_the_staging_of_another_writer_of_this_process(tmp_path):
    first = OutputWriter(tmp_path)
    first.text("a.txt", "a")
    second = OutputWriter(tmp_path)
    assert (first.staging / "a.txt").is_file()
    first.commit()
    second.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
