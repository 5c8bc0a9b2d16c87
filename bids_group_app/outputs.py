"""Outputs: the BIDS-derivative dataset written to OUTPUT_DIR.

Naming scheme (documented in the README)::

    OUTPUT_DIR/
      dataset_description.json, .bidsignore, README.md
      model-<model>_smdl.json            the model that ran (BIDS Stats Models)
      logs/config-<timestamp>-<id>.json   the options that ran
      node-<node>/
        <cell>_design.tsv|.json           design matrix, columns, maps, dropped
        <cell>_mask.nii.gz                analysis mask
        <cell>_contrast-<c>_stat-<s>_statmap.nii.gz|.json
              s = effect, variance, t, z, p (t-contrasts) or F, z, p (F-contrasts)
        <cell>_contrast-<c>_stat-z_thresh-<h>_statmap.nii.gz|.json
        <cell>_contrast-<c>_thresh-<h>_clusters.tsv|.json

``<cell>`` holds the GroupBy values of the model cell, as ``key-value``
pairs in GroupBy order: the first-level contrast as ``input-<label>``,
``task``/``session``/``run``/``acquisition``/``space``/``desc``/``label``
with their BIDS keys (``ses``, ``acq``), and participants.tsv columns under
their own names. Labels are sanitised to BIDS alphanumerics (``-`` becomes
``Minus``, ``+`` ``Plus``, other separators camelCase the next letter).

Every file is first written into a staging folder inside OUTPUT_DIR and
moved into place (atomic renames) only when the whole run succeeded, so a
failed run leaves no half-written or misleading map.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np

from . import __version__
from .errors import OutputError

ENTITY_KEYS = {
    "contrast": "input",
    "session": "ses",
    "acquisition": "acq",
    "task": "task",
    "run": "run",
    "space": "space",
    "desc": "desc",
    "label": "label",
    "node": "innode",
}


def sanitize_label(value):
    """Turn any value into a BIDS label (letters and digits only).

    >>> sanitize_label("patient-control"), sanitize_label("sex.M"), sanitize_label("Stimulus X Rep")
    ('patientMinusControl', 'sexM', 'StimulusXRep')
    """
    text = str(value).strip()
    text = re.sub(r"(?<=[A-Za-z0-9])\s*-\s*(?=[A-Za-z0-9])", " Minus ", text)
    text = text.replace("+", " Plus ")
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", text) if p]
    if not parts:
        return "unnamed"
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def cell_prefix(group_values):
    """Filename prefix for a GroupBy cell, e.g. ``task-x_input-motor``."""
    parts = []
    for key, value in group_values.items():
        name = ENTITY_KEYS.get(key, sanitize_label(key).lower())
        parts.append(f"{name}-{sanitize_label(value)}")
    return "_".join(parts)


def join_name(prefix, *parts):
    """Join BIDS filename parts, skipping an empty prefix."""
    return "_".join(p for p in (prefix, *parts) if p)


def software_versions():
    """Versions of the packages whose code computed the results."""
    import nilearn
    import numpy
    import scipy
    import bids
    import pandas

    return {
        "bids_group_app": __version__,
        "nilearn": nilearn.__version__,
        "nibabel": nib.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "pandas": pandas.__version__,
        "pybids": bids.__version__,
    }


def container_info():
    """The container the app runs in, from the environment, or None."""
    for var, kind in (("APPTAINER_CONTAINER", "apptainer"), ("SINGULARITY_CONTAINER", "singularity")):
        if os.environ.get(var):
            return {"Type": kind, "URI": os.environ[var]}
    if os.environ.get("BIDS_GROUP_APP_CONTAINER"):
        return {"Type": "docker", "Tag": os.environ["BIDS_GROUP_APP_CONTAINER"]}
    return None


def dataset_description(source_datasets):
    """Content of OUTPUT_DIR/dataset_description.json."""
    generated = {"Name": "bids_group_app", "Version": __version__,
                 "Description": "Group-level GLM and inference on first-level derivatives"}
    container = container_info()
    if container:
        generated["Container"] = container
    return {
        "Name": "bids_group_app group-level results",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
        "SourceDatasets": [{"URL": Path(p).resolve().as_uri()} for p in source_datasets],
    }


class OutputWriter:
    """Stage files inside OUTPUT_DIR and move them into place on commit.

    Parameters
    ----------
    output_dir : pathlib.Path
    """

    def __init__(self, output_dir):
        self.output_dir = Path(output_dir)
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.staging = self.output_dir / f".bids_group_app-staging-{uuid.uuid4().hex[:12]}"
            self.staging.mkdir()
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
        """Stage a JSON file."""
        self._target(relpath).write_text(json.dumps(content, indent=2, default=_json_default) + "\n")

    def text(self, relpath, content):
        """Stage a text file."""
        self._target(relpath).write_text(content)

    def table(self, relpath, frame):
        """Stage a TSV table (``n/a`` for missing values)."""
        frame.to_csv(self._target(relpath), sep="\t", index=False, na_rep="n/a")

    def image(self, relpath, img):
        """Stage a NIfTI image."""
        nib.save(img, str(self._target(relpath)))

    def commit(self):
        """Move every staged file into OUTPUT_DIR and remove the staging folder."""
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
        """Drop everything staged."""
        shutil.rmtree(self.staging, ignore_errors=True)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def bidsignore():
    """Content of OUTPUT_DIR/.bidsignore: files using entities BIDS lacks."""
    lines = ["node-*/", "logs/", "figures/", "*_smdl.json", "*_report.html", ".bids_group_app*"]
    return "\n".join(lines) + "\n"


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


def merge_descriptions(existing, new):
    """dataset_description.json of an OUTPUT_DIR that earlier runs wrote too:
    the new one, with the source datasets of both."""
    if not isinstance(existing, dict):
        return new
    sources = [*existing.get("SourceDatasets", []), *new.get("SourceDatasets", [])]
    unique = list({json.dumps(s, sort_keys=True): s for s in sources}.values())
    return {**new, "SourceDatasets": unique}


def merge_models(existing, new):
    """One model document covering two runs of the same design.

    Runs of one model that selected different maps (e.g. one job-array task
    per first-level contrast with ``--filter``) differ only in ``Input``;
    the merged ``Input`` takes, per entity, the values of both, so
    ``--model`` on the saved file reproduces every run's outputs. Returns
    None when the designs differ.
    """
    if not isinstance(existing, dict):
        return new
    strip = lambda d: {k: v for k, v in d.items() if k != "Input"}  # noqa: E731
    if json.dumps(strip(existing), sort_keys=True) != json.dumps(strip(new), sort_keys=True):
        return None
    old_input, new_input = existing.get("Input") or {}, new.get("Input") or {}
    if set(old_input) != set(new_input):
        return None
    merged = {}
    for key, values in new_input.items():
        values = values if isinstance(values, list) else [values]
        previous = old_input[key] if isinstance(old_input[key], list) else [old_input[key]]
        merged[key] = sorted({*map(str, previous), *map(str, values)}) if None not in previous + values else values
    return {**new, "Input": merged}


def dataset_node_dirs(output_dir, model):
    """``(node, folder)`` of each Dataset-level node of a saved model document."""
    return [(node, Path(output_dir) / f"node-{sanitize_label(node.get('Name', 'node'))}")
            for node in model.get("Nodes", []) if str(node.get("Level", "")).lower() == "dataset"]


def latest_config(output_dir):
    """Path of the most recent ``logs/config-*.json`` of OUTPUT_DIR (None when none)."""
    configs = sorted((Path(output_dir) / "logs").glob("config-*.json"))
    return configs[-1] if configs else None
