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
Every key of the document is checked against the BIDS Stats Models 1.0
schema (bsmschema): a key not in the schema, and a key of the schema that a
Dataset node here does not implement (``Model.HRF``, ``Model.Options.*``,
the draft ``Model.VarianceComponents``/``ErrorDistribution``), is a
UsageError naming its path (``Nodes[1].Model.VarianceComponents``); for
Run/Session/Subject nodes only the key names are checked. Legacy (pre-1.0)
documents are upgraded by :func:`upgrade_legacy` with a warning.

``Model.X``
    ``1`` (a column named ``intercept``), participants.tsv columns, columns
    created by transformations (``sex.M`` from ``Factor``), entity names
    (``subject``, ``desc``, ``contrast``, ``session`` ...) which expand to one
    indicator column per value (``sub-<label>`` for subjects, the value
    itself otherwise), and ``fnmatch`` wildcards (``sub-*``).
``Model.Formula``
    A Wilkinson formula over the ``Model.X`` columns, evaluated by formulaic
    as PyBIDS does (columns named by formulaic: ``Intercept``, ``age``,
    ``C(sex)[T.M]``; names of interactions differ between formulaic 0.x and
    1.x). With a Formula, ``Model.X`` may hold categorical columns.
``GroupBy``
    Entities and participants.tsv columns; one model is fit per cell.
``Transformations``
    ``pybids-transforms-v1``: those of :data:`~bids_group_app.model.transformations.OPTIONS`.
``Contrasts`` / ``DummyContrasts``
    t (one row of weights) and F (list of rows) tests; weights may be
    fractions written as strings (``"1/3"``). ``FEMA`` (and every contrast
    of a ``Model.Type 'meta'`` node) is a fixed-effects combination of the
    input effect and variance maps, as FitLins computes it; ``pass`` writes
    the contrast's effect and variance without a test. Contrasts naming a column that
    the design of a cell lacks are dropped with a warning, as PyBIDS does.
``Filter``
    On the node (an extension of this app), or on the edge that enters it: ``{variable: value(s)}``
    over entities or participants.tsv columns, selecting a subgroup.
``Input``
    Entity filters applied to the indexed maps (like ``--filter``).
"""

from __future__ import annotations

import copy
import json
import logging
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
#: Tests a contrast may name: the spec's ``t``, ``F``, ``pass``, and FitLins' fixed-effects ``FEMA``.
KNOWN_TESTS = ("t", "F", "pass", "FEMA")
MODEL_TYPES = ("glm", "meta")
LOGGER = logging.getLogger(__name__)

#: The keys of each object of the BIDS Stats Models 1.0 schema (bsmschema), by object.
#: ``Filter`` on a node is an extension of this app (the spec puts it on edges).
SCHEMA_KEYS = {
    "model": ("Name", "BIDSModelVersion", "Description", "Input", "Nodes", "Edges"),
    "node": ("Level", "Name", "GroupBy", "Transformations", "Model", "Contrasts", "DummyContrasts",
             "Description", "Filter"),
    "edge": ("Source", "Destination", "Filter", "Description"),
    "transformations": ("Transformer", "Instructions", "Description"),
    "model section": ("Type", "X", "Formula", "HRF", "Options", "Software", "Description"),
    "HRF": ("Variables", "Model", "Parameters", "Description"),
    "Options": ("HighPassFilterCutoffHz", "LowPassFilterCutoffHz", "ReplaceVariables", "Mask", "Aggregate",
                "Description"),
    "contrast": ("Name", "ConditionList", "Weights", "Test", "Description"),
    "DummyContrasts": ("Contrasts", "Test", "Description"),
}
#: Keys of draft versions of the spec (read by PyBIDS), known but not run by this app.
DRAFT_KEYS = {"model section": ("VarianceComponents", "ErrorDistribution")}


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
    test : {'t', 'F', 'pass', 'FEMA'}
        As the model asks (see :func:`_require_executable`; a ``t`` of a
        ``meta`` node is computed as ``FEMA``).
    """

    name: str
    conditions: list
    weights: np.ndarray
    test: str


