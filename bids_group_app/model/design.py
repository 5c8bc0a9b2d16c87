"""Design: from one GroupBy cell of maps to a design matrix and contrasts.

A *cell* is the table of maps (one row per map, with entity and
participants.tsv columns) that one model is fit to. This module applies the
node's transformations (:mod:`bids_group_app.model.transformations`; its
``apply_transformations`` is importable from here too), expands ``Model.X``
into columns, drops the maps whose model variables are missing, evaluates
``Model.Formula`` (formulaic, as PyBIDS does) over those columns, and
resolves the contrasts into weight matrices over the design columns,
checking that each is estimable. Contrasts naming a column the design lacks
are dropped with a warning (PyBIDS drops them silently).
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bids_group_app.errors import DataError, UsageError
from bids_group_app.inputs.participants import MATCHED, is_numeric, levels
from bids_group_app.model.transformations import apply_transformations, public_columns

LOGGER = logging.getLogger(__name__)
SUBJECT_PREFIX = "sub-"


@dataclass
class Contrast:
    """A resolved contrast: weights over every design column."""

    name: str
    test: str
    weights: np.ndarray  # (n_rows, n_columns)

    @property
    def vector(self):
        """Weights as a 2-D matrix (F) or a 1-D vector (t, FEMA, pass)."""
        return self.weights if self.test == "F" else self.weights[0]

    @property
    def fixed_effects(self):
        """Whether the contrast is a fixed-effects combination of effect and variance maps (FEMA)."""
        return self.test == "FEMA"


@dataclass
class Design:
    """The design of one cell.

    Attributes
    ----------
    matrix : pandas.DataFrame
        Design matrix, one row per map used (same order as ``rows``).
    rows : pandas.DataFrame
        The maps used, with their entities and participants columns.
    dropped : list of dict
        Maps left out, each ``{"subject", "path", "reason"}``.
    contrasts : list of Contrast
    rank : int
    dof : int
        Residual degrees of freedom, ``n_maps - rank``.
    """

    matrix: pd.DataFrame
    rows: pd.DataFrame
    dropped: list = field(default_factory=list)
    contrasts: list = field(default_factory=list)
    rank: int = 0
    dof: int = 0

    @property
    def repeated_subjects(self):
        """Whether a subject's maps enter as several rows without subject columns (run maps, or
        first-level contrasts named in X, as PyBIDS builds such designs): rows that are not independent."""
        subjects = self.rows["subject"]
        return bool(subjects.notna().all() and not subjects.is_unique
                    and not any(str(c).startswith(SUBJECT_PREFIX) for c in self.matrix.columns))


# --------------------------------------------------------------------------
# Model.X -> columns
# --------------------------------------------------------------------------

def _indicators(table, entity):
    values = table[entity].astype(object)
    names = sorted(v for v in values.dropna().unique())
    columns = {}
    for value in names:
        label = f"{SUBJECT_PREFIX}{value}" if entity == "subject" else str(value)
        columns[label] = (values == value).astype(float)
    return columns


def expand_x(table, x, entities, categorical=False, aliases=None):
    """Build the design columns named by ``Model.X``.

    Parameters
    ----------
    table : pandas.DataFrame
        Transformed cell table.
    x : list of str
        ``Model.X`` entries (``intercept`` for ``1``).
    entities : collection of str
        Entity column names; an X entry naming one expands to indicator
        columns (``sub-<label>`` for ``subject``, the value otherwise), and
        an entry naming a value of an entity (``IniFF`` of ``desc``, a
        first-level contrast name) is the indicator column of that value.
    categorical : bool
        Keep non-numeric columns (a ``Model.Formula`` encodes them); without
        it they are a DataError.
    aliases : dict, optional
        ``{value label: X entry}``: an X entry that names a first-level
        contrast as the model writes it (``trial_type.word``) is the
        indicator column of the value the maps are labelled with
        (``trialTypeWord``), named as X names it.

    Returns
    -------
    pandas.DataFrame
        Columns in X order (wildcards expand in table order). Values may be
        NaN where a variable is missing.
    """
    indicator_sources = {
        e: _indicators(table, e)
        for e in entities
        if e in table.columns and table[e].notna().any() and (e in x or e != "subject")
    }
    pool = list(public_columns(table))
    for columns in indicator_sources.values():
        pool.extend(c for c in columns if c not in pool)
    design = {}
    for entry in x:
        if entry == "intercept":
            design["intercept"] = pd.Series(1.0, index=table.index)
        elif entry in indicator_sources and entry in entities:
            design.update(indicator_sources[entry])
        elif any(ch in entry for ch in "*?["):
            matched = fnmatch.filter(pool, entry)
            if not matched:
                raise DataError(f"Model.X wildcard '{entry}' matches no variable; variables: {', '.join(pool)}")
            for name in matched:
                design[name] = _lookup(table, indicator_sources, name)
        elif entry not in pool and _aliased(indicator_sources, aliases, entry) is not None:
            design[entry] = _aliased(indicator_sources, aliases, entry)
        else:
            if entry not in pool:
                raise DataError(
                    f"Model.X names '{entry}', which is not a participants.tsv column, an entity or a transformation output; available: {', '.join(pool)}"
                )
            design[entry] = _lookup(table, indicator_sources, entry)
    frame = pd.DataFrame(design, index=table.index)
    for column in frame.columns:
        if is_numeric(frame[column]):
            frame[column] = frame[column].astype(float)
        elif not categorical:
            raise DataError(
                f"design column '{column}' holds non-numeric values ({', '.join(levels(frame[column])[:6])}); "
                "encode it with a Factor transformation or use it in a Model.Formula"
            )
    return frame


def apply_formula(frame, formula, node_name):
    """Evaluate ``Model.Formula`` over the ``Model.X`` columns, as PyBIDS does.

    Parameters
    ----------
    frame : pandas.DataFrame
        The ``Model.X`` columns (:func:`expand_x`), without missing values.
    formula : str
        Right-hand side of a Wilkinson formula (``1 + age + C(sex)``).
    node_name : str

    Returns
    -------
    pandas.DataFrame
        The design, one row per row of ``frame``, columns named by formulaic
        (``Intercept``, ``C(sex)[T.M]``, ...), as PyBIDS names them.

    Raises
    ------
    UsageError
        When formulaic cannot evaluate the formula on these columns.
    DataError
        When it gives values that are not finite (``np.log`` of a negative).
    """
    from formulaic import model_matrix
    from formulaic.errors import FormulaicError

    try:
        with np.errstate(invalid="ignore", divide="ignore"):  # values not finite are reported below
            design = model_matrix(formula, frame.reset_index(drop=True), na_action="ignore")
    except (FormulaicError, NameError, SyntaxError, ValueError, TypeError, KeyError) as err:
        raise UsageError(
            f"node '{node_name}': Model.Formula {formula!r} cannot be evaluated on the Model.X columns "
            f"({', '.join(map(str, frame.columns))}): {err}"
        ) from None
    design = pd.DataFrame(np.asarray(design, dtype=float), columns=[str(c) for c in design.columns])
    bad = [c for c in design.columns if not np.isfinite(design[c]).all()]
    if bad:
        raise DataError(f"node '{node_name}': Model.Formula {formula!r} gives values that are not finite in "
                        f"{', '.join(bad)}")
    design.index = frame.index
    return design


def _aliased(indicator_sources, aliases, entry):
    """The ``contrast`` indicator column whose value is an alias of ``entry`` (None when none is)."""
    columns = indicator_sources.get("contrast", {})
    for label, named in (aliases or {}).items():
        if named == entry and label in columns:
            return columns[label]
    return None


def _lookup(table, indicator_sources, name):
    if name in table.columns and name not in indicator_sources:
        return table[name]
    for columns in indicator_sources.values():
        if name in columns:
            return columns[name]
    return table[name]


# --------------------------------------------------------------------------
# Contrasts
# --------------------------------------------------------------------------

def _column_of(condition, columns):
    """The design column a contrast condition names, or None.

    ``1``/``intercept`` is also formulaic's ``Intercept`` column (a design
    built by ``Model.Formula``), which PyBIDS would not find.
    """
    if condition in columns:
        return condition
    if condition == "intercept" and "Intercept" in columns:
        return "Intercept"
    return None


def resolve_contrasts(node, columns):
    """Contrasts of a node as weight matrices over ``columns``.

    DummyContrasts give one contrast per listed column (all columns except
    subject indicators when no list is given), of the DummyContrasts Test
    (a ``t`` of a ``Model.Type 'meta'`` node is FEMA, as FitLins runs it);
    an explicit contrast named like a dummy one is a UsageError (one of them
    would be lost). A contrast naming a column that ``columns`` lack is
    dropped with a warning, as PyBIDS drops it; none left is a DataError.
    """
    resolved, absent = {}, []
    if node.dummy_contrasts is not None:
        listed = node.dummy_contrasts["contrasts"]
        names = listed if listed is not None else [c for c in columns if not c.startswith(SUBJECT_PREFIX)]
        for name in names:
            column = _column_of(name, columns)
            if column is None:
                absent.append((f"DummyContrasts '{name}'", [name]))
                continue
            weights = np.zeros((1, len(columns)))
            weights[0, columns.index(column)] = 1.0
            resolved[name] = Contrast(name, _test(node, node.dummy_contrasts["test"]), weights)
    for spec in node.contrasts:
        if spec.name in resolved:
            raise UsageError(f"node '{node.name}': contrast '{spec.name}' has the name of a DummyContrasts contrast; rename it")
        unknown = [c for c in spec.conditions if _column_of(c, columns) is None]
        if unknown:
            absent.append((f"contrast '{spec.name}'", unknown))
            continue
        weights = np.zeros((spec.weights.shape[0], len(columns)))
        for j, condition in enumerate(spec.conditions):
            weights[:, columns.index(_column_of(condition, columns))] += spec.weights[:, j]
        resolved[spec.name] = Contrast(spec.name, _test(node, spec.test), weights)
    dropped = "; ".join(f"{what} names {', '.join(names)}" for what, names in absent)
    if not resolved:
        raise DataError(f"node '{node.name}' has no contrast to compute" + (
            f": {dropped}, not design column(s); columns: {', '.join(columns)}" if absent
            else " (add Contrasts or DummyContrasts)"))
    if absent:
        LOGGER.warning("node '%s': contrasts dropped, as PyBIDS drops them, because they name columns the design "
                       "lacks: %s; columns: %s", node.name, dropped, ", ".join(columns))
    return list(resolved.values())


def _test(node, test):
    return "FEMA" if getattr(node, "model_type", "glm") == "meta" and test == "t" else test


def check_fixed_effects(matrix, contrast, node_name):
    """Raise UsageError unless a FEMA contrast weighs indicator columns of disjoint maps.

    A fixed-effects contrast combines, per column it weighs, the maps that
    column selects (the intercept: all), as FitLins does; so each weighed
    column must be 0/1 and no map may be in two of them.
    """
    weighed = [c for c, w in zip(matrix.columns, contrast.weights[0]) if w != 0]
    if not weighed:
        raise DataError(f"contrast '{contrast.name}' has only zero weights")
    values = matrix[weighed].to_numpy()
    if not np.isin(values, (0.0, 1.0)).all() or (values.sum(axis=1) > 1).any() or not values.any(axis=0).all():
        raise UsageError(
            f"node '{node_name}': FEMA contrast '{contrast.name}' weighs {', '.join(weighed)}; a fixed-effects "
            "combination needs each weighed column to select maps (0/1, each map in at most one column, e.g. the "
            "intercept or Factor levels); use Test 't' for covariates")


def check_estimable(matrix, contrast):
    """Raise DataError unless every row of the contrast is estimable.

    A contrast c is estimable when it lies in the row space of X:
    ``c X⁺ X = c``. F-contrast rows must also be linearly independent.
    """
    X = matrix.to_numpy()
    weights = contrast.weights
    if not np.any(weights):
        raise DataError(f"contrast '{contrast.name}' has only zero weights")
    projector = np.linalg.pinv(X) @ X
    residual = weights - weights @ projector
    scale = max(1.0, float(np.abs(weights).max()))
    if np.abs(residual).max() > 1e-8 * scale * max(X.shape):
        involved = [c for c, w in zip(matrix.columns, np.abs(weights).sum(axis=0)) if w > 0]
        raise DataError(
            f"contrast '{contrast.name}' is not estimable with this design (rank {np.linalg.matrix_rank(X)} of {X.shape[1]} columns); "
            f"its columns {', '.join(involved)} are confounded with others"
        )
    if contrast.test == "F" and np.linalg.matrix_rank(weights) < weights.shape[0]:
        raise DataError(
            f"F-contrast '{contrast.name}' has linearly dependent rows (rank {np.linalg.matrix_rank(weights)} of {weights.shape[0]}); remove the redundant rows"
        )


# --------------------------------------------------------------------------
# Whole cell
# --------------------------------------------------------------------------

def _missing_reason(row, columns, table):
    if MATCHED in table.columns and not row[MATCHED]:
        return "no row in participants.tsv"
    return "missing value (n/a) in " + ", ".join(f"'{c}'" for c in columns)


def build_design(table, node, entities, aliases=None):
    """Build the design of one cell.

    Maps whose model variables are missing (n/a in participants.tsv, or no
    participants.tsv row) are dropped, and transformations are then
    re-applied to the maps that remain, so that demeaning and scaling use
    only the maps in the model.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per map: ``path``, entity columns, participants columns.
    node : NodeSpec
    entities : collection of str
        Names of the entity columns.
    aliases : dict, optional
        File-name labels of the first-level contrasts X names (see
        :func:`expand_x`).

    Returns
    -------
    Design
    """
    rows = table
    dropped = []
    for _ in range(len(table) + 1):
        transformed = apply_transformations(rows, node.transformations, entities)
        matrix = expand_x(transformed, node.x, entities, categorical=node.formula is not None, aliases=aliases)
        bad = matrix.isna().any(axis=1)
        if not bad.any():
            break
        for index in matrix.index[bad]:
            missing = [c for c in matrix.columns if pd.isna(matrix.at[index, c])]
            dropped.append({
                "subject": rows.at[index, "subject"],
                "path": rows.at[index, "path"],
                "reason": _missing_reason(rows.loc[index], missing, rows),
            })
        rows = rows.loc[~bad]
        if rows.empty:
            break
    if rows.empty:
        raise DataError(
            f"no map is left in node '{node.name}' after dropping those with missing model variables ({dropped[0]['reason']} for sub-{dropped[0]['subject']} ...)"
        )
    for item in dropped:
        LOGGER.warning("dropped sub-%s (%s): %s", item["subject"], item["path"], item["reason"])
    if node.formula is not None:
        matrix = apply_formula(matrix, node.formula, node.name)
    matrix = matrix.reset_index(drop=True)
    rows = rows.reset_index(drop=True)
    X = matrix.to_numpy()
    rank = int(np.linalg.matrix_rank(X))
    dof = len(matrix) - rank
    contrasts = resolve_contrasts(node, list(matrix.columns))
    fitted = [c for c in contrasts if not c.fixed_effects]
    if dof <= 0 and fitted:
        raise DataError(
            f"node '{node.name}': {len(matrix)} maps and a design of rank {rank} leave {dof} residual degrees of freedom; "
            "at least one more map than the design rank is needed"
        )
    if rank < X.shape[1]:
        LOGGER.info("design of node '%s' is rank deficient (rank %d of %d columns); only estimable contrasts are allowed",
                    node.name, rank, X.shape[1])
    for contrast in fitted:
        check_estimable(matrix, contrast)
    for contrast in contrasts:
        if contrast.fixed_effects:
            check_fixed_effects(matrix, contrast, node.name)
    return Design(matrix=matrix, rows=rows, dropped=dropped, contrasts=contrasts, rank=rank, dof=dof)
