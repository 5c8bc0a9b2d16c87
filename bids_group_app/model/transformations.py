"""BIDS Stats Models transformations (``pybids-transforms-v1`` subset).

Tables in, tables out: :func:`apply_transformations` takes the table of one
cell (one row per map: entity and participants.tsv columns) and returns a
new table with the instructions applied in order. :func:`check_instruction`
validates one instruction when the model is read, so that an option this
module does not implement is a UsageError naming it, never ignored.

The results are those of PyBIDS's own transformations
(``bids.modeling.transformations``, used by FitLins) on the same table,
column names and order included (``tests/model/test_transformations.py`` checks
each option against PyBIDS):

``Demean``
    Subtract the mean of the non-missing values.
``Scale``
    ``Demean`` (default true), ``Rescale`` (divide by the SD, ddof 1;
    default true), ``ReplaceNA`` (``before``/``after``: missing values become
    0 before/after scaling). A column with one distinct value is an error
    unless ``ReplaceNA`` is ``after`` (it then becomes 0).
``Factor``
    One indicator column ``<name><Sep><level>`` per level (``Sep`` default
    ``.``; levels sorted), replacing the input column. ``Constraint``:
    ``none`` (all levels), ``drop_one`` (the reference level left out),
    ``mean_zero`` (the reference level left out and coded ``-1/(k-1)`` in
    every remaining column, ``k`` levels). The reference level is
    ``RefLevel`` or the first level; as in PyBIDS, a ``RefLevel`` is left
    out with Constraint ``none`` too, and a single-level factor keeps its
    one column unless it is the ``RefLevel``.
``Replace``
    Replace values of a categorical column (``{"old": new}``).
``Rename``, ``Copy``
    Need ``Output``.

Where PyBIDS's result cannot be what a model means, the instruction is
refused instead: a Replace key naming a missing value or applied to a
numeric column (PyBIDS compares the JSON string keys with NaN or with
numbers and replaces nothing) and a Factor with an ``Output`` (PyBIDS
renames only the first level's column). Missing values stay NaN here; the
design drops those maps and re-applies the transformations to the maps
that remain (:func:`bids_group_app.model.design.build_design`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bids_group_app.errors import DataError, UsageError
from bids_group_app.inputs.participants import MISSING_TEXTS, is_numeric, level_labels, levels

#: Options each transformation accepts besides Name, Input and Output.
OPTIONS = {
    "Demean": (),
    "Scale": ("Demean", "Rescale", "ReplaceNA"),
    "Factor": ("Constraint", "RefLevel", "Sep"),
    "Replace": ("Replace", "Attribute"),
    "Rename": (),
    "Copy": (),
}
COMMON_KEYS = ("Name", "Input", "Output")
CONSTRAINTS = ("none", "drop_one", "mean_zero")
REPLACE_NA = (None, "before", "after")


# --------------------------------------------------------------------------
# Validation (when the model is read)
# --------------------------------------------------------------------------

def _as_names(value):
    return value if isinstance(value, list) else [value]


def _check_common(step, where):
    name = step.get("Name")
    if name not in OPTIONS:
        raise UsageError(f"{where}: transformation {name!r} is not supported; supported: {', '.join(OPTIONS)}")
    unknown = [k for k in step if k not in COMMON_KEYS + OPTIONS[name]]
    if unknown:
        accepted = ", ".join(COMMON_KEYS + OPTIONS[name])
        raise UsageError(f"{where}: {name} option(s) {', '.join(map(str, unknown))} not supported; {name} accepts {accepted}")
    inputs = _as_names(step.get("Input"))
    if not inputs or not all(isinstance(i, str) and i for i in inputs):
        raise UsageError(f"{where}: {name} Input must be a column name or a non-empty list of names, got {step.get('Input')!r}")
    wild = [i for i in inputs if any(ch in i for ch in "*?[]")]
    if wild:
        raise UsageError(f"{where}: {name} Input {', '.join(wild)}: wildcards in Input are not supported; list the columns")
    if "Output" in step:
        if name == "Factor":
            raise UsageError(f"{where}: Factor Output is not supported (its columns are named <Input>.<level>); rename them with Rename")
        outputs = _as_names(step["Output"])
        if len(outputs) != len(inputs) or not all(isinstance(o, str) and o for o in outputs):
            raise UsageError(f"{where}: {name} Output must name one column per Input ({len(inputs)}), got {step['Output']!r}")
    elif name in ("Rename", "Copy"):
        raise UsageError(f"{where}: {name} needs an Output (one new name per Input)")


def _check_scale(step, where):
    for key in ("Demean", "Rescale"):
        if key in step and not isinstance(step[key], bool):
            raise UsageError(f"{where}: Scale {key} must be true or false, got {step[key]!r}")
    if step.get("ReplaceNA") not in REPLACE_NA:
        raise UsageError(f"{where}: Scale ReplaceNA must be 'before', 'after' or absent, got {step['ReplaceNA']!r}")


def _check_factor(step, where):
    if step.get("Constraint", "none") not in CONSTRAINTS:
        raise UsageError(f"{where}: Factor Constraint must be none, drop_one or mean_zero, got {step['Constraint']!r}")
    if not isinstance(step.get("Sep", "."), str):
        raise UsageError(f"{where}: Factor Sep must be a string, got {step['Sep']!r}")
    if "RefLevel" in step and not isinstance(step["RefLevel"], (str, int, float)):
        raise UsageError(f"{where}: Factor RefLevel must be a level (string or number), got {step['RefLevel']!r}")


def _check_replace(step, where):
    mapping = step.get("Replace")
    if not isinstance(mapping, dict) or not mapping:
        raise UsageError(f"{where}: Replace needs a 'Replace' object mapping old values to new ones")
    missing = [k for k in mapping if k in MISSING_TEXTS]
    if missing:
        raise UsageError(
            f"{where}: Replace key(s) {', '.join(repr(k) for k in missing)} name a missing value (n/a); PyBIDS (FitLins) "
            "does not match missing values with it, so the model would give another design there. Fill the values in "
            "participants.tsv, or use Scale with ReplaceNA"
        )
    if step.get("Attribute", "value") != "value":
        raise UsageError(f"{where}: Replace Attribute {step['Attribute']!r} is not supported at the Dataset level; only 'value'")


_CHECKS = {"Scale": _check_scale, "Factor": _check_factor, "Replace": _check_replace}


def check_instruction(step, where):
    """Raise UsageError unless ``step`` is an instruction this module runs as PyBIDS does.

    Parameters
    ----------
    step : dict
        One instruction with a ``Name`` among :data:`OPTIONS`.
    where : str
        Location in the model, for the message.
    """
    _check_common(step, where)
    if step["Name"] in _CHECKS:
        _CHECKS[step["Name"]](step, where)


# --------------------------------------------------------------------------
# Application
# --------------------------------------------------------------------------

def public_columns(table):
    """Columns a model may name: all but ``path`` and internal ``_`` ones."""
    return [c for c in table.columns if not str(c).startswith("_") and c != "path"]


def _io(step):
    inputs = _as_names(step["Input"])
    return inputs, _as_names(step.get("Output", inputs))


def _column(table, name, step):
    if name not in table.columns:
        raise DataError(f"transformation {step['Name']} needs column '{name}', which does not exist; columns: {', '.join(public_columns(table))}")
    return table[name]


def _numeric_column(table, name, step):
    values = _column(table, name, step)
    if not is_numeric(values):
        raise DataError(
            f"transformation {step['Name']} needs numbers but column '{name}' holds {', '.join(levels(values)[:6])}; use Factor for a categorical variable"
        )
    return values.astype(float)


def demean(values):
    """Values minus their mean (missing values ignored, kept missing)."""
    return values - values.mean()


def scale(values, name, demean=True, rescale=True, replace_na=None):
    """PyBIDS's Scale of one numeric column.

    Parameters
    ----------
    values : pandas.Series of float
    name : str
        Column name, for messages.
    demean, rescale : bool
        Subtract the mean; divide by the SD (ddof 1).
    replace_na : {None, 'before', 'after'}
        Missing values become 0 before or after scaling.

    Raises
    ------
    DataError
        When the column has one distinct value (unless ``replace_na`` is
        ``'after'``), or when scaling leaves infinite values.
    """
    if values.nunique() == 1 and replace_na in (None, "before"):
        raise DataError(f"Scale: column '{name}' is constant ({values.dropna().iloc[0]:g}) over the maps used; it cannot be scaled")
    if replace_na == "before":
        values = values.fillna(0.0)
    if demean:
        values = values - values.mean()
    if rescale:
        values = values / values.std()
    if replace_na == "after":
        values = values.fillna(0.0)
    if np.isinf(values).any():
        raise DataError(f"Scale: column '{name}' is constant and not demeaned; dividing by its SD of 0 gives infinite values")
    return values


def factor_columns(values, name, constraint="none", reference=None, sep="."):
    """PyBIDS's Factor of one column: the indicator columns, in level order.

    Parameters
    ----------
    values : pandas.Series
        The column; missing values give NaN rows in every indicator.
    name : str
        Column name, the prefix of the new columns.
    constraint : {'none', 'drop_one', 'mean_zero'}
    reference : str, int or float, optional
        ``RefLevel``; the first level (in sorted order) when not given and
        the constraint needs one.
    sep : str
        Between name and level in the new column names.

    Returns
    -------
    dict of str to pandas.Series
    """
    labels = level_labels(values)
    found = levels(values)
    if not found:
        raise DataError(f"Factor: column '{name}' has no non-missing value")
    if reference is not None:  # labelled as the column's own values are
        reference = level_labels(pd.concat([values.dropna(), pd.Series([reference])], ignore_index=True)).iloc[-1]
        if reference not in found:
            raise DataError(f"Factor RefLevel {reference!r} is not a level of '{name}' (levels: {', '.join(found)})")
    constrained = len(found) > 1 and constraint in ("drop_one", "mean_zero")
    if constrained and reference is None:
        reference = found[0]
    columns = {}
    for level in found:
        if level == reference:
            continue
        column = (labels == level).astype(float)
        if constrained and constraint == "mean_zero":
            column[labels == reference] = -1.0 / (len(found) - 1)
        column[labels.isna()] = np.nan
        columns[f"{name}{sep}{level}"] = column
    return columns


def replace(values, mapping, name):
    """PyBIDS's Replace of a categorical column (exact match of the text)."""
    if is_numeric(values):
        raise DataError(
            f"Replace: column '{name}' is numeric; PyBIDS (FitLins) compares the JSON keys, which are strings, with its numbers "
            "and replaces nothing, so the model would give another design there. Recode it in participants.tsv"
        )
    column = values.astype(object).copy()
    text = column.map(lambda v: v if pd.isna(v) else str(v))
    for old, new in mapping.items():
        column[text == str(old)] = new
    numeric = pd.to_numeric(column, errors="coerce")
    return numeric.astype(float) if numeric.notna().sum() == column.notna().sum() else column


