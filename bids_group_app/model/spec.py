"""BIDS Stats Models: read, validate and build the group-level model.

The app runs the ``Dataset``-level nodes of a BIDS Stats Models document
(https://bids-standard.github.io/stats-models/). Run/Subject/Session nodes
are first-level work that produced the inputs; they are not fit here, but
the graph (``Edges``, read by :mod:`bids_group_app.model.graph`) says which
node's maps enter each Dataset node. The short command-line options (``--two-sample``,
``--covariates``, ...) are turned into the same JSON document by
:func:`model_from_options`, so one code path runs both, and the document that
ran is written to OUTPUT_DIR.

Supported at the Dataset level
------------------------------
``Model.X``
    ``1`` (a column named ``intercept``), participants.tsv columns, columns
    created by transformations (``sex.M`` from ``Factor``), entity names
    (``subject``, ``desc``, ``contrast``, ``session`` ...) which expand to one
    indicator column per value (``sub-<label>`` for subjects, the value
    itself otherwise), and ``fnmatch`` wildcards (``sub-*``).
``GroupBy``
    Entities and participants.tsv columns; one model is fit per cell.
``Transformations``
    ``pybids-transforms-v1``: those of :data:`~bids_group_app.model.transformations.OPTIONS`.
``Contrasts`` / ``DummyContrasts``
    t (one row of weights) and F (list of rows) tests.
``Filter``
    On the node, or on the edge that enters it: ``{variable: value(s)}``
    over entities or participants.tsv columns, selecting a subgroup.
``Input``
    Entity filters applied to the indexed maps (like ``--filter``).
"""

from __future__ import annotations

import json
import re
from fractions import Fraction
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bids_group_app.errors import DataError, MissingInputError, UsageError
from bids_group_app.model.graph import parse_graph
from bids_group_app.model.transformations import OPTIONS as TRANSFORM_OPTIONS, check_instruction

BIDS_MODEL_VERSION = "1.0.0"
SUPPORTED_TRANSFORMS = tuple(TRANSFORM_OPTIONS)
SUPPORTED_TESTS = ("t", "F")


@dataclass
class ContrastSpec:
    """A contrast over named design columns.

    Parameters
    ----------
    name : str
        Contrast name as given in the model.
    conditions : list of str
        Design columns the weights refer to.
    weights : numpy.ndarray of shape (n_rows, n_conditions)
        One row for a t-test, one or more rows for an F-test.
    test : {'t', 'F'}
    """

    name: str
    conditions: list
    weights: np.ndarray
    test: str


@dataclass
class NodeSpec:
    """One Dataset-level node of a BIDS Stats Model."""

    name: str
    x: list
    group_by: list = field(default_factory=list)
    transformations: list = field(default_factory=list)
    contrasts: list = field(default_factory=list)
    dummy_contrasts: dict | None = None
    filters: dict = field(default_factory=dict)
    software: dict = field(default_factory=dict)


@dataclass
class ModelSpec:
    """A validated model: the document plus the Dataset-level nodes to run."""

    name: str
    document: dict
    input_filters: dict
    nodes: list
    graph: object = None  # bids_group_app.model.graph.ModelGraph: edges and Run/Session/Subject nodes


def _require(cond, message):
    if not cond:
        raise UsageError(message)


def _as_list(value):
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _filter_dict(raw, where):
    """Normalise a Filter/Input mapping to ``{key: [str values] or [None]}``."""
    _require(isinstance(raw, dict), f"{where} must be an object mapping variables to values, got {raw!r}")
    out = {}
    for key, value in raw.items():
        values = _as_list(value) if value is not None else [None]
        out[str(key)] = [None if v is None else str(v) for v in values]
    return out


def _parse_weights(weights, n_conditions, where):
    try:
        arr = np.atleast_2d(np.asarray(weights, dtype=float))
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"{where}: Weights must be numbers or a list of rows of numbers, got {weights!r}") from None
    _require(np.isfinite(arr).all(), f"{where}: Weights must be finite numbers (no NaN or infinity), got {weights!r}")
    _require(
        arr.ndim == 2 and arr.shape[1] == n_conditions,
        f"{where}: Weights have {arr.shape[-1]} columns but ConditionList has {n_conditions} entries",
    )
    return arr