@dataclass
class NodeSpec:
    """One Dataset-level node of a BIDS Stats Model.

    ``formula`` is ``Model.Formula`` (None without one); ``model_type`` is
    ``Model.Type`` in lower case; ``dummy_contrasts`` is None or
    ``{"contrasts": list or None, "test": str}``.
    """

    name: str
    x: list
    formula: str | None = None
    model_type: str = "glm"
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


def _weight_value(value):
    """A weight as a float; strings may be fractions (``"1/3"``), as the spec allows."""
    if isinstance(value, list):
        return [_weight_value(v) for v in value]
    if isinstance(value, str):
        return float(Fraction(value.strip()))
    if isinstance(value, bool):
        raise TypeError(value)
    return value


def _parse_weights(weights, n_conditions, where):
    try:
        arr = np.atleast_2d(np.asarray(_weight_value(weights), dtype=float))
    except (TypeError, ValueError, OverflowError, ZeroDivisionError):
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
    _check_keys(raw, "contrast", where)
    missing = [k for k in ("Name", "ConditionList", "Weights") if k not in raw]
    _require(not missing, f"{where} lacks {', '.join(missing)} (a contrast needs Name, ConditionList, Weights, Test)")
    conditions = ["intercept" if c == 1 else str(c) for c in _as_list(raw["ConditionList"])]
    weights = _parse_weights(raw["Weights"], len(conditions), f"{where} '{raw['Name']}'")
    test = raw.get("Test") or ("t" if weights.shape[0] == 1 else "F")
    _require(test in KNOWN_TESTS, f"{where} '{raw['Name']}': Test must be one of {', '.join(KNOWN_TESTS)}, got {test!r}")
    _require(test == "F" or weights.shape[0] == 1, f"{where} '{raw['Name']}': {'a t-test' if test == 't' else f'Test {test!r}'} takes one row of weights; use Test 'F' for {weights.shape[0]} rows")
    return ContrastSpec(str(raw["Name"]), conditions, weights, test)


def _check_keys(raw, kind, where, *, draft_ok=False):
    """Refuse a key of ``raw`` that is not in the schema of ``kind`` (UsageError naming its path).

    Keys of draft versions of the spec (:data:`DRAFT_KEYS`) are refused as not
    supported unless ``draft_ok`` (first-level nodes, which this app skips).
    """
    allowed = SCHEMA_KEYS[kind]
    for key in raw:
        if key in allowed:
            continue
        path = f"{where}.{key}" if where else key
        if key in DRAFT_KEYS.get(kind, ()):
            _require(draft_ok, f"{path} is not supported by this app (a key of draft BIDS Stats Models, "
                               "not of version 1.0); remove it")
            continue
        near = [k for k in allowed if k.lower() == str(key).lower().replace("_", "")]
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise UsageError(f"{path}: '{key}' is not a BIDS Stats Models key{hint}; "
                         f"keys allowed here: {', '.join(allowed)}")


def _parse_transformations(raw, where):
    if raw is None:
        return []
    if isinstance(raw, dict):
        _check_keys(raw, "transformations", where)
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


# --------------------------------------------------------------------------
# Legacy (pre-1.0) documents
# --------------------------------------------------------------------------

def _rename(raw, old, new, where, notes):
    """Move ``raw[old]`` to ``raw[new]`` (a legacy key), refusing both at once."""
    if old in raw:
        _require(new not in raw, f"{where} has both {new} and the legacy {old}; keep {new}")
        raw[new] = raw.pop(old)
        notes.append(f"{where}.{old} is now {new}")


#: Keys of pre-1.0 documents that :func:`upgrade_legacy` renames.
LEGACY_KEYS = {"model": ("Steps",), "node": ("AutoContrasts",), "contrast": ("Type",),
               "DummyContrasts": ("Type", "Conditions", "ConditionList")}