def _apply_step(table, step):
    name = step["Name"]
    if name == "Factor":
        for source in _io(step)[0]:
            columns = factor_columns(_column(table, source, step), source, step.get("Constraint", "none"),
                                     step.get("RefLevel"), step.get("Sep", "."))
            table = table.drop(columns=source)
            for column, values in columns.items():
                table[column] = values
        return table
    for source, target in zip(*_io(step)):
        if name in ("Rename", "Copy"):
            table[target] = _column(table, source, step)
            if name == "Rename" and target != source:
                table = table.drop(columns=source)
        elif name == "Replace":
            table[target] = replace(_column(table, source, step), step["Replace"], source)
        elif name == "Demean":
            table[target] = demean(_numeric_column(table, source, step))
        else:
            table[target] = scale(_numeric_column(table, source, step), source, step.get("Demean", True),
                                  step.get("Rescale", True), step.get("ReplaceNA"))
    return table


def apply_transformations(table, instructions):
    """Apply the instructions in order, as PyBIDS does, to a copy of ``table``.

    Statistics (means, SDs, factor levels) are computed over the rows
    given, so call this on the maps actually used.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per map.
    instructions : list of dict
        Instructions validated by :func:`check_instruction`.

    Returns
    -------
    pandas.DataFrame
    """
    table = table.copy()
    for step in instructions:
        table = _apply_step(table, step)
    return table
