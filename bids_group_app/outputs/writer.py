"""Staged writing and the atomic commit.

Every file of a run is first written into a staging folder inside
OUTPUT_DIR. The run's results appear in OUTPUT_DIR all at once or not at
all: its commit (under the lock of :func:`~.commit.output_lock`) first
writes the staging folder's manifest, ``.commit.json``, listing every staged
file, with one atomic rename -- the commit point -- and only then moves the
files into place. Readers trust the manifest: every reader and writer of
OUTPUT_DIR (a run's commit, ``--reports-only``) first calls
:func:`recover` under the same lock, which completes the commit of any
dead run that left a manifest (killed by SIGKILL, or a node failure, in the
middle of its renames) and removes the staging folders of dead runs without
one. So once a manifest exists the run's results are committed, in full;
before, none of them are. SIGINT/SIGTERM/SIGHUP are held back from the
commit point on (:mod:`bids_group_app.interrupts`), so a signal never
stops a commit halfway.

A run holds an exclusive flock on a file in its staging folder for as long
as it lives (the kernel releases it when the process dies, even by
``kill -9``): a folder whose lock can be taken belongs to no live run. This
works across hosts on a shared filesystem as far as flock does (see
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

from bids_group_app import interrupts
from bids_group_app.errors import OutputError
from bids_group_app.outputs.commit import lock_file

LOGGER = logging.getLogger(__name__)

# Test-only: seconds to wait in commit() before moving files into place, so
# that tests can make concurrent runs' critical sections overlap for certain.
TEST_COMMIT_DELAY = "BIDS_GROUP_APP_TEST_COMMIT_DELAY"
# Test-only: seconds to wait between the first and the second rename of a
# commit, so that tests can deliver a signal in the middle of it.
TEST_COMMIT_PAUSE = "BIDS_GROUP_APP_TEST_COMMIT_PAUSE"

STAGING_PREFIX = ".bids_group_app-staging-"
# in each staging folder: the file whose lock says that its run is alive
ALIVE_LOCK = ".alive.lock"
# in each staging folder: the list of its files, written at the commit point
MANIFEST = ".commit.json"
# staging folders of this process's live writers: a flock taken again by
# this process may not conflict (NFS emulates flock by POSIX locks, which
# are per process), so they are recognised by name
_OWN_STAGING = set()


@contextlib.contextmanager
def writing(path):
    """Turn a failure to write ``path`` (disk full, file too large, no
    permission) into an :class:`~bids_group_app.errors.OutputError` (exit 73) naming it."""
    try:
        yield
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from None


class OutputWriter:
    """Stage files inside OUTPUT_DIR and commit them all at once.

    Creating a writer first removes the staging folders that runs no longer
    alive left uncommitted in OUTPUT_DIR (:func:`remove_dead_staging`), then
    creates and locks its own, until :meth:`commit` or :meth:`abort`. Used as
    a context manager (``with OutputWriter(out) as writer:``), whatever was
    not committed when the block ends (an error, a signal) is dropped.

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
        self.committed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.abort()  # after a commit: only releases what is left
        return False

    @contextlib.contextmanager
    def _staged(self, relpath):
        """The staging path of ``relpath`` (folder created, file registered); a write failure is an OutputError."""
        path = self.staging / relpath
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            self.written.append(Path(relpath))
            yield path

    def adopt(self, relpaths):
        """Register files that other code wrote into the staging folder."""
        self.written.extend(Path(p) for p in relpaths)

    def json(self, relpath, content):
        """Stage a strict JSON file: a missing or non-finite number (NaN, inf) is written ``null``.

        JSON has no NaN or Infinity; Python would write the non-standard
        tokens ``NaN``/``Infinity`` that strict parsers refuse.
        """
        text = json.dumps(_finite_or_null(content), indent=2, default=_json_default, allow_nan=False)
        with self._staged(relpath) as path:
            path.write_text(text + "\n")

    def text(self, relpath, content):
        """Stage a text file."""
        with self._staged(relpath) as path:
            path.write_text(content)

    def table(self, relpath, frame):
        """Stage a TSV table (``n/a`` for missing values)."""
        with self._staged(relpath) as path:
            frame.to_csv(path, sep="\t", index=False, na_rep="n/a")

    def image(self, relpath, img):
        """Stage a NIfTI image."""
        with self._staged(relpath) as path:
            nib.save(img, str(path))

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
        """Commit every staged file into OUTPUT_DIR, all at once.

        The caller holds :func:`~.commit.output_lock` and has called
        :func:`recover`. Writing the manifest is the commit point; from
        there on signals no longer stop the run, and should the process die
        anyway, the next reader completes the commit (:func:`recover`).

        Returns
        -------
        list of pathlib.Path
            The committed files, in OUTPUT_DIR.

        Raises
        ------
        OutputError
            When the manifest cannot be written (nothing is committed), or
            a file cannot be moved into place (the commit is completed by
            the next run or ``--reports-only`` once the cause is fixed).
        """
        _test_commit_delay()
        interrupts.commit_started()
        manifest = self.staging / MANIFEST
        with writing(manifest):
            _write_manifest(manifest, [p.as_posix() for p in self.written])
        self.committed = True
        try:
            _move_into_place(self.staging, self.output_dir, [p.as_posix() for p in self.written], pause=True)
        except OSError as err:
            raise OutputError(f"cannot move the results into {self.output_dir}: {err.strerror or err}: {err.filename}; "
                              f"they stay in {self.staging.name} and are moved into place by the next run "
                              "or by --reports-only once this is fixed") from None
        self.abort()
        return [self.output_dir / p for p in self.written]

    def abort(self):
        """Drop everything staged (and the staging folder with its lock).

        A folder whose manifest is written is kept for :func:`recover` when
        its files could not all be moved; only the lock is released.
        """
        if self._alive is not None:
            os.close(self._alive)  # first: on NFS an open file could not be removed
            self._alive = None
        if self.committed and any(p.is_file() for p in self.staging.rglob("*") if p.name not in (MANIFEST, ALIVE_LOCK)):
            return
        shutil.rmtree(self.staging, ignore_errors=True)
        _OWN_STAGING.discard(os.path.realpath(self.staging))


