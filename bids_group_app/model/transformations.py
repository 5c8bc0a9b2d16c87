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
    Replace values of a categorical column (``{"old": new}``; ``Attribute``
    ``value`` only).
``Rename``, ``Copy``
    Need ``Output``.
``Product``, ``Sum`` (``Weights``, one number per Input), ``And``, ``Or``
    Row by row over all the Inputs into one column; need one ``Output``.
    ``And``/``Or`` give 1 where all/any values are non-zero, else 0.
``Threshold``
    ``Threshold`` (default 0), ``Above`` (keep values ``>=``, default true;
    false: ``<=``), ``Binarize`` (kept values become 1), ``Signed``
    (false: compare absolute values with ``|Threshold|``; the kept values
    are then absolute values, as in PyBIDS). The others become 0.
``Not``
    1 where a value is 0, else 0.
``Orthogonalize``
    The residuals of a least-squares fit on ``Other`` with an intercept,
    plus the intercept (the mean is kept).
``Filter``
    The column where the pandas ``Query`` holds (over the column and a
    ``By`` column, names rewritten to identifiers as PyBIDS does), missing
    elsewhere (PyBIDS drops those rows of the variable; here the maps are
    dropped when the column is in ``Model.X``).
``DropNA``
    The column unchanged (its missing values already drop the maps).
``Select``, ``Delete``
    Keep only / remove the Input columns (entity columns and paths stay;
    Select puts the Inputs in their listed order). No ``Output``.

Every instruction takes ``Input`` (a name or a list; wildcards refused) and
``Output`` (one name per Input; one name for the combining ones); options
of Scale, Factor, Threshold and Filter may be lists with one value per
Input, as in PyBIDS. Inputs are read before any output is written.

Refused when the model is read (UsageError naming it): run-timeseries
transformations (:data:`RUN_LEVEL`: Convolve, Lag, ToDense, Resample, Split,
Assign) which belong to Run-level nodes; :data:`NOT_RUNNABLE` ones (Power:
PyBIDS has none; Group: its group name cannot be given in a model
document); unknown names and unknown options (``GroupBy``, ``Dense``,
``OutputPrefix``/``OutputSuffix`` included).

