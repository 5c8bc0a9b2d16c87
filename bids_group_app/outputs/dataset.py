"""The BIDS-derivative dataset as a whole: its description, its
.bidsignore, the saved models, and the software that made it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import nibabel as nib

from bids_group_app import __version__
from bids_group_app.errors import UnreadableResultsError
from bids_group_app.outputs.view import as_view

LOGGER = logging.getLogger(__name__)


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


def bidsignore():
    """Content of OUTPUT_DIR/.bidsignore: files using entities BIDS lacks."""
    lines = ["node-*/", "logs/", "figures/", "*_smdl.json", "*_report.html", ".bids_group_app*"]
    return "\n".join(lines) + "\n"


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
    None when the designs differ, and when the subject selections differ:
    the union of two runs' participants would reproduce neither run's fit.
    """
    if not isinstance(existing, dict):
        return new
    strip = lambda d: {k: v for k, v in d.items() if k != "Input"}  # noqa: E731
    if json.dumps(strip(existing), sort_keys=True) != json.dumps(strip(new), sort_keys=True):
        return None
    old_input, new_input = existing.get("Input") or {}, new.get("Input") or {}
    if set(old_input) != set(new_input) or _values(old_input.get("subject")) != _values(new_input.get("subject")):
        return None
    merged = {}
    for key, values in new_input.items():
        values = values if isinstance(values, list) else [values]
        previous = old_input[key] if isinstance(old_input[key], list) else [old_input[key]]
        merged[key] = sorted({*map(str, previous), *map(str, values)}) if None not in previous + values else values
    return {**new, "Input": merged}


def _values(value):
    """An ``Input`` entity's value(s) as a sorted list of strings (None stays None)."""
    if value is None:
        return None
    return sorted(map(str, value if isinstance(value, list) else [value]))


def dataset_nodes(model):
    """The Dataset-level nodes of a saved model document."""
    return [node for node in model.get("Nodes", []) if str(node.get("Level", "")).lower() == "dataset"]


def latest_config(output_dir, model=None):
    """Path of the most recent ``logs/config-*.json`` of OUTPUT_DIR (None when none).

    Parameters
    ----------
    output_dir : path-like or bids_group_app.outputs.view.OutputView
    model : str, optional
        A model label: the most recent configuration of a run of that model
        (its ``Model`` field); the most recent of all when no log names it
        (logs of versions before the field existed).
    """
    view = as_view(output_dir)
    configs = [view / rel for rel in reversed(view.glob("logs/config-*.json"))]  # naming.config_file: sorts by time
    if model is not None:
        for path in configs:
            try:
                if json.loads(path.read_text(encoding="utf-8")).get("Model") == model:
                    return path
            except (OSError, ValueError, AttributeError):
                continue
    return configs[0] if configs else None


def read_result_json(path):
    """The content of a JSON file of OUTPUT_DIR; a ValueError naming the file when it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path.name} is not valid JSON ({err})") from None


@contextlib.contextmanager
def unreadable_results(what):
    """Turn a failure to read back earlier results into :class:`UnreadableResultsError`.

    Parameters
    ----------
    what : str
        What was being read (e.g. a saved model's file name), for the message.
    """
    try:
        yield
    except UnreadableResultsError:
        raise
    except (OSError, ValueError, KeyError, TypeError, nib.filebasedimages.ImageFileError) as err:
        detail = f"{err.strerror}: {err.filename}" if isinstance(err, OSError) and err.strerror else str(err)
        raise UnreadableResultsError(f"the results of {what} cannot be read back ({detail}); "
                                     "remove or restore the damaged file, or write to another OUTPUT_DIR") from err


def read_optional_result(path, strict=True):
    """The content of a JSON file of OUTPUT_DIR that may be absent ({} then).

    An unreadable file is an :class:`UnreadableResultsError`, or with
    ``strict=False`` a warning and {}.
    """
    if path is None or not Path(path).exists():
        return {}
    try:
        with unreadable_results(Path(path).name):
            return read_result_json(path)
    except UnreadableResultsError as err:
        if strict:
            raise
        LOGGER.warning("%s", err)
        return {}
