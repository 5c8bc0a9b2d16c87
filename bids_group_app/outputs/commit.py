"""Committing a run's results into OUTPUT_DIR: the lock that serialises
concurrent runs, and the merge of the files they share.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import uuid
from pathlib import Path

from bids_group_app.errors import OutputError
from bids_group_app.outputs.dataset import merge_models
from bids_group_app.outputs.naming import model_file, parse, sanitize_label


@contextlib.contextmanager
def output_lock(output_dir):
    """Exclusive lock on OUTPUT_DIR (``.bids_group_app.lock``), for the short
    step where a run commits its files and updates the shared ones."""
    path = Path(output_dir) / ".bids_group_app.lock"
    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
    except OSError as err:
        raise OutputError(f"cannot lock {output_dir}: {err.strerror or err}") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_existing(path):
    """The JSON content of a file, or None when it is absent or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def model_label(output_dir, document):
    """The label a model's files get in OUTPUT_DIR (see :mod:`.naming`).

    Its ``Name`` as a label, unless OUTPUT_DIR holds a different model of
    that name (one that :func:`~.dataset.merge_models` cannot merge with it):
    then the name followed by 8 hex digits of a hash of the model without its
    ``Input`` (so the runs of one model over different cells share a label).
    """
    name = sanitize_label(document.get("Name", "model"))
    existing = read_existing(Path(output_dir) / model_file(name))
    if existing is None or merge_models(existing, document) is not None:
        return name
    design = {k: v for k, v in document.items() if k != "Input"}
    return name + uuid.uuid5(uuid.NAMESPACE_OID, json.dumps(design, sort_keys=True)).hex[:8]


def relabel_model(relpath, old, new):
    """A staged path with model label ``old`` renamed for label ``new``."""
    name = parse(relpath)
    if name is None or name.get("model") != old:
        return relpath
    return name.with_model(new).relpath