def parse_contrast(raw, where):
    """Validate one entry of ``Contrasts`` and return a :class:`ContrastSpec`."""
    _require(isinstance(raw, dict), f"{where} must be an object, got {raw!r}")
    missing = [k for k in ("Name", "ConditionList", "Weights") if k not in raw]
    _require(not missing, f"{where} lacks {', '.join(missing)} (a contrast needs Name, ConditionList, Weights, Test)")
    conditions = ["intercept" if c == 1 else str(c) for c in _as_list(raw["ConditionList"])]
    weights = _parse_weights(raw["Weights"], len(conditions), f"{where} '{raw['Name']}'")
    test = raw.get("Test") or ("t" if weights.shape[0] == 1 else "F")
    _require(test in SUPPORTED_TESTS, f"{where} '{raw['Name']}': Test must be one of {', '.join(SUPPORTED_TESTS)}, got {test!r}")
    _require(test == "F" or weights.shape[0] == 1, f"{where} '{raw['Name']}': a t-test takes one row of weights; use Test 'F' for {weights.shape[0]} rows")
    return ContrastSpec(str(raw["Name"]), conditions, weights, test)


def _parse_transformations(raw, where):
    if raw is None:
        return []
    if isinstance(raw, dict):
        transformer = raw.get("Transformer", "pybids-transforms-v1")
        _require(
            isinstance(transformer, str) and transformer.startswith("pybids-transforms"),
            f"{where}.Transformer {transformer!r} is not supported; use 'pybids-transforms-v1'",
        )
        raw = raw.get("Instructions", [])
    _require(isinstance(raw, list), f"{where}.Instructions must be a list")
    for i, step in enumerate(raw):
        _require(isinstance(step, dict) and "Name" in step, f"{where}.Instructions[{i}] needs a Name")
        check_instruction(step, f"{where}.Instructions[{i}]")  # supported name, options and Input
    return raw


def _require_unique_contrasts(contrasts, where):
    """Refuse two Contrasts of one name (one would silently replace the other)."""
    names = [c.name for c in contrasts]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    _require(not duplicated, f"{where}: contrast name(s) {', '.join(duplicated)} used more than once; give each contrast its own Name")


def _parse_node(raw, index, edge_filters):
    where = f"Nodes[{index}]"
    name = str(raw.get("Name", f"node{index}"))
    model = raw.get("Model")
    _require(isinstance(model, dict) and "X" in model, f"{where} '{name}' needs Model.X (a list of design columns)")
    _require(str(model.get("Type", "glm")).lower() == "glm", f"{where} '{name}': only Model.Type 'glm' is supported")
    x = _as_list(model["X"])
    _require(x, f"{where} '{name}': Model.X is empty")
    x = ["intercept" if v in (1, "1") else str(v) for v in x]
    contrasts_raw = raw.get("Contrasts") or []
    _require(isinstance(contrasts_raw, list), f"{where} '{name}': Contrasts must be a list of contrast objects")
    contrasts = [parse_contrast(c, f"{where} '{name}' Contrasts[{i}]") for i, c in enumerate(contrasts_raw)]
    _require_unique_contrasts(contrasts, f"{where} '{name}'")
    dummy = raw.get("DummyContrasts")
    if dummy is True:
        dummy = {"Test": "t"}
    elif dummy is False:
        dummy = None
    if dummy is not None:
        _require(isinstance(dummy, dict), f"{where} '{name}': DummyContrasts must be an object or true")
        dummy = {
            "contrasts": None if "Contrasts" not in dummy else ["intercept" if c in (1, "1") else str(c) for c in _as_list(dummy["Contrasts"])],
            "test": dummy.get("Test", "t"),
        }
        _require(dummy["test"] == "t", f"{where} '{name}': DummyContrasts Test must be 't'")
    filters = dict(edge_filters)
    if raw.get("Filter"):
        filters.update(_filter_dict(raw["Filter"], f"{where}.Filter"))
    software = model.get("Software") or {}
    _require(isinstance(software, dict), f"{where} '{name}': Model.Software must be an object keyed by software name")
    return NodeSpec(
        name=name,
        software=software,
        x=x,
        group_by=[str(g) for g in _as_list(raw.get("GroupBy"))],
        transformations=_parse_transformations(raw.get("Transformations"), f"{where} '{name}' Transformations"),
        contrasts=contrasts,
        dummy_contrasts=dummy,
        filters=filters,
    )


