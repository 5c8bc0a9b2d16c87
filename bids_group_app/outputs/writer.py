"""Staged writing: every file is first written into a staging folder inside
OUTPUT_DIR and moved into place only when the whole run succeeded, so a
failed run leaves no half-written or misleading map.

A run holds an exclusive flock on a file in its staging folder for as long
as it lives (the kernel releases it when the process dies, even by
``kill -9``). Each new writer removes the staging folders whose lock it can
take: those of runs that are no longer alive. This works across hosts on a
shared filesystem as far as flock does (see
:func:`bids_group_app.outputs.commit.output_lock`); where locks are local to
each host (NFS mounted with ``nolock``), a run on another host would take a
live run's folder for a dead one's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_group_app.errors import OutputError
from bids_group_app.outputs.commit import lock_file

LOGGER = logging.getLogger(__name__)

# Test-only: seconds to wait in commit() before moving files into place, so
# that tests can make concurrent runs' critical sections overlap for certain.
TEST_COMMIT_DELAY = "BIDS_GROUP_APP_TEST_COMMIT_DELAY"

STAGING_PREFIX = ".bids_group_app-staging-"
# in each staging folder: the file whose lock says that its run is alive
ALIVE_LOCK = ".alive.lock"
# staging folders of this process's live writers: a flock taken again by
# this process may not conflict (NFS emulates flock by POSIX locks, which
# are per process), so they are recognised by name
_OWN_STAGING = set()


class OutputWriter:
    """Stage files inside OUTPUT_DIR and move them into place on commit.

    Creating a writer first removes the staging folders that runs no longer
    alive left in OUTPUT_DIR (:func:`remove_dead_staging`), then creates and
    locks its own, until :meth:`commit` or :meth:`abort`.

    Parameters
    ----------
    output_dir : pathlib.Path
    """

    def __init__(self, output_dir):
        self.output_dir = Path(output_dir)
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            remove_dead_staging(self.output_dir)
            self.staging, self._alive = _new_staging(self.output_dir)
        except OSError as err:
            raise OutputError(f"output directory {self.output_dir} cannot be created or written: {err.strerror or err}") from None
        self.written = []

    def _target(self, relpath):
        path = self.staging / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        self.written.append(Path(relpath))
        return path

    def adopt(self, relpaths):
        """Register files that other code wrote into the staging folder."""
        self.written.extend(Path(p) for p in relpaths)

    def json(self, relpath, content):
        """Stage a strict JSON file: a missing or non-finite number (NaN, inf) is written ``null``.

        JSON has no NaN or Infinity; Python would write the non-standard
        tokens ``NaN``/``Infinity`` that strict parsers refuse.
        """
        text = json.dumps(_finite_or_null(content), indent=2, default=_json_default, allow_nan=False)
        self._target(relpath).write_text(text + "\n")

    def text(self, relpath, content):
        """Stage a text file."""
        self._target(relpath).write_text(content)

    def table(self, relpath, frame):
        """Stage a TSV table (``n/a`` for missing values)."""
        frame.to_csv(self._target(relpath), sep="\t", index=False, na_rep="n/a")

    def image(self, relpath, img):
        """Stage a NIfTI image."""
        nib.save(img, str(self._target(relpath)))

    def relabel(self, rename):
        """Rename staged files: ``rename(relpath) -> relpath`` (strings)."""
        renamed = []
        for rel in self.written:
            new = Path(rename(rel.as_posix()))
            if new != rel:
                target = self.staging / new
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.staging / rel, target)
            renamed.append(new)
        self.written = renamed

    def commit(self):
        """Move every staged file into OUTPUT_DIR and remove the staging folder."""
        _test_commit_delay()
        try:
            for rel in self.written:
                target = self.output_dir / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.staging / rel, target)
        except OSError as err:
            raise OutputError(f"cannot write results into {self.output_dir}: {err.strerror or err}") from None
        finally:
            self.abort()

    def abort(self):
        """Drop everything staged (and the staging folder with its lock)."""
        if self._alive is not None:
            os.close(self._alive)  # first: on NFS an open file could not be removed
            self._alive = None
        shutil.rmtree(self.staging, ignore_errors=True)
        _OWN_STAGING.discard(os.path.realpath(self.staging))


def _new_staging(output_dir):
    """Create a staging folder and lock it; returns its path and the lock's fd.

    Between the folder's creation and its lock another run may take it for
    a dead run's and remove it: then start again with a new folder.
    """
    while True:
        staging = output_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        staging.mkdir()
        _OWN_STAGING.add(os.path.realpath(staging))
        try:
            return staging, lock_file(staging / ALIVE_LOCK)
        except FileNotFoundError:
            _OWN_STAGING.discard(os.path.realpath(staging))
        except BaseException:
            _OWN_STAGING.discard(os.path.realpath(staging))
            shutil.rmtree(staging, ignore_errors=True)
            raise


def remove_dead_staging(output_dir):
    """Remove the staging folders in ``output_dir`` of runs no longer alive.

    A folder whose lock file can be locked belongs to no live run (a run
    that died, or that died before it locked its folder); it is removed
    while locked, so that a run creating it just now notices (see
    :func:`_new_staging`). Folders of this process's writers are kept.
    """
    for staging in sorted(Path(output_dir).glob(f"{STAGING_PREFIX}*")):
        if os.path.realpath(staging) in _OWN_STAGING or not staging.is_dir():
            continue
        try:
            fd = lock_file(staging / ALIVE_LOCK, wait=False)
        except FileNotFoundError:
            continue  # removed by another run meanwhile
        except OSError as err:
            LOGGER.warning("cannot tell whether %s belongs to a live run: %s; left in place",
                           staging, err.strerror or err)
            continue
        if fd is None:
            continue  # a live run's
        try:
            shutil.rmtree(staging, ignore_errors=True)
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            staging.rmdir()  # on NFS, what remained of the open lock file is gone only now
        if staging.exists():
            LOGGER.warning("cannot remove %s, the staging folder of a run that was not alive when checked", staging)
        else:
            LOGGER.info("removed %s, the staging folder of a run that is no longer alive", staging.name)


def _test_commit_delay():
    """Sleep ``$BIDS_GROUP_APP_TEST_COMMIT_DELAY`` seconds, if set (tests only)."""
    delay = os.environ.get(TEST_COMMIT_DELAY)
    if delay:
        LOGGER.warning("%s=%s (test only): waiting before the commit", TEST_COMMIT_DELAY, delay)
        time.sleep(float(delay))


def _finite_or_null(value):
    """``value`` with every non-finite float (Python or NumPy, in dicts, lists, tuples, arrays) as None."""
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    if isinstance(value, np.ndarray):
        return _finite_or_null(value.tolist())
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