Where PyBIDS's result cannot be what a model means, the instruction is
refused instead: a Replace key naming a missing value or applied to a
numeric column (PyBIDS compares the JSON string keys with NaN or with
numbers and replaces nothing) and a Factor with an ``Output`` (PyBIDS
renames only the first level's column). Missing values stay NaN here,
including where PyBIDS fills them in (Product skips them, Sum counts them
as 0, And/Or skip them, Not and Threshold turn them into 1 or 0,
Orthogonalize fails): the design drops those maps and re-applies the
transformations to the maps that remain
(:func:`bids_group_app.model.design.build_design`), which then equal
PyBIDS's on those maps.
"""

from __future__ import annotations

import re

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
    "Product": (),
    "Sum": ("Weights",),
    "Threshold": ("Threshold", "Binarize", "Above", "Signed"),
    "Orthogonalize": ("Other",),
    "And": (),
    "Or": (),
    "Not": (),
    "Filter": ("Query", "By"),
    "DropNA": (),
    "Select": (),
    "Delete": (),
}
COMMON_KEYS = ("Name", "Input", "Output")
CONSTRAINTS = ("none", "drop_one", "mean_zero")
REPLACE_NA = (None, "before", "after")
#: One output column from all the inputs together (PyBIDS: not loopable, Output required).
COMBINING = ("Product", "Sum", "And", "Or")
#: PyBIDS accepts a list of these options' values, one per Input.
PER_INPUT = ("Scale", "Factor", "Threshold", "Filter")
#: PyBIDS transformations of run timeseries (events, HRF, sampling rates).
RUN_LEVEL = ("Convolve", "Lag", "ToDense", "Resample", "Split", "Assign")
#: Names a pybids-transforms-v1 document cannot run, with the reason.
NOT_RUNNABLE = {
    "Power": "PyBIDS (FitLins) has no Power transformation, so pybids-transforms-v1 cannot run it; "
             "square a column with Product (Input [x, x], Output x_squared) or compute it in participants.tsv",
    "Group": "PyBIDS's Group takes the group name from the key 'Name', which is the transformation's own name "
             "in a model document, so FitLins cannot run it; list the columns in each Input instead",
}
_WILD = "*?[]"


# --------------------------------------------------------------------------
# Validation (when the model is read)
# --------------------------------------------------------------------------

def _as_names(value):
    return value if isinstance(value, list) else [value]


def _is_names(value):
    names = _as_names(value)
    return bool(names) and all(isinstance(n, str) and n for n in names)


def _check_name(step, where):
    name = step.get("Name")
    if name in RUN_LEVEL:
        raise UsageError(
            f"{where}: {name} is not supported at the Dataset level: it transforms run timeseries (events, HRF "
            "convolution, sampling) and belongs to Run-level nodes; here each row is one subject's map"
        )
    if name in NOT_RUNNABLE:
        raise UsageError(f"{where}: transformation {name} is not supported: {NOT_RUNNABLE[name]}")
    if name not in OPTIONS:
        raise UsageError(f"{where}: transformation {name!r} is not supported; supported: {', '.join(OPTIONS)}")


def _check_keys(step, where):
    name = step["Name"]
    unknown = [k for k in step if k not in COMMON_KEYS + OPTIONS[name]]
    if unknown:
        accepted = ", ".join(COMMON_KEYS + OPTIONS[name])
        raise UsageError(f"{where}: {name} option(s) {', '.join(map(str, unknown))} not supported; {name} accepts {accepted}")
    if name in PER_INPUT:
        count = len(_as_names(step.get("Input")))
        for key in OPTIONS[name]:
            if isinstance(step.get(key), list) and len(step[key]) != count:
                raise UsageError(f"{where}: {name} {key} is a list, so it needs one value per Input ({count}), got {step[key]!r}")


def _check_io(step, where):
    name = step["Name"]
    inputs = _as_names(step.get("Input"))
    if not _is_names(inputs):
        raise UsageError(f"{where}: {name} Input must be a column name or a non-empty list of names, got {step.get('Input')!r}")
    wild = [i for i in inputs if any(ch in i for ch in _WILD)]
    if wild:
        raise UsageError(f"{where}: {name} Input {', '.join(wild)}: wildcards in Input are not supported; list the columns")
    if "Output" in step:
        if name == "Factor":
            raise UsageError(f"{where}: Factor Output is not supported (its columns are named <Input>.<level>); rename them with Rename")
        if name in ("Select", "Delete"):
            raise UsageError(f"{where}: {name} has no Output (PyBIDS ignores it); it keeps or removes the Input columns")
        outputs = _as_names(step["Output"])
        count = 1 if name in COMBINING else len(inputs)
        if len(outputs) != count or not _is_names(outputs):
            raise UsageError(f"{where}: {name} Output must name {'one column' if count == 1 else 'one column per Input'} ({count}), got {step['Output']!r}")
    elif name in ("Rename", "Copy") + COMBINING:
        raise UsageError(f"{where}: {name} needs an Output ({'one name' if name in COMBINING else 'one new name per Input'})")


def _each(step, key, default=None):
    """The value of option ``key`` for each Input (a list gives one per Input)."""
    count = len(_as_names(step["Input"]))
    value = step.get(key, default)
    if step["Name"] in PER_INPUT and isinstance(value, list):
        return value
    return [value] * count


def _require_each(step, key, valid, expected, where):
    if key in step and not all(valid(v) for v in _each(step, key)):
        raise UsageError(f"{where}: {step['Name']} {key} must be {expected}, got {step[key]!r}")


def _is_bool(value):
    return isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _check_scale(step, where):
    for key in ("Demean", "Rescale"):
        _require_each(step, key, _is_bool, "true or false", where)
    _require_each(step, "ReplaceNA", lambda v: v in REPLACE_NA, "'before', 'after' or absent", where)


def _check_factor(step, where):
    _require_each(step, "Constraint", lambda v: v in CONSTRAINTS, "none, drop_one or mean_zero", where)
    _require_each(step, "Sep", lambda v: isinstance(v, str), "a string", where)
    _require_each(step, "RefLevel", lambda v: isinstance(v, str) or _is_number(v), "a level (string or number)", where)


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


def _check_sum(step, where):
    if "Weights" not in step:
        return
    weights, count = step["Weights"], len(_as_names(step["Input"]))
    if not isinstance(weights, list) or len(weights) != count or not all(_is_number(w) for w in weights):
        raise UsageError(f"{where}: Sum Weights must be a list of {count} numbers, one per Input, got {weights!r}")


def _check_threshold(step, where):
    _require_each(step, "Threshold", _is_number, "a number", where)
    for key in ("Binarize", "Above", "Signed"):
        _require_each(step, key, _is_bool, "true or false", where)


def _check_orthogonalize(step, where):
    other = step.get("Other")
    if other is None or not _is_names(other) or any(ch in o for o in _as_names(other) for ch in _WILD):
        raise UsageError(f"{where}: Orthogonalize needs Other, the column(s) to orthogonalize against (names, no wildcards), got {other!r}")


def _check_filter(step, where):
    def query(value):
        return isinstance(value, str) and value.strip() and not any(ch in value for ch in _WILD)

    def by(value):  # PyBIDS aligns each Input with one By column
        return isinstance(value, str) and value and not any(ch in value for ch in _WILD)

    if "Query" not in step:
        raise UsageError(f"{where}: Filter needs a Query (a pandas query such as \"age > 30\")")
    _require_each(step, "Query", query, "a pandas query string without *, ?, [ or ] (PyBIDS takes those for wildcards "
                  "of variable names)", where)
    _require_each(step, "By", by, "a column name (no wildcards) or a list of one name per Input", where)


_CHECKS = {"Scale": _check_scale, "Factor": _check_factor, "Replace": _check_replace, "Sum": _check_sum,
           "Threshold": _check_threshold, "Orthogonalize": _check_orthogonalize, "Filter": _check_filter}


def check_instruction(step, where):
    """Raise UsageError unless ``step`` is an instruction this module runs as PyBIDS does.

    Parameters
    ----------
    step : dict
        One instruction. Its ``Name`` must be among :data:`OPTIONS`:
        :data:`RUN_LEVEL` ones belong to Run-level nodes, the others are
        unknown (or, :data:`NOT_RUNNABLE`, not runnable by PyBIDS).
    where : str
        Location in the model (the node), for the message.
    """
    _check_name(step, where)
    _check_keys(step, where)
    _check_io(step, where)
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


def threshold(values, cutoff=0.0, binarize=False, above=True, signed=True):
    """PyBIDS's Threshold of one numeric column (missing values stay missing).

    Values on the kept side of ``cutoff`` (``>=`` when ``above``, else
    ``<=``) are kept (1 when ``binarize``), the others become 0. Unsigned:
    absolute values are compared with ``|cutoff|`` and kept as absolute
    values, as in PyBIDS.
    """
    if not signed:
        cutoff, values = abs(cutoff), values.abs()
    keep = values >= cutoff if above else values <= cutoff
    result = values.where(keep, 0.0)
    if binarize:
        result[keep] = 1.0
    return result.where(values.notna())


def logical_not(values):
    """PyBIDS's Not: 1 where a value is 0, else 0 (missing values stay missing)."""
    return (values == 0).astype(float).where(values.notna())


def combine(frame, name, weights=None):
    """PyBIDS's Product, Sum (with weights), And and Or of columns, row by row.

    A row with a missing value gives a missing result (PyBIDS skips it:
    a product over the other columns, a sum as if it were 0).
    """
    complete = frame.notna().all(axis=1)
    if name == "Product":
        result = frame.prod(axis=1)
    elif name == "Sum":
        result = (frame * (np.ones(frame.shape[1]) if weights is None else np.asarray(weights, float))).sum(axis=1)
    elif name == "And":
        result = (frame != 0).all(axis=1).astype(float)
    else:
        result = (frame != 0).any(axis=1).astype(float)
    return result.where(complete)


def orthogonalize(values, others):
    """PyBIDS's Orthogonalize: ``values`` minus their least-squares fit on ``others``.

    The fit has an intercept, which is not subtracted (the mean is kept).
    Rows with a missing value in ``values`` or ``others`` are left out of
    the fit and stay missing.
    """
    complete = values.notna() & others.notna().all(axis=1)
    X = others[complete].to_numpy(float)
    design = np.column_stack([np.ones(len(X)), X])
    coefs = np.linalg.lstsq(design, values[complete].to_numpy(float), rcond=None)[0]
    result = pd.Series(np.nan, index=values.index)
    result[complete] = values[complete].to_numpy(float) - X @ coefs[1:]
    return result


def filter_rows(values, table, source, query, by):
    """PyBIDS's Filter: ``values`` where ``query`` holds over ``table``, missing elsewhere.

    As in PyBIDS the query is a pandas query over the column ``source`` and
    the ``by`` columns, whose names are rewritten to identifiers (runs of
    characters other than letters, digits and ``_`` become ``_``) in the
    query text.
    """
    names = list(dict.fromkeys([source] + ([by] if by else [])))
    aliases = {n: re.sub("[^a-zA-Z0-9_]+", "_", n) for n in names}
    for name, alias in aliases.items():
        query = query.replace(name, alias)
    frame = pd.DataFrame({aliases[n]: _column(table, n, {"Name": "Filter"}).to_numpy() for n in names})
    try:
        kept = frame.query(query).index
    except Exception as err:  # pandas raises many kinds for a bad query
        raise DataError(f"Filter of '{source}': query {query!r} cannot be evaluated over {', '.join(aliases.values())}: {err}") from None
    mask = np.zeros(len(table), dtype=bool)
    mask[kept.to_numpy()] = True
    return values.where(mask)


def _numeric_frame(table, names, step):
    """The numeric columns ``names`` side by side (a name given twice comes twice)."""
    return pd.concat([_numeric_column(table, n, step) for n in names], axis=1)


def _factor(table, step, sources):
    for i, source in enumerate(_io(step)[0]):
        columns = factor_columns(sources[source], source, _each(step, "Constraint", "none")[i],
                                 _each(step, "RefLevel")[i], _each(step, "Sep", ".")[i])
        table = table.drop(columns=source)
        for column, values in columns.items():
            table[column] = values
    return table


def _one_column(table, sources, step, i, others):
    """The result of a one-column transformation of Input ``i`` (its values in ``sources``)."""
    name, source = step["Name"], _io(step)[0][i]
    values = sources[source]
    if name in ("Rename", "Copy", "DropNA"):
        return values
    if name == "Replace":
        return replace(values, step["Replace"], source)
    if name == "Filter":
        return filter_rows(values, table, source, _each(step, "Query")[i], _each(step, "By")[i])
    values = _numeric_column(sources, source, step)
    if name == "Demean":
        return demean(values)
    if name == "Not":
        return logical_not(values)
    if name == "Threshold":
        return threshold(values, *(_each(step, key, default)[i] for key, default in
                                   (("Threshold", 0.0), ("Binarize", False), ("Above", True), ("Signed", True))))
    if name == "Orthogonalize":
        return orthogonalize(values, others)
    return scale(values, source, _each(step, "Demean", True)[i], _each(step, "Rescale", True)[i], _each(step, "ReplaceNA")[i])


def _select(table, step, keep):
    names = list(dict.fromkeys(_io(step)[0]))
    for name in names:
        _column(table, name, step)
    fixed = [c for c in table.columns if c not in public_columns(table) or c in keep]
    return table[fixed + [n for n in names if n not in fixed]]


def _delete(table, step, keep):
    names = _io(step)[0]
    entities = [n for n in names if n in keep]
    if entities:
        raise DataError(f"Delete: {', '.join(entities)} is an entity, not a variable; it cannot be deleted")
    for name in names:
        _column(table, name, step)
    return table.drop(columns=list(dict.fromkeys(names)))


def _apply_step(table, step, keep):
    name = step["Name"]
    inputs, outputs = _io(step)
    if name == "Select":
        return _select(table, step, keep)
    if name == "Delete":
        return _delete(table, step, keep)
    if name in COMBINING:
        table[outputs[0]] = combine(_numeric_frame(table, inputs, step), name, step.get("Weights"))
        return table
    # PyBIDS copies every input (and Other) before writing any output
    sources = pd.DataFrame({s: _column(table, s, step) for s in dict.fromkeys(inputs)}, index=table.index)
    if name == "Factor":
        return _factor(table, step, sources)
    others = _numeric_frame(table, _as_names(step["Other"]), step) if name == "Orthogonalize" else None
    for i, (source, target) in enumerate(zip(inputs, outputs)):
        table[target] = _one_column(table, sources, step, i, others)
        if name == "Rename" and target != source:
            table = table.drop(columns=source)
    return table


def apply_transformations(table, instructions, entities=()):
    """Apply the instructions in order, as PyBIDS does, to a copy of ``table``.

    Statistics (means, SDs, factor levels, fits) are computed over the rows
    given, so call this on the maps actually used.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per map.
    instructions : list of dict
        Instructions validated by :func:`check_instruction`.
    entities : collection of str
        Entity columns: PyBIDS keeps entities apart from variables, so
        Select keeps them and Delete refuses them.

    Returns
    -------
    pandas.DataFrame
    """
    table = table.copy()
    for step in instructions:
        table = _apply_step(table, step, set(entities))
    return table