def _snake(key):
    """PyBIDS's reading of a key (``bids.utils.convert_JSON``): snake_case, so ``Weights``, ``weights``
    and ``ConditionList``, ``Condition_list`` are the same key to it."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", str(key)).lower()


def _normalise_keys(raw, kind, where, notes):
    """Rename in place the keys of ``raw`` that PyBIDS reads as a spec key of ``kind`` but are spelled
    otherwise (``weights``, ``Condition_list``), recording each in ``notes``."""
    if not isinstance(raw, dict):
        return
    canonical = {_snake(k): k for k in (*SCHEMA_KEYS[kind], *LEGACY_KEYS.get(kind, ()))}
    for key in list(raw):
        name = canonical.get(_snake(key))
        if name is not None and name != key:
            _require(name not in raw, f"{where} has both '{key}' and '{name}'; keep '{name}'")
            raw[name] = raw.pop(key)
            notes.append(f"{where}.{key} is read as {name}, as PyBIDS reads it")


def _upgrade_step(node, where, notes):
    """A pre-1.0 ``Steps`` entry without ``Model``: PyBIDS then fit the listed
    input contrasts one by one (``DummyContrasts.Conditions``); in 1.0 terms, an
    intercept model per first-level contrast (a fixed-effects one when the
    test was FEMA), restricted to those contrasts."""
    if "Model" in node:
        return
    dummy = node.get("DummyContrasts") if isinstance(node.get("DummyContrasts"), dict) else {}
    test = dummy.get("Test", dummy.get("Type", "t"))
    level = str(node.get("Level", "")).lower()
    node["Model"] = {"Type": "meta" if test == "FEMA" else "glm", "X": [1]}
    node.setdefault("GroupBy", ["subject", "contrast"] if level in ("subject", "session") else
                    (["run", "subject", "contrast"] if level == "run" else ["contrast"]))
    conditions = dummy.get("Conditions") or dummy.get("Contrasts")
    if conditions and level != "run":
        node.setdefault("Filter", {"contrast": list(conditions)})
    node["DummyContrasts"] = {"Test": test}
    notes.append(f"{where} has no Model: an intercept model per first-level contrast"
                 + (f" ({', '.join(map(str, conditions))})" if conditions else ""))


def _upgrade_node(node, where, notes, legacy=False):
    """Upgrade one node in place, recording each change in ``notes``; ``legacy``: a pre-1.0 step."""
    _normalise_keys(node, "node", where, notes)
    if legacy:
        if "Name" not in node and node.get("Level"):  # PyBIDS named an unnamed step by its level
            node["Name"] = str(node["Level"])
            notes.append(f"{where} is named {node['Name']!r} after its level")
        _upgrade_step(node, where, notes)
    _normalise_keys(node.get("Model"), "model section", f"{where}.Model", notes)
    for i, contrast in enumerate(node.get("Contrasts") or [] if isinstance(node.get("Contrasts"), list) else []):
        _normalise_keys(contrast, "contrast", f"{where}.Contrasts[{i}]", notes)
    _normalise_keys(node.get("DummyContrasts"), "DummyContrasts", f"{where}.DummyContrasts", notes)
    if isinstance(node.get("Transformations"), list):
        node["Transformations"] = {"Transformer": "pybids-transforms-v1", "Instructions": node["Transformations"]}
        notes.append(f"{where}.Transformations is now an object with Transformer and Instructions")
    if "AutoContrasts" in node:
        _require("DummyContrasts" not in node, f"{where} has both AutoContrasts and DummyContrasts; keep DummyContrasts")
        auto = node.pop("AutoContrasts")
        node["DummyContrasts"] = {"Test": "t"} if auto is True else (
            None if auto is False else {"Contrasts": auto, "Test": "t"})
        notes.append(f"{where}.AutoContrasts is now DummyContrasts")
    dummy = node.get("DummyContrasts")
    if isinstance(dummy, dict):
        for old in ("Conditions", "ConditionList"):
            _rename(dummy, old, "Contrasts", f"{where}.DummyContrasts", notes)
        _rename(dummy, "Type", "Test", f"{where}.DummyContrasts", notes)
    for i, contrast in enumerate(node.get("Contrasts") or [] if isinstance(node.get("Contrasts"), list) else []):
        if isinstance(contrast, dict):
            _rename(contrast, "Type", "Test", f"{where}.Contrasts[{i}]", notes)
            if contrast.get("Test") == "T":
                contrast["Test"] = "t"
                notes.append(f"{where}.Contrasts[{i}].Test 'T' is now 't'")


def upgrade_legacy(document):
    """Upgrade a legacy (pre-1.0) BIDS Stats Models document.

    PyBIDS has no upgrade function; it converts (with a warning) contrast and
    DummyContrasts ``Type`` to ``Test``, DummyContrasts ``Conditions`` to
    ``Contrasts`` and a list of Transformations to an object. This does the
    same, and also ``Steps`` to ``Nodes`` and ``AutoContrasts`` to
    ``DummyContrasts``, logging one warning that lists the changes.

    Returns
    -------
    dict
        A 1.0 document (a copy; ``document`` is not changed).

    Raises
    ------
    UsageError
        When a legacy key and its 1.0 replacement are both present.
    """
    document = copy.deepcopy(document)
    notes = []
    _normalise_keys(document, "model", "the model", notes)
    legacy = "Steps" in document
    _rename(document, "Steps", "Nodes", "the model", notes)
    for i, edge in enumerate(document.get("Edges") or [] if isinstance(document.get("Edges"), list) else []):
        _normalise_keys(edge, "edge", f"Edges[{i}]", notes)
    for i, node in enumerate(document.get("Nodes") or [] if isinstance(document.get("Nodes"), list) else []):
        if isinstance(node, dict):
            _upgrade_node(node, f"Nodes[{i}]", notes, legacy)
    if notes:
        LOGGER.warning("the model is read as PyBIDS reads it (a legacy, pre-1.0 BIDS Stats Models document, or keys spelled otherwise): %s; "
                       "the upgraded document is the one saved in OUTPUT_DIR", "; ".join(notes))
    return document


# --------------------------------------------------------------------------
# Nodes
# --------------------------------------------------------------------------

def _has_intercept_term(formula):
    """Whether ``formula`` has a top-level ``1``, ``0`` or ``-1`` term."""
    depth, flat = 0, []
    for ch in formula:
        depth += ch == "("
        flat.append(ch if depth == 0 else " ")
        depth -= ch == ")"
    return any(term.strip() in ("0", "1") for term in re.split(r"[+-]", "".join(flat)))


def _parse_formula(formula, where):
    """Check ``Model.Formula``: a right-hand side that formulaic parses, with an explicit 1 or 0 term."""
    if formula is None:
        return None
    from formulaic import Formula
    from formulaic.errors import FormulaicError

    _require(isinstance(formula, str), f"{where}.Model.Formula must be a string, got {formula!r}")
    if formula.lstrip().startswith("~"):  # '~ 0 + a' (no left-hand side), as published models write it
        formula = formula.lstrip()[1:].strip()
    _require("~" not in formula, f"{where}.Model.Formula {formula!r}: give only the right-hand side "
                                 "(the design, as in '1 + age'), without a left-hand side before '~'")
    _require(_has_intercept_term(formula), f"{where}.Model.Formula {formula!r} needs a 1 or 0 term to include or "
                                           "exclude the intercept explicitly (BIDS Stats Models requires it)")
    try:
        Formula(formula)
    except (FormulaicError, SyntaxError, ValueError) as err:
        raise UsageError(f"{where}.Model.Formula {formula!r} is not a valid formula: {err}") from None
    return formula


def _parse_dummy(dummy, where):
    """``DummyContrasts`` (true, false or an object) as None or ``{"contrasts", "test"}``."""
    if dummy is True:
        dummy = {"Test": "t"}
    elif dummy is False or dummy is None:
        return None
    _require(isinstance(dummy, dict), f"{where}.DummyContrasts must be an object or true")
    _check_keys(dummy, "DummyContrasts", f"{where}.DummyContrasts")
    listed = None
    if "Contrasts" in dummy:
        listed = ["intercept" if c in (1, "1") else str(c) for c in _as_list(dummy["Contrasts"])]
    test = dummy.get("Test", "t")
    _require(test in KNOWN_TESTS, f"{where}.DummyContrasts: Test must be one of {', '.join(KNOWN_TESTS)}, got {test!r}")
    return {"contrasts": listed, "test": test}


def _check_model_section(model, where, *, dataset):
    """Check the keys of ``Model`` (and of its HRF and Options); refuse those a Dataset node cannot run."""
    _check_keys(model, "model section", f"{where}.Model", draft_ok=not dataset)
    for kind in ("HRF", "Options"):
        section = model.get(kind)
        if section is None:
            continue
        _require(isinstance(section, dict), f"{where}.Model.{kind} must be an object, got {section!r}")
        _check_keys(section, kind, f"{where}.Model.{kind}")
        if not dataset:
            continue
        _require(kind != "HRF", f"{where}.Model.HRF is not supported on a Dataset node (it convolves time series, "
                                "which group-level maps are not); remove it")
        used = [k for k in section if k != "Description"]
        _require(not used, f"{where}.Model.Options.{used[0] if used else ''} is not supported by this app on a "
                           "Dataset node (Options are for time-series models); remove it")
    model_type = str(model.get("Type", "glm")).lower()
    _require(model_type in MODEL_TYPES, f"{where}.Model.Type must be 'glm' or 'meta', got {model.get('Type')!r}")
    return model_type


def _check_first_level_node(raw, where):
    """Run/Session/Subject nodes are skipped: check only that their keys are spec keys."""
    _check_keys(raw, "node", where)
    model = raw.get("Model")
    if isinstance(model, dict):
        _check_model_section(model, where, dataset=False)
    if isinstance(raw.get("Transformations"), dict):
        _check_keys(raw["Transformations"], "transformations", f"{where}.Transformations")
    for i, contrast in enumerate(raw.get("Contrasts") or [] if isinstance(raw.get("Contrasts"), list) else []):
        if isinstance(contrast, dict):
            _check_keys(contrast, "contrast", f"{where}.Contrasts[{i}]")
    if isinstance(raw.get("DummyContrasts"), dict):
        _check_keys(raw["DummyContrasts"], "DummyContrasts", f"{where}.DummyContrasts")


#: Tests a Dataset node computes from the effect and variance maps, without a GLM fit.
FIXED_EFFECTS_TESTS = ("FEMA",)


def _require_executable(node, where):
    """Refuse, naming them, the tests and model types a Dataset node cannot run.

    ``Model.Type: meta`` makes every contrast a fixed-effects combination
    (as FitLins runs it): a ``t`` contrast of a meta node is read as FEMA
    and ``F`` is refused. FEMA tests one effect, so an F-style weight
    matrix with several rows is refused; ``pass`` is a contrast of one row.
    """
    tests = [(f"{where}.Contrasts[{i}] '{c.name}'", c.test, c.weights.shape[0]) for i, c in enumerate(node.contrasts)]
    if node.dummy_contrasts is not None:
        tests.append((f"{where}.DummyContrasts", node.dummy_contrasts["test"], 1))
    for what, test, rows in tests:
        if node.model_type == "meta":
            _require(test != "F", f"{what}: Test 'F' in a Model.Type 'meta' node (a fixed-effects meta-analysis "
                                  "tests one effect at a time); use Test 'FEMA' or 't', or Model.Type 'glm'")
        _require(test not in (*FIXED_EFFECTS_TESTS, "pass") or rows == 1,
                 f"{what}: Test '{test}' with {rows} weight rows; '{test}' takes one row (use Test 'F' for several)")


def _check_software(software, where):
    """``Model.Software`` maps software names to objects; other software's sections are not used (warned)."""
    _require(isinstance(software, dict), f"{where}: Model.Software must be an object keyed by software name")
    for name, section in software.items():
        _require(isinstance(section, dict), f"{where}.Model.Software.{name} must be an object, got {section!r}")
    others = sorted(k for k in software if k != "bids_group_app")
    if others:
        LOGGER.warning("%s.Model.Software: the settings for %s are for other software and are not used",
                       where, ", ".join(others))