def _write_manifest(path, relpaths):
    """Write the manifest with one atomic rename, flushed to disk."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump({"Files": relpaths}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _move_into_place(staging, output_dir, relpaths, pause=False):
    """Move the staged files that are still there into OUTPUT_DIR.

    Files already moved (by a commit that was interrupted) are skipped, so
    this can be repeated until it completes.
    """
    for i, rel in enumerate(relpaths):
        source = staging / rel
        if not source.exists():
            continue
        target = output_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        if pause and i == 0:
            _test_commit_pause()


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


def _dead_staging(output_dir):
    """Yield ``(folder, fd)`` for each staging folder of a run no longer alive, locked.

    A folder whose lock file can be locked belongs to no live run (a run
    that died, or that died before it locked its folder). The caller closes
    ``fd`` (after removing the folder, so that a run creating it just now
    notices: see :func:`_new_staging`). Folders of this process's writers
    are skipped.
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
        if fd is not None:
            yield staging, fd


def _remove(staging, fd, why):
    try:
        shutil.rmtree(staging, ignore_errors=True)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        staging.rmdir()  # on NFS, what remained of the open lock file is gone only now
    if staging.exists():
        LOGGER.warning("cannot remove %s, the staging folder of a run that was not alive when checked", staging)
    else:
        LOGGER.info("removed %s, the staging folder of a run that %s", staging.name, why)


def remove_dead_staging(output_dir):
    """Remove the staging folders in ``output_dir`` of dead runs that did not commit.

    Those with a manifest (a commit that did not complete) are left for
    :func:`recover`, which must hold the lock on OUTPUT_DIR.
    """
    for staging, fd in _dead_staging(output_dir):
        if (staging / MANIFEST).exists():
            os.close(fd)
            continue
        _remove(staging, fd, "is no longer alive")


def recover(output_dir):
    """Bring OUTPUT_DIR to a committed state: complete the commits of dead
    runs (staging folders with a manifest), oldest first, and remove the
    staging folders of dead runs without one.

    Call with :func:`~.commit.output_lock` held. Returns the number of
    commits completed.
    """
    pending = []
    for staging, fd in _dead_staging(output_dir):
        manifest = staging / MANIFEST
        if manifest.exists():
            pending.append((manifest.stat().st_mtime, staging, fd))
        else:
            _remove(staging, fd, "is no longer alive")
    for _, staging, fd in sorted(pending, key=lambda item: item[0]):
        try:
            relpaths = json.loads((staging / MANIFEST).read_text(encoding="utf-8"))["Files"]
            _move_into_place(staging, Path(output_dir), relpaths)
        except (OSError, ValueError, KeyError, TypeError) as err:
            os.close(fd)
            raise OutputError(f"cannot complete the commit of an earlier run left in {staging}: {err}") from None
        _remove(staging, fd, "was killed while committing; its commit is now complete")
        LOGGER.warning("completed the commit of an earlier run that was killed while committing (%d files)", len(relpaths))
    return len(pending)


def _test_commit_pause():
    """Sleep ``$BIDS_GROUP_APP_TEST_COMMIT_PAUSE`` seconds, if set (tests only)."""
    pause = os.environ.get(TEST_COMMIT_PAUSE)
    if pause:
        LOGGER.warning("%s=%s (test only): pausing between two renames of the commit", TEST_COMMIT_PAUSE, pause)
        time.sleep(float(pause))


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


