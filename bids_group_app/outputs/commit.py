"""Committing a run's results into OUTPUT_DIR: the lock that serialises
concurrent runs, and the merge of the files they share.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import uuid
from pathlib import Path

from bids_group_app.errors import OutputError
from bids_group_app.outputs.dataset import merge_models
from bids_group_app.outputs.naming import sanitize_label

LOGGER = logging.getLogger(__name__)


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
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def model_file(output_dir, document):
    """Where a model is saved: ``model-<name>_smdl.json``, or with a hash when
    another model of the same name but a different design is there."""
    name = sanitize_label(document.get("Name", "model"))
    path = Path(output_dir) / f"model-{name}_smdl.json"
    existing = read_existing(path)
    if existing is None or merge_models(existing, document) is not None:
        return path
    digest = uuid.uuid5(uuid.NAMESPACE_OID, json.dumps(document, sort_keys=True)).hex[:8]
    LOGGER.warning("OUTPUT_DIR holds another model named %s; saving this one as model-%s%s_smdl.json", name, name, digest)
    return Path(output_dir) / f"model-{name}{digest}_smdl.json"