def _parse_node(raw, index, edge_filters):
    where = f"Nodes[{index}]"
    _check_keys(raw, "node", where)
    name = str(raw.get("Name", f"node{index}"))
    model = raw.get("Model")
    _require(isinstance(model, dict) and "X" in model, f"{where} '{name}' needs Model.X (a list of design columns)")
    model_type = _check_model_section(model, where, dataset=True)
    x = _as_list(model["X"])
    _require(x, f"{where} '{name}': Model.X is empty")
    x = ["intercept" if v in (1, "1") else str(v) for v in x]
    contrasts_raw = raw.get("Contrasts") or []
    _require(isinstance(contrasts_raw, list), f"{where} '{name}': Contrasts must be a list of contrast objects")
    contrasts = [parse_contrast(c, f"{where}.Contrasts[{i}]") for i, c in enumerate(contrasts_raw)]
    _require_unique_contrasts(contrasts, f"{where} '{name}'")
    filters = dict(edge_filters)
    if raw.get("Filter"):
        filters.update(_filter_dict(raw["Filter"], f"{where}.Filter"))
    software = model.get("Software") or {}
    _check_software(software, where)
    node = NodeSpec(
        name=name,
        software=software,
        x=x,
        formula=_parse_formula(model.get("Formula"), where),
        model_type=model_type,
        group_by=[str(g) for g in _as_list(raw.get("GroupBy"))],
        transformations=_parse_transformations(raw.get("Transformations"), f"{where} '{name}' Transformations"),
        contrasts=contrasts,
        dummy_contrasts=_parse_dummy(raw.get("DummyContrasts"), where),
        filters=filters,
    )
    _require_executable(node, where)
    return node


