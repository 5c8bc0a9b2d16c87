"""Planning: every check that needs no image data.

Paths, derivative datasets, filters, the model (a BIDS Stats Models file or
the short options), the GroupBy cells and their designs and contrasts, so
that most bad input fails before anything is computed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bids_group_app.config import SOFTWARE_KEY, AnalysisSettings, check_settings, node_settings, software_options
from bids_group_app.errors import (
    DataError,
    MissingInputError,
    NoFilesSelectedError,
    OutputError,
    UsageError,
)
from bids_group_app.inputs import index as inputs_stage
from bids_group_app.inputs.participants import (
    MATCHED,
    is_numeric,
    join_participants,
    level_labels,
    levels,
    read_participants,
    strip_sub,
)
from bids_group_app.model.design import build_design
from bids_group_app.model.spec import auto_group_by, load_model, model_from_options, parse_model
from bids_group_app.outputs.commit import model_label, read_existing
from bids_group_app.outputs.naming import CellNames, cell_entities, model_file, sanitize_label, saved_models

LOGGER = logging.getLogger(__name__)


@dataclass
class Cell:
    """One model fit: a node and the GroupBy values it was fit for."""

    node: object
    group_values: dict
    design: object
    names: CellNames  # its output file names
    settings: AnalysisSettings


@dataclass
class Plan:
    """Everything decided before any image is loaded."""

    bids_dir: Path
    output_dir: Path
    derivatives: list
    document: dict
    filters: dict
    cells: list = field(default_factory=list)
    participants_report: dict = field(default_factory=dict)
    model_label: str = "model"


def _check_paths(inputs):
    bids_dir = inputs.bids_dir.expanduser().resolve()
    if not bids_dir.is_dir():
        raise MissingInputError(f"BIDS_DIR {inputs.bids_dir} does not exist or is not a directory")
    output_dir = inputs.output_dir.expanduser().resolve()
    if output_dir == bids_dir or bids_dir.is_relative_to(output_dir):
        raise UsageError(f"OUTPUT_DIR {output_dir} would overwrite BIDS_DIR {bids_dir}; choose another folder (e.g. BIDS_DIR/derivatives/group)")
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(f"OUTPUT_DIR {output_dir} exists and is not a directory; give a folder path")
    if not inputs.skip_bids_validation:
        description = bids_dir / "dataset_description.json"
        if not description.is_file():
            raise MissingInputError(f"{bids_dir} is not a BIDS dataset: dataset_description.json is missing (or pass --skip-bids-validation)")
        try:
            json.loads(description.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{description} is not valid JSON: {err}") from None
    return bids_dir, output_dir


def _check_saved_models(output_dir):
    """Refuse an OUTPUT_DIR holding a saved model that cannot be read (exit 73).

    Such a file is never overwritten (:func:`~bids_group_app.outputs.commit.model_label`
    counts it as another model), but the methods text and the reports read
    every saved model of OUTPUT_DIR: the run would fail after its maps were
    committed.
    """
    for path in saved_models(output_dir):
        if not isinstance(read_existing(path), dict):
            raise OutputError(f"{path} is not a readable model (JSON object); move it out of OUTPUT_DIR "
                              "or choose another OUTPUT_DIR")


def _derivatives(inputs, bids_dir, output_dir):
    derivatives = [Path(d).resolve() for d in inputs_stage.resolve_derivatives(bids_dir, list(inputs.derivatives) or None)]
    for deriv in derivatives:
        if output_dir == deriv or output_dir.is_relative_to(deriv) or deriv.is_relative_to(output_dir):
            raise UsageError(f"OUTPUT_DIR {output_dir} overlaps the input derivative dataset {deriv}; choose a separate folder")
    return derivatives


def _merge_filters(*sources):
    merged = {}
    for source in sources:
        for key, values in source.items():
            merged[key] = list(values)
    return merged


def _cli_filters(inputs):
    from_file = inputs_stage.load_bids_filter_file(inputs.bids_filter_file) if inputs.bids_filter_file else {}
    return _merge_filters(from_file, inputs_stage.parse_filter_args(list(inputs.filter)))


def _value_matches(series, wanted):
    """Rows whose value is one of ``wanted`` (numbers compared as numbers, else level names)."""
    if None in wanted:
        return series.isna()
    if is_numeric(series.dropna()):
        numbers = pd.to_numeric(pd.Series(wanted, dtype=object), errors="coerce")
        if numbers.notna().all():
            return series.isin(numbers.tolist())
    return level_labels(series).isin([str(w) for w in wanted])


def _apply_node_filters(table, node):
    rows = table
    for key, wanted in node.filters.items():
        if key not in rows.columns:
            raise DataError(f"node '{node.name}' Filter names '{key}', which is neither an entity nor a participants.tsv column")
        kept = rows[_value_matches(rows[key], wanted)]
        if kept.empty:
            raise NoFilesSelectedError(
                f"node '{node.name}' Filter {key}={','.join(map(str, wanted))} selects no map; values present: {', '.join(levels(rows[key]))}"
            )
        rows = kept
    return rows


def _cells(table, node, entity_columns):
    for key in node.group_by:
        if key not in table.columns:
            available = [c for c in table.columns if c not in ("path", MATCHED) and table[c].notna().any()]
            raise DataError(f"node '{node.name}' GroupBy names '{key}', not an entity or participants.tsv column; available: {', '.join(available)}")
    if not node.group_by:
        yield {}, table
        return
    keys = list(node.group_by)
    present = table.dropna(subset=keys)
    label_of = {k: dict(zip(present[k], level_labels(present[k]))) for k in keys}  # named as Factor names levels
    for values, rows in present.groupby(keys, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        yield {k: label_of[k][v] for k, v in zip(keys, values)}, rows


def _check_collisions(rows, node, group_values, entity_columns):
    def in_design(entity):
        return entity in node.x or any(str(v) in node.x for v in rows[entity].dropna().unique())

    within = [e for e in entity_columns if e != "subject" and e in rows.columns and e not in node.group_by and in_design(e)]
    keys = ["subject"] + [k for k in node.group_by if k in rows.columns and k != "subject"] + within
    collisions = inputs_stage.find_collisions(rows, keys)
    if collisions:
        first = collisions[0]
        where = ", ".join(f"{k}={v}" for k, v in group_values.items()) or "the model"
        varying = [c for c in entity_columns if c in rows.columns and rows[rows["path"].isin(first)][c].nunique(dropna=False) > 1]
        raise DataError(
            f"{len(collisions)} subject(s) have more than one map in {where} (one map per subject per cell is needed), "
            f"e.g. {', '.join(Path(p).name for p in first)}; they differ by {', '.join(varying) or 'path'}: select one with --filter, or add it to GroupBy"
        )


def _pin_settings(document, config):
    """Resolve each Dataset node's analysis settings and write them into the
    document (``Model.Software.bids_group_app``), so the saved model pins them.

    Returns
    -------
    dict
        ``{node name: AnalysisSettings}``.
    """
    settings = {}
    for index, node in enumerate(document["Nodes"]):
        if str(node.get("Level", "")).lower() != "dataset":
            continue
        node.setdefault("Name", f"node{index}")  # as model.spec names an unnamed node
        model = node.setdefault("Model", {})
        software = model.setdefault("Software", {})
        own = software.get(SOFTWARE_KEY) or {}
        if not isinstance(own, dict):
            raise UsageError(f"node '{node.get('Name')}': Model.Software.{SOFTWARE_KEY} must be an object, got {own!r}")
        resolved = node_settings(config, own)
        check_settings(resolved, f"node '{node.get('Name')}'")
        sharded = config.permutation.perm_shard or config.permutation.merge_perm_shards
        if sharded and not resolved.permutation.n_perm:
            raise UsageError(f"--perm-shard/--merge-perm-shards need permutations, but node '{node['Name']}' has none: "
                             "give --n-perm N with N > 0")
        software[SOFTWARE_KEY] = {**own, **software_options(resolved)}
        settings[str(node["Name"])] = resolved
    return settings


def plan(config):
    """Check inputs and model and build every cell's design.

    Parameters
    ----------
    config : bids_group_app.config.Config

    Raises
    ------
    AppError subclasses, each with its exit code.
    """
    inputs, model_options = config.inputs, config.model
    bids_dir, output_dir = _check_paths(inputs)
    _check_saved_models(output_dir)
    model = load_model(model_options.model) if model_options.model else None
    derivatives = _derivatives(inputs, bids_dir, output_dir)
    table = inputs_stage.index_maps(bids_dir, derivatives, database_dir=inputs.bids_database_dir)
    if table.empty:
        raise MissingInputError(f"no image with a sub-<label> entity in {', '.join(map(str, derivatives))}")
    participants = read_participants(bids_dir)
    cli_filters = _cli_filters(inputs)
    labels = [strip_sub(p) for p in inputs.participant_label]

    if model is None:
        pre = _merge_filters(inputs_stage.default_filters(table), cli_filters)
        selected = inputs_stage.select_maps(table, pre, labels or None)
        document = model_from_options(model_options, selected, participants)
        model_filters = document["Input"]
    else:
        document = json.loads(json.dumps(model.document))
        model_filters = model.input_filters
    subject_filter = model_filters.get("subject")
    explicit = _merge_filters({k: v for k, v in model_filters.items() if k != "subject"}, cli_filters)
    filters = _merge_filters({k: v for k, v in inputs_stage.default_filters(table).items() if k not in explicit}, explicit)
    selected = inputs_stage.select_maps(table, filters, labels or subject_filter or None)
    if model is None and not model_options.group_by:
        document["Nodes"][0]["GroupBy"] = auto_group_by(selected, exclude=list(document["Input"]))
    document["Input"] = {**filters, **({"subject": sorted(selected["subject"].unique())} if labels or subject_filter else {})}
    model = parse_model(document)
    settings = _pin_settings(document, config)
    label = model_label(output_dir, document)
    if label != sanitize_label(document.get("Name", "model")):
        LOGGER.warning("OUTPUT_DIR holds another model named %s; this one is saved as %s (its files are named "
                       "model-%s_...)", document.get("Name"), model_file(label), label)

    entity_columns = [c for c in table.columns if c not in ("path", "dataset")]
    joined, report = join_participants(selected, participants, entity_columns,
                                       chosen=labels or subject_filter or filters.get("subject"))
    result = Plan(bids_dir, output_dir, derivatives, document, filters, participants_report=report,
                  model_label=label)
    keys = set()
    for node in model.nodes:
        rows = _apply_node_filters(joined, node)
        for group_values, cell_rows in _cells(rows, node, entity_columns):
            _check_collisions(cell_rows, node, group_values, entity_columns)
            design = build_design(cell_rows.reset_index(drop=True), node, entity_columns)
            names = CellNames(label, node.name, cell_entities(group_values))
            contrasts = [sanitize_label(c.name) for c in design.contrasts]
            duplicates = sorted({n for n in contrasts if contrasts.count(n) > 1})
            if duplicates:
                raise UsageError(f"contrast names of node '{node.name}' collide once made BIDS labels: {', '.join(duplicates)}; rename them")
            if names.key in keys:
                raise UsageError(f"two nodes are named '{sanitize_label(node.name)}' once made BIDS labels; rename one")
            keys.add(names.key)
            result.cells.append(Cell(node, group_values, design, names, settings[node.name]))
    LOGGER.info("planned %d model cell(s) from %d maps", len(result.cells), len(selected))
    return result


