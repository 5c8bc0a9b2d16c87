"""Output names: every file name this app writes is built (and parsed) here.

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
"""

from __future__ import annotations

import re

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


