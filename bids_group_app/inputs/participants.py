"""participants.tsv: read it and join it onto the indexed maps."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from bids_group_app.errors import DataError
from bids_group_app.inputs.index import ANY_VALUE

LOGGER = logging.getLogger(__name__)
MATCHED = "_in_participants"
#: Cell texts (after stripping whitespace) that are missing values.
MISSING_TEXTS = ("n/a", "N/A", "NaN", "nan", "")


def strip_sub(label):
    """Return a participant label without its ``sub-`` prefix."""
    label = str(label).strip()
    return label[4:] if label.startswith("sub-") else label


def read_participants(bids_dir):
    """Read ``BIDS_DIR/participants.tsv``.

    Returns
    -------
    pandas.DataFrame
        Indexed by participant label (without ``sub-``). Leading and
        trailing whitespace of headers and cells is stripped (``M `` is
        ``M``), as BIDS tools do. Columns whose non-missing values all parse
        as numbers are float; others are strings. ``n/a`` and empty cells
        are missing. An empty frame when the file does not exist.

    Raises
    ------
    DataError
        When the file is empty or not a table, lacks ``participant_id``,
        repeats a column or a participant, or has an infinite number.
    """
    path = bids_dir / "participants.tsv"
    if not path.is_file():
        return pd.DataFrame(index=pd.Index([], name="participant_id", dtype=object))
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty; it needs a header line with participant_id") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as err:
        raise DataError(f"{path} is not a readable tab-separated table: {err}") from None
    table = _stripped(table, path)
    if "participant_id" not in table.columns:
        raise DataError(f"{path} has no participant_id column (columns: {', '.join(table.columns)})")
    table["participant_id"] = table["participant_id"].map(strip_sub)
    duplicated = table["participant_id"][table["participant_id"].duplicated()].tolist()
    if duplicated:
        raise DataError(f"{path} lists participant(s) more than once: {', '.join(duplicated)}")
    table = table.set_index("participant_id")
    for column in table.columns:
        numeric = pd.to_numeric(table[column], errors="coerce")
        if numeric.notna().sum() == table[column].notna().sum():
            table[column] = numeric.astype(float)
            _check_finite(table[column], path)
        else:
            table[column] = table[column].astype(object)
    return table


def _stripped(table, path):
    """Headers and cells without surrounding whitespace; missing texts become NaN."""
    columns = [str(c).strip() for c in table.columns]
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise DataError(f"{path} has column(s) {', '.join(repeated)} more than once (headers are compared without surrounding spaces)")
    table.columns = columns
    table = table.apply(lambda column: column.str.strip())
    return table.mask(table.isin(MISSING_TEXTS))


def _check_finite(column, path):
    """Raise DataError naming the participants whose number is infinite."""
    infinite = column.index[np.isinf(column.to_numpy())].tolist()
    if infinite:
        raise DataError(f"{path} column '{column.name}' has an infinite value for {', '.join(map(str, infinite))}; "
                        "give a finite number, or n/a for a missing value")


def join_participants(maps, participants, entity_columns, chosen=None):
    """Add participants.tsv columns to the table of maps (one row per map).

    A participants column that has the name of an entity is not joined
    (the entity wins) and a warning says so. The boolean column
    ``_in_participants`` tells which maps had a row.

    Parameters
    ----------
    maps : pandas.DataFrame
        The selected maps, with a ``subject`` column.
    participants : pandas.DataFrame
        From :func:`read_participants`.
    entity_columns : list of str
        Entity names; a participants column of one of these names is not joined.
    chosen : str or list of str, optional
        The subjects the user selected (``--participant-label``, the
        model's Input ``subject`` or a ``subject`` filter; with or without
        ``sub-``; ``'*'`` selects all). Rows of participants outside it were
        left out by that choice: they are reported as ``not_selected``, not
        as lacking maps.

    Returns
    -------
    joined : pandas.DataFrame
    report : dict
        ``without_row``: subjects with maps but no participants.tsv row;
        ``without_maps``: participants.tsv rows of selected subjects with no
        selected map; ``not_selected``: participants.tsv rows outside
        ``chosen``.
    """
    clashing = [c for c in participants.columns if c in entity_columns]
    if clashing:
        LOGGER.warning("participants.tsv column(s) %s share a name with an entity; the entity is used", clashing)
    columns = [c for c in participants.columns if c not in clashing]
    joined = maps.join(participants[columns], on="subject")
    joined[MATCHED] = maps["subject"].isin(participants.index).to_numpy()
    subjects = set(maps["subject"])
    listed = set(participants.index)
    not_selected = _outside(listed, chosen)
    report = {
        "without_row": sorted(subjects - listed),
        "without_maps": sorted(listed - subjects - not_selected),
        "not_selected": sorted(not_selected),
    }
    if len(participants.index) and report["without_row"]:
        LOGGER.warning("subjects with maps but no row in participants.tsv: %s", ", ".join(report["without_row"]))
    if report["without_maps"]:
        LOGGER.warning("participants.tsv rows with no selected map: %s", ", ".join(report["without_maps"]))
    if not_selected:
        LOGGER.info("%d participants.tsv row(s) left out by the subject selection", len(not_selected))
    return joined, report


def _outside(labels, chosen):
    """The labels that a subject selection leaves out (None or ``'*'`` selects everyone)."""
    if chosen is None:
        return set()
    chosen = [chosen] if isinstance(chosen, str) else list(chosen)
    if ANY_VALUE in chosen:
        return set()
    return set(labels) - {strip_sub(c) for c in chosen if c is not None}


def is_numeric(series):
    """True when a column holds numbers (or booleans) only."""
    return pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)


def levels(series):
    """Sorted distinct non-missing values of a column, as strings.

    Numbers are written as PyBIDS names factor levels: whole numbers
    without a decimal point (``2``) when every value is whole, otherwise
    every value as a float (``0.0``, ``0.5``, ``1.0``).
    """
    values = series.dropna()
    if is_numeric(values):
        numbers = sorted(float(v) for v in values.unique())
        whole = _all_whole(numbers)
        return [_number_label(v, whole) for v in numbers]
    return sorted(map(str, values.unique()))


def level_labels(series):
    """Each value of a column as its level name in :func:`levels` (missing values stay missing)."""
    if not is_numeric(series.dropna()):
        return series.map(lambda v: v if pd.isna(v) else str(v))
    whole = _all_whole(float(v) for v in series.dropna().unique())
    return series.map(lambda v: v if pd.isna(v) else _number_label(float(v), whole))


def _all_whole(numbers):
    return all(np.isfinite(v) and float(v).is_integer() for v in numbers)


def _number_label(value, whole):
    return str(int(value)) if whole else str(float(value))
