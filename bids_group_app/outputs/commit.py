"""Committing a run's results into OUTPUT_DIR: the lock that serialises
concurrent runs (held on OUTPUT_DIR/.bidsignore, so no lock file is left),
and the merge of the files they share.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from pathlib import Path

from bids_group_app.errors import OutputError
from bids_group_app.outputs.dataset import bidsignore, merge_models
from bids_group_app.outputs.naming import model_file, parse, sanitize_label


@contextlib.contextmanager
def output_lock(output_dir):
    """Exclusive lock on OUTPUT_DIR, for the short step where a run commits
    its files and updates the shared ones.

    The lock is an ``fcntl.flock`` on ``OUTPUT_DIR/.bidsignore``, a file of
    the dataset that every run writes anyway (here, under the lock and in
    place, so it is never replaced by another file): no file is left in
    OUTPUT_DIR just for locking.

    Notes
    -----
    A regular file opened for writing, not the directory itself: on NFS a
    flock on a regular file is forwarded to the server (as a lock on the
    whole file) and serialises runs on different hosts, whereas a flock on
    a directory stays local to each host. So runs are serialised across
    hosts wherever flock is: local filesystems, NFS (unless mounted with
    ``nolock`` or ``local_lock``), Lustre mounted with ``flock``. Should the
    file be replaced while a run holds the lock (e.g. by an editor), the
    runs waiting for it notice (another file at the path) and lock the new
    one; a run in its critical section at that moment is then no longer
    exclusive.
    """
    path = Path(output_dir) / ".bidsignore"
    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        fd = lock_file(path)
    except OSError as err:
        raise OutputError(f"cannot lock {output_dir}: {err.strerror or err}") from None
    try:
        _write_in_place(fd, bidsignore(), path)
        yield
    finally:
        os.close(fd)  # releases the lock


def lock_file(path, wait=True):
    """Open ``path`` (created if missing) and flock it exclusively.

    Parameters
    ----------
    path : pathlib.Path
    wait : bool
        Wait for the lock; else return None at once if another open file
        (of this or another process) holds it.

    Returns
    -------
    int or None
        The open file descriptor; closing it releases the lock.

    Notes
    -----
    If the file is removed or replaced between the open and the lock, the
    lock is on a file that is no longer ``path``: this starts again (and
    raises FileNotFoundError if the folder is gone).
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        if _is_same_file(fd, path):
            return fd
        os.close(fd)


def _is_same_file(fd, path):
    """Whether the open file ``fd`` is (still) the file at ``path``."""
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)


def _write_in_place(fd, content, path):
    """Make the file open as ``fd`` hold ``content`` (rewritten only if it differs)."""
    try:
        with open(fd, "r+", encoding="utf-8", closefd=False) as handle:
            if handle.read() != content:
                handle.seek(0)
                handle.truncate()
                handle.write(content)
    except (OSError, ValueError) as err:
        raise OutputError(f"cannot write {path}: {getattr(err, 'strerror', None) or err}") from None


def read_existing(path):
    """The JSON content of a file, or None when it is absent or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def model_label(output_dir, document):
    """The label a model's files get in OUTPUT_DIR (see :mod:`.naming`).

    Its ``Name`` as a label, unless OUTPUT_DIR holds a different model of
    that name: one that :func:`~.dataset.merge_models` cannot merge with it
    (another design, or another subject selection), or a file that cannot be
    read as a model (left as it is). Then the name followed by 8 hex digits
    of a hash of the model without its ``Input`` but with its subject
    selection: the runs of one model over the same participants and
    different cells share a label, runs over other participants do not.

    Raises
    ------
    OutputError
        When the file of that hashed label exists too and cannot hold this
        model either (unreadable, or saved from other ``Input`` entities):
        it is not overwritten.
    """
    name = sanitize_label(document.get("Name", "model"))
    if _can_hold(Path(output_dir) / model_file(name), document):
        return name
    design = {k: v for k, v in document.items() if k != "Input"}
    subjects = (document.get("Input") or {}).get("subject")
    if subjects is not None:  # absent: the hash of a run of all participants is the same as before
        design["Input"] = {"subject": subjects}
    label = name + uuid.uuid5(uuid.NAMESPACE_OID, json.dumps(design, sort_keys=True)).hex[:8]
    if not _can_hold(Path(output_dir) / model_file(label), document):
        raise OutputError(f"{Path(output_dir) / model_file(label)} is unreadable or holds a model that this run "
                          "cannot be merged with; move it away or choose another OUTPUT_DIR")
    return label


def _can_hold(path, document):
    """Whether the saved model at ``path`` is absent or one that ``document`` merges with."""
    if not path.exists():
        return True
    existing = read_existing(path)
    return isinstance(existing, dict) and merge_models(existing, document) is not None


def relabel_model(relpath, old, new):
    """A staged path with model label ``old`` renamed for label ``new``."""
    name = parse(relpath)
    if name is None or name.get("model") != old:
        return relpath
    return name.with_model(new).relpath