def parse_model(document):
    """Validate a BIDS Stats Models document and return a :class:`ModelSpec`.

    Raises
    ------
    UsageError
        When the document is not a usable BIDS Stats Model, with the reason.
    """
    _require(isinstance(document, dict), "the model must be a JSON object with Name, Nodes (and BIDSModelVersion)")
    nodes_raw = document.get("Nodes")
    _require(isinstance(nodes_raw, list) and nodes_raw, "the model has no Nodes list")
    edge_filters = {}
    _require(isinstance(document.get("Edges") or [], list), "the model's Edges must be a list of edge objects")
    for edge in document.get("Edges") or []:
        if isinstance(edge, dict) and edge.get("Filter"):
            edge_filters[str(edge.get("Destination"))] = _filter_dict(edge["Filter"], "Edges[].Filter")
    nodes = []
    for i, node in enumerate(nodes_raw):
        _require(isinstance(node, dict), f"Nodes[{i}] must be an object")
        level = str(node.get("Level", "")).lower()
        _require(level in ("run", "session", "subject", "dataset"), f"Nodes[{i}].Level must be Run, Session, Subject or Dataset, got {node.get('Level')!r}")
        if level == "dataset":
            nodes.append(_parse_node(node, i, edge_filters.get(str(node.get("Name")), {})))
    levels = sorted({str(n.get("Level")) for n in nodes_raw if isinstance(n, dict)})
    _require(nodes, f"the model has no Dataset-level node (levels found: {', '.join(levels)}); this app runs Dataset nodes")
    names = [n.name for n in nodes]
    _require(len(set(names)) == len(names), f"node names must be unique, got {names}")
    input_filters = _filter_dict(document.get("Input") or {}, "Input")
    return ModelSpec(str(document.get("Name", "model")), document, input_filters, nodes, parse_graph(document))