def parse_model(document, require_dataset=True):
    """Validate a BIDS Stats Models document and return a :class:`ModelSpec`.

    A legacy (pre-1.0) document is upgraded first (:func:`upgrade_legacy`);
    ``ModelSpec.document`` is the upgraded one. With ``require_dataset``
    (the group level) a document without a Dataset node is refused; the
    participant level runs models of Run (and Subject) nodes only.

    Raises
    ------
    UsageError
        When the document is not a usable BIDS Stats Model, with the reason.
    """
    _require(isinstance(document, dict), "the model must be a JSON object with Name, Nodes (and BIDSModelVersion)")
    document = upgrade_legacy(document)
    _check_keys(document, "model", "")
    nodes_raw = document.get("Nodes")
    _require(isinstance(nodes_raw, list) and nodes_raw, "the model has no Nodes list")
    edge_filters = {}
    _require(isinstance(document.get("Edges") or [], list), "the model's Edges must be a list of edge objects")
    for i, edge in enumerate(document.get("Edges") or []):
        if isinstance(edge, dict):
            _check_keys(edge, "edge", f"Edges[{i}]")
        if isinstance(edge, dict) and edge.get("Filter"):
            edge_filters[str(edge.get("Destination"))] = _filter_dict(edge["Filter"], "Edges[].Filter")
    nodes = []
    for i, node in enumerate(nodes_raw):
        _require(isinstance(node, dict), f"Nodes[{i}] must be an object")
        level = str(node.get("Level", "")).lower()
        _require(level in ("run", "session", "subject", "dataset"), f"Nodes[{i}].Level must be Run, Session, Subject or Dataset, got {node.get('Level')!r}")
        if level == "dataset":
            nodes.append(_parse_node(node, i, edge_filters.get(str(node.get("Name")), {})))
        else:
            _check_first_level_node(node, f"Nodes[{i}]")
    levels = sorted({str(n.get("Level")) for n in nodes_raw if isinstance(n, dict)})
    _require(nodes or not require_dataset, f"the model has no Dataset-level node (levels found: {', '.join(levels)}); "
                                           "the group level runs Dataset nodes (its Run and Subject nodes are the "
                                           "participant level's)")
    names = [n.name for n in nodes]
    _require(len(set(names)) == len(names), f"node names must be unique, got {names}")
    input_filters = _filter_dict(document.get("Input") or {}, "Input")
    return ModelSpec(str(document.get("Name", "model")), document, input_filters, nodes, parse_graph(document))


def load_model(path, require_dataset=True):
    """Read and validate a BIDS Stats Models JSON file.

    A missing file is a MissingInputError (66); a file that is not valid
    JSON or not a usable model is a UsageError (64). ``require_dataset``:
    see :func:`parse_model`.
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
    return parse_model(document, require_dataset=require_dataset)


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