def load_model(path):
    """Read and validate a BIDS Stats Models JSON file.

    A missing file is a MissingInputError (66); a file that is not valid
    JSON or not a usable model is a UsageError (64).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"model file {path} does not exist (give a BIDS Stats Models JSON file to --model)")
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"model file {path} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"model file {path} cannot be read: {err}") from None
    except RecursionError:
        raise UsageError(f"model file {path} is nested too deeply to be a BIDS Stats Model") from None
    return parse_model(document)


# --------------------------------------------------------------------------
# Short command-line options -> BIDS Stats Models document
# --------------------------------------------------------------------------

_SIGN = re.compile(r"\s*([+-]?)\s*")
_COEF = re.compile(r"(\d+(?:\.\d*)?(?:/\d+)?|\.\d+)\s*\*?\s*")
_NAME = re.compile(r"[A-Za-z_][\w.\-]*(?<![+-])")


def _match_name(expression, pos, columns):
    """The longest design column starting at ``pos``, else a generic name."""
    for column in sorted(columns or (), key=len, reverse=True):
        end = pos + len(column)
        if expression.startswith(column, pos) and (end == len(expression) or not re.match(r"[\w.]", expression[end])):
            return column, end
    match = _NAME.match(expression, pos)
    return (match.group(0), match.end()) if match else (None, pos)


def parse_expression(expression, columns=None):
    """Parse a linear contrast expression into ``{column: weight}``.

    Column names may contain letters, digits, ``_``, ``.`` and ``-``
    (``sex.M``, ``sub-01``); terms are joined by ``+``/``-`` and may carry a
    coefficient, a number or a fraction: ``0.5*IniFF + 1/2 ImmFF - SF``.
    With ``columns`` given, names are matched against them first (longest
    first), so ``A-B`` reads as ``A`` minus ``B`` when both are columns.
    Returns None when ``expression`` is not of that form.
    """
    weights, pos = {}, 0
    expression = expression.strip()
    if not expression:
        return None
    while pos < len(expression):
        sign = _SIGN.match(expression, pos)
        if pos > 0 and not sign.group(1):
            return None
        pos = sign.end()
        coef = _COEF.match(expression, pos)
        value = float(Fraction(coef.group(1))) if coef else 1.0
        pos = coef.end() if coef else pos
        name, end = _match_name(expression, pos, columns)
        if name is None:
            return None
        weights[name] = weights.get(name, 0.0) + (-value if sign.group(1) == "-" else value)
        pos = end
        while pos < len(expression) and expression[pos].isspace():
            pos += 1
    return weights


def contrast_from_option(text):
    """Turn ``--contrast NAME=SPEC`` into a BIDS Stats Models contrast dict.

    SPEC is ``[t:|F:]ROW[;ROW...]``; a ROW is either comma-separated weights
    (numbers or fractions such as ``1/6``; zero-padded to the number of design columns, in X order) or a linear
    expression of design column names. One row gives a t-test unless
    ``F:`` is given; several rows give an F-test.
    """
    name, sep, spec = text.partition("=")
    name = name.strip()
    if not sep or not name or not spec.strip():
        raise UsageError(f"--contrast {text!r}: expected NAME=SPEC, e.g. ageEffect=age or FacesScrambled=F:1,-1,0;0,1,-1")
    test = None
    head, colon, rest = spec.partition(":")
    if colon and head.strip() in SUPPORTED_TESTS:
        test, spec = head.strip(), rest
    rows = [r for r in spec.split(";") if r.strip()]
    parsed = []
    for row in rows:
        try:
            parsed.append([float(Fraction(w.strip())) for w in row.split(",")])
            continue
        except (ValueError, ZeroDivisionError):
            pass
        except OverflowError:
            raise UsageError(f"--contrast {name}: a weight in {row.strip()!r} is too large to be a finite number") from None
        try:
            expression = parse_expression(row)
        except OverflowError:
            raise UsageError(f"--contrast {name}: a coefficient in {row.strip()!r} is too large to be a finite number") from None
        if expression is None:
            raise UsageError(
                f"--contrast {name}: {row.strip()!r} is neither comma-separated weights nor an expression of design columns like 'patient-control'"
            )
        parsed.append(row.strip())
    if test == "t" and len(parsed) > 1:
        raise UsageError(f"--contrast {name}: a t-test takes one row; {len(parsed)} rows were given (use F:)")
    return {"Name": name, "Rows": parsed, "Test": test or ("t" if len(parsed) == 1 else "F")}


def resolve_option_contrast(contrast, x_columns):
    """Materialise a :func:`contrast_from_option` dict against design columns.

    Returns a BIDS Stats Models contrast (ConditionList/Weights over columns).
    """
    rows = []
    for row in contrast["Rows"]:
        if isinstance(row, str):
            row = parse_expression(row, x_columns)
            unknown = [c for c in row if c not in x_columns]
            if unknown:
                raise UsageError(
                    f"--contrast {contrast['Name']}: unknown design column(s) {', '.join(unknown)}; columns are {', '.join(x_columns)}"
                )
            rows.append([row.get(c, 0.0) for c in x_columns])
        else:
            if len(row) > len(x_columns):
                raise UsageError(
                    f"--contrast {contrast['Name']}: {len(row)} weights for {len(x_columns)} design columns ({', '.join(x_columns)})"
                )
            rows.append(list(row) + [0.0] * (len(x_columns) - len(row)))
    weights = rows[0] if contrast["Test"] == "t" else rows
    return {"Name": contrast["Name"], "ConditionList": list(x_columns), "Weights": weights, "Test": contrast["Test"]}


AUTO_GROUP_ENTITIES = ("task", "contrast", "space", "acquisition", "desc", "label", "stat", "node", "suffix")


ALWAYS_NAMED_ENTITIES = ("task", "contrast")


def auto_group_by(table, exclude=()):
    """Default GroupBy: one model per value of the selection entities.

    The entities whose value varies in the selection, plus ``task`` and the
    first-level ``contrast`` whenever the maps have them, so that output
    names always say which first-level maps were analysed. Sessions and
    runs are never grouped automatically: several maps of one subject that
    differ only by run are reported as a collision instead.
    """
    return [
        e for e in AUTO_GROUP_ENTITIES
        if e in table.columns and e not in exclude and table[e].notna().all()
        and (table[e].nunique() > 1 or e in ALWAYS_NAMED_ENTITIES)
    ]


def _split_levels(text, option):
    entity, sep, values = text.partition("=")
    entity = entity.strip()
    if not entity:
        raise UsageError(f"{option} {text!r}: expected ENTITY=LEVEL,LEVEL")
    return entity, [v.strip() for v in values.split(",") if v.strip()] if sep else []


def _entity_levels(table, entity, option):
    if entity not in table.columns or table[entity].dropna().empty:
        present = [c for c in table.columns if c not in ("path", "dataset") and table[c].notna().any()]
        raise UsageError(f"{option}: entity '{entity}' is not in the selected maps; entities: {', '.join(present)}")
    return sorted(table[entity].dropna().astype(str).unique())


def model_from_options(options, table, participants):
    """Build a BIDS Stats Models document from the short CLI options.

    Parameters
    ----------
    options : bids_group_app.config.ModelConfig
        The short design options (``two_sample``, ``paired``, ``rm_anova``, ``covariates``,
        ``demean``, ``contrast``, ``group_by``).
    table : pandas.DataFrame
        Indexed maps after the entity filters (to find entity levels).
    participants : pandas.DataFrame
        participants.tsv, indexed by label.

    Returns
    -------
    dict
        The BIDS Stats Models document. ``GroupBy`` is left to the caller
        when ``--group-by`` is not given (see :func:`auto_group_by`).
    """
    from bids_group_app.inputs.participants import is_numeric, levels

    designs = [o for o in ("two_sample", "paired", "rm_anova") if getattr(options, o)]
    if len(designs) > 1:
        raise UsageError(f"choose one design: --{designs[0].replace('_', '-')} and --{designs[1].replace('_', '-')} were both given")
    kind = designs[0] if designs else ("regression" if options.covariates else "one_sample")
    if kind in ("paired", "rm_anova") and options.covariates:
        raise UsageError(f"--covariates cannot be combined with --{kind.replace('_', '-')}: subject covariates are absorbed by its subject columns")
    subjects = sorted(table["subject"].unique())
    x, named, transforms, contrasts, inputs = [], [], [], [], {}

    def participant_column(column, option):
        if column not in participants.columns:
            raise DataError(f"{option}: '{column}' is not a participants.tsv column; columns: {', '.join(participants.columns) or '(no participants.tsv)'}")
        return participants.loc[participants.index.intersection(subjects), column]

    if kind == "two_sample":
        column = options.two_sample
        found = levels(participant_column(column, "--two-sample"))
        if len(found) != 2:
            raise DataError(f"--two-sample {column}: needs exactly 2 groups among the selected subjects, found {len(found)}: {', '.join(found)}")
        transforms.append({"Name": "Factor", "Input": [column]})
        named = [f"{column}.{lv}" for lv in found]
        contrasts.append({"Name": f"{found[1]}-{found[0]}", "ConditionList": list(named), "Weights": [-1, 1], "Test": "t"})
    elif kind == "paired":
        entity, pair = _split_levels(options.paired, "--paired")
        present = _entity_levels(table, entity, "--paired")
        if len(pair) != 2 or any(p not in present for p in pair):
            raise UsageError(f"--paired {options.paired}: give two levels of '{entity}' (levels present: {', '.join(present)})")
        inputs[entity] = pair
        named = list(pair)
        contrasts.append({"Name": f"{pair[0]}-{pair[1]}", "ConditionList": list(pair), "Weights": [1, -1], "Test": "t"})
    elif kind == "rm_anova":
        entity, order = _split_levels(options.rm_anova, "--rm-anova")
        present = _entity_levels(table, entity, "--rm-anova")
        order = order or present
        unknown = [lv for lv in order if lv not in present]
        if unknown or len(order) < 2:
            raise UsageError(f"--rm-anova {options.rm_anova}: levels {', '.join(unknown) or order} not usable; levels present: {', '.join(present)}")
        inputs[entity] = order
        named = list(order)
        rows = [[1.0 if j == i else -1.0 if j == i + 1 else 0.0 for j in range(len(order))] for i in range(len(order) - 1)]
        contrasts.append({"Name": f"{entity}Effect", "ConditionList": list(order), "Weights": rows, "Test": "F"})
    else:
        named = ["intercept"]

    for column in options.covariates:
        values = participant_column(column, "--covariates")
        if is_numeric(values):
            if options.demean:
                transforms.append({"Name": "Demean", "Input": [column]})
            named.append(column)
        else:
            found = levels(values)
            if len(found) < 2:
                raise DataError(f"--covariates {column}: a categorical covariate needs 2 or more levels, found {', '.join(found) or 'none'}")
            transforms.append({"Name": "Factor", "Input": [column], "Constraint": "drop_one"})
            named.extend(f"{column}.{lv}" for lv in found[1:])

    x = list(named) + (["subject"] if kind in ("paired", "rm_anova") else [])
    node = {
        "Level": "Dataset",
        "Name": {"one_sample": "oneSample", "regression": "regression", "two_sample": "twoSample",
                 "paired": "paired", "rm_anova": "rmAnova"}[kind],
        "GroupBy": list(options.group_by or []),
        "Model": {"Type": "glm", "X": [1 if c == "intercept" else c for c in x]},
    }
    if transforms:
        node["Transformations"] = {"Transformer": "pybids-transforms-v1", "Instructions": transforms}
    if options.contrast:
        node["Contrasts"] = [resolve_option_contrast(contrast_from_option(c), named) for c in options.contrast]
    else:
        node["Contrasts"] = contrasts
        if kind in ("one_sample", "regression") or options.covariates:
            dummy = [c for c in named if c not in {n for con in contrasts for n in con["ConditionList"]}]
            node["DummyContrasts"] = {"Contrasts": [1 if c == "intercept" else c for c in dummy], "Test": "t"}
    document = {
        "Name": node["Name"],
        "BIDSModelVersion": BIDS_MODEL_VERSION,
        "Description": "Generated by bids_group_app from command-line options",
        "Input": inputs,
        "Nodes": [node],
    }
    return document
