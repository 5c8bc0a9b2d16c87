"""Input indexing: find first-level maps in BIDS derivative datasets.

The group analysis starts from per-subject maps written by first-level
pipelines (nilearn ``save_glm_to_bids``, FitLins, SPM/FSL exports, CAT12
VBM, ...).  This module

1. decides which derivative dataset roots to look at
   (:func:`resolve_derivatives`),
2. indexes their image files with PyBIDS using the app's own entity
   configuration, ``bids_group_app/data/bids_config.json``
   (:func:`index_maps`; a folder named like a subject's map is an error, as
   PyBIDS would skip it; a database that cannot be written in
   ``--bids-database-dir`` is an output error),
3. narrows the index down to the maps to analyse (:func:`default_filters`,
   :func:`select_maps`, :func:`filters_present`, :func:`parse_filter_args`,
   :func:`load_bids_filter_file`), and
4. reports ambiguous selections (:func:`find_collisions`).

The index is a :class:`pandas.DataFrame` with one row per image file,
columns ``path``, ``dataset`` and one column per BIDS entity (string values,
NaN where a file lacks the entity).

Notes
-----
The entity configuration is self-contained (it is used *instead of* PyBIDS'
``bids`` and ``derivatives`` configurations, because PyBIDS cannot load two
configurations that define the same entity).  Its patterns differ from
PyBIDS' own in two ways:

* key-value entities are only read from the file name, never from a folder
  above it, so that a parent folder such as ``/data/sub-project/`` or
  ``/scratch/desc-old/`` cannot leak into the entities;
* it adds ``contrast`` and ``stat`` (nilearn / FitLins / BIDS-Stats-Models
  statmaps) and ``node`` (FitLins writes ``node-<label>/`` folders; the
  entity is read from the file name or from such a folder at most three
  levels above the file).

Values are kept as strings (``run`` is ``'01'``, not ``1``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from bids_group_app.errors import (
    DataError,
    MissingInputError,
    NoFilesSelectedError,
    OutputError,
    UsageError,
)

LOGGER = logging.getLogger(__name__)

#: Extensions of the image files that are indexed as maps.  ``.img`` is an
#: Analyze/NIfTI-pair image; its ``.hdr`` header is not a separate input.
IMAGE_EXTENSIONS = (".nii", ".nii.gz", ".img", ".func.gii", ".dscalar.nii")
#: Surface maps stored one file per hemisphere (``hemi-L``/``hemi-R``), paired into one map.
HEMISPHERE_EXTENSIONS = (".func.gii",)
#: Maps on a surface mesh (GIFTI per hemisphere; CIFTI-2 dense scalars).
SURFACE_EXTENSIONS = (".func.gii", ".dscalar.nii")

#: Entities whose labels are numeric indices: ``run-1`` and ``run-01`` match.
INDEX_ENTITIES = frozenset({"run", "echo", "flip", "inv", "chunk"})

#: Filter value meaning "the entity must be present, any value" (as in
#: fMRIPrep's ``--bids-filter-file``).  ``None`` means "must be absent".
ANY_VALUE = "*"

#: Columns of the index that are not BIDS entities but may be filtered on.
NON_ENTITY_COLUMNS = ("path", "dataset")

_CONFIG_RESOURCE = "bids_config.json"
_DB_FILE = "layout_index.sqlite"
_MAX_LISTED = 25
_FILTER_FORM = "ENTITY=VALUE[,VALUE...] (e.g. --filter contrast=motor,visual)"
_ENTITY_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_SUBJECT_IN_NAME = re.compile(r"(?:^|_)sub-[A-Za-z0-9]+")
#: Top-level folders of a dataset that PyBIDS does not index (its defaults, and nested derivatives).
_NOT_INDEXED = frozenset({"code", "models", "sourcedata", "stimuli", "derivatives"})


# --------------------------------------------------------------------------
# Entity configuration
# --------------------------------------------------------------------------
def load_entity_config() -> dict:
    """Load the app's PyBIDS entity configuration.

    Returns
    -------
    dict
        The parsed ``bids_group_app/data/bids_config.json`` (PyBIDS config
        format: ``name`` and ``entities`` with ``name``/``pattern``).
    """
    text = _entity_config_text()
    return json.loads(text)


def entity_names() -> list[str]:
    """Names of all entities the configuration can extract, in config order.

    Returns
    -------
    list of str
        Entity names, e.g. ``['subject', 'session', ..., 'extension']``.
    """
    return [entity["name"] for entity in load_entity_config()["entities"]]


def _entity_config_text() -> str:
    """Return the raw text of the packaged entity configuration."""
    package = resources.files("bids_group_app") / "data" / _CONFIG_RESOURCE
    return package.read_text(encoding="utf-8")


# --------------------------------------------------------------------------
# Derivative dataset roots
# --------------------------------------------------------------------------
def resolve_derivatives(bids_dir, derivatives=None) -> list[Path]:
    """Return the derivative dataset roots to index.

    Parameters
    ----------
    bids_dir : str or os.PathLike
        The BIDS dataset (``BIDS_DIR`` positional argument).  It must exist
        and contain a ``dataset_description.json``.
    derivatives : list of str or os.PathLike, optional
        Roots given with ``--derivatives DIR [DIR ...]``.  Each must be an
        existing directory.  A directory without ``dataset_description.json``
        whose sub-folders are datasets (e.g. ``BIDS_DIR/derivatives`` itself)
        is expanded into those sub-folders, as PyBIDS does.
        When None, the roots are every folder ``BIDS_DIR/derivatives/*``
        that contains a ``dataset_description.json``, preceded by
        ``BIDS_DIR`` itself when its ``DatasetType`` is ``'derivative'``.

    Returns
    -------
    list of pathlib.Path
        Absolute dataset roots, without duplicates, in a stable order.

    Raises
    ------
    MissingInputError
        If ``bids_dir`` or a given derivative directory does not exist, if
        ``bids_dir`` has no ``dataset_description.json``, or if no
        derivative dataset is found.
    DataError
        If ``BIDS_DIR/dataset_description.json`` is not valid JSON.
    """
    bids_dir = _existing_dir(bids_dir, "BIDS_DIR")
    description = _read_description(bids_dir)
    if derivatives:
        roots = []
        for entry in derivatives:
            roots.extend(_expand_root(_existing_dir(entry, "--derivatives")))
    else:
        roots = _default_roots(bids_dir, description)
    return _unique_paths(roots)


def _existing_dir(path, what: str) -> Path:
    """Return ``path`` as an absolute Path; raise if it is not a directory."""
    path = Path(os.path.abspath(os.fspath(path)))
    if not path.exists():
        raise MissingInputError(f"{what} {path} does not exist")
    if not path.is_dir():
        raise MissingInputError(f"{what} {path} is not a directory")
    return path


def _read_description(bids_dir: Path) -> dict:
    """Read ``dataset_description.json`` of the raw BIDS_DIR."""
    target = bids_dir / "dataset_description.json"
    if not target.is_file():  # required unless --skip-bids-validation (checked by the caller)
        return {}
    try:
        description = json.loads(target.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{target} is not valid JSON ({err})") from None
    return description if isinstance(description, dict) else {}


def _is_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder holding a ``dataset_description.json``."""
    return path.is_dir() and (path / "dataset_description.json").is_file()


def _expand_root(path: Path) -> list[Path]:
    """Expand a non-dataset folder whose sub-folders are datasets."""
    if _is_dataset(path):
        return [path]
    children = sorted(p for p in path.iterdir() if _is_dataset(p))
    if children:
        LOGGER.info(
            "%s is not a dataset; indexing its datasets %s",
            path, ", ".join(p.name for p in children),
        )
        return children
    return [path]


def _made_by_this_app(path: Path) -> bool:
    """Whether a dataset is the output of an earlier bids_group_app run."""
    try:
        generated = json.loads((path / "dataset_description.json").read_text(encoding="utf-8")).get("GeneratedBy") or []
    except (OSError, ValueError, AttributeError):
        return False
    return any(isinstance(g, dict) and g.get("Name") == "bids_group_app" for g in generated)


def _default_roots(bids_dir: Path, description: dict) -> list[Path]:
    """Find derivative datasets when ``--derivatives`` was not given.

    Group-level outputs of earlier runs of this app are not inputs.
    """
    roots = []
    if description.get("DatasetType") == "derivative":
        roots.append(bids_dir)
    deriv_dir = bids_dir / "derivatives"
    others = []
    if deriv_dir.is_dir():
        for child in sorted(p for p in deriv_dir.iterdir() if p.is_dir()):
            if _is_dataset(child) and _made_by_this_app(child):
                LOGGER.info("skipping %s: it holds results of bids_group_app", child)
                continue
            (roots if _is_dataset(child) else others).append(child)
    if roots:
        return roots
    hint = ""
    if others:
        names = ", ".join(p.name for p in others)
        hint = f" (folders there without dataset_description.json: {names})"
    dataset_type = description.get("DatasetType", "raw")
    raise MissingInputError(
        f"no derivative dataset found: looked for {deriv_dir}/*/"
        f"dataset_description.json{hint} and BIDS_DIR is DatasetType "
        f"'{dataset_type}', not 'derivative'; give the first-level "
        "datasets with --derivatives DIR [DIR ...]"
    )


def _unique_paths(paths) -> list[Path]:
    """Drop duplicate paths (same real location), keeping the first."""
    seen, unique = set(), []
    for path in paths:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


# --------------------------------------------------------------------------
# Indexing
# --------------------------------------------------------------------------
def index_maps(bids_dir, derivatives, *, database_dir=None) -> pd.DataFrame:
    """Index the image files of derivative datasets with PyBIDS.

    Each dataset root is indexed by its own :class:`bids.BIDSLayout`
    (``validate=False``: derivatives need not pass the BIDS validator; no
    metadata indexing) with the app's entity configuration.  Nothing is
    written into ``bids_dir`` or the derivative datasets: without
    ``database_dir`` the PyBIDS index lives in memory.

    Parameters
    ----------
    bids_dir : str or os.PathLike
        The BIDS dataset; used only to resolve default derivatives when
        ``derivatives`` is None (see :func:`resolve_derivatives`).
    derivatives : list of str or os.PathLike or None
        Derivative dataset roots, normally from :func:`resolve_derivatives`.
    database_dir : str or os.PathLike, optional
        Folder for persistent PyBIDS databases (``BIDSLayout``
        ``database_path``), so that e.g. HPC array tasks reuse one index.
        Each dataset gets a sub-folder named after the dataset, its
        absolute path and the entity configuration.  A database is built
        in a temporary folder and renamed into place, so concurrent tasks
        never read a half-written one.  An existing database is reused as
        is: delete the folder to re-index after the data changed.

    Returns
    -------
    pandas.DataFrame
        One row per image file (extension in :data:`IMAGE_EXTENSIONS`) that
        has a ``subject`` entity, sorted by path, with columns ``path``
        (absolute), ``dataset`` (folder name of the dataset root) and one
        column per entity found, in configuration order (string values,
        NaN when absent).  Files reached through two roots appear once.

    Raises
    ------
    MissingInputError
        If no image file with a subject entity is found (the message names
        the datasets searched), or a root does not exist.
    DataError
        If an existing database in ``database_dir`` cannot be read, or a
        folder is named like a map (PyBIDS indexes files only: that
        subject's map would silently be missing).
    OutputError
        If a new database cannot be written in ``database_dir`` (disk full,
        file size limit, read-only).
    """
    if derivatives is None:
        derivatives = resolve_derivatives(bids_dir)
    roots = _unique_paths(_existing_dir(d, "--derivatives") for d in derivatives)
    config_text = _entity_config_text()
    config = json.loads(config_text)
    if database_dir is not None:
        database_dir = Path(os.path.abspath(os.fspath(database_dir)))
        try:
            database_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"--bids-database-dir {database_dir} cannot be created: {err.strerror or err}") from None
    records = []
    for root in roots:
        _check_map_folders(root)
        found = _index_dataset(root, config, config_text, database_dir)
        LOGGER.info("indexed %d maps in %s", len(found), root)
        records.extend(found)
    if not records:
        searched = ", ".join(str(r) for r in roots) or "(none)"
        raise MissingInputError(
            f"no image ({', '.join(IMAGE_EXTENSIONS)}) with a sub-<label> "
            f"entity in its file name found in the derivatives: {searched}"
        )
    return pair_hemispheres(_records_to_table(records, [e["name"] for e in config["entities"]]))


def right_hemisphere(path) -> Path:
    """The ``hemi-R`` file of a GIFTI map named by its ``hemi-L`` file (see :func:`pair_hemispheres`)."""
    path = Path(path)
    return path.with_name(path.name.replace("_hemi-L_", "_hemi-R_", 1))


def pair_hemispheres(table: pd.DataFrame) -> pd.DataFrame:
    """One row per GIFTI map: its ``hemi-L`` and ``hemi-R`` files are one map of both hemispheres.

    A map is the left file's row with ``hemi`` emptied (NaN): its ``path``
    names the left file, and the right file has the same name with
    ``hemi-R`` (:func:`right_hemisphere`). Volume and CIFTI rows are kept
    as they are.

    Raises
    ------
    MissingInputError
        A GIFTI map without ``hemi-L``/``hemi-R`` in its name, or one whose
        other hemisphere is missing (both named).
    """
    if "extension" not in table.columns:
        return table
    gifti = table["extension"].isin(HEMISPHERE_EXTENSIONS).to_numpy()
    if not gifti.any():
        return table
    hemi = table["hemi"].astype(str) if "hemi" in table.columns else pd.Series("nan", index=table.index)
    paths = set(table["path"])
    drop = []
    for i in np.flatnonzero(gifti):
        path, side = table["path"].iloc[i], hemi.iloc[i]
        name = Path(path).name
        if side not in ("L", "R") or f"_hemi-{side}_" not in name:
            raise MissingInputError(f"{path}: a GIFTI map needs hemi-L or hemi-R in its name (one file per "
                                    "hemisphere, e.g. sub-01_hemi-L_space-fsaverage5_..._statmap.func.gii)")
        other = name.replace(f"_hemi-{side}_", f"_hemi-{'R' if side == 'L' else 'L'}_", 1)
        if str(Path(path).with_name(other)) not in paths:
            raise MissingInputError(f"{path} has no other hemisphere: {other} is missing; a surface map is "
                                    "analysed over both hemispheres (give both files)")
        if side == "R":
            drop.append(table.index[i])
    paired = table.drop(index=drop)
    paired.loc[paired["extension"].isin(HEMISPHERE_EXTENSIONS), "hemi"] = np.nan
    return paired.reset_index(drop=True)


def _index_dataset(root: Path, config: dict, config_text: str,
                   database_dir: Path | None) -> list[dict]:
    """Index one dataset root; return one record per image with a subject."""
    if database_dir is None:
        return _image_records(_build_layout(root, config, None), root)
    digest = hashlib.sha1(
        (str(root) + "\0" + config_text).encode("utf-8")
    ).hexdigest()[:12]
    cache = database_dir / f"{root.name}-{digest}"
    if (cache / _DB_FILE).is_file():
        LOGGER.info("reusing PyBIDS index %s", cache)
        try:
            layout = _build_layout(root, config, cache)
            return _image_records(layout, root)
        except Exception as err:  # sqlalchemy / sqlite errors
            raise DataError(
                f"cannot read the PyBIDS index {cache} ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); delete it "
                "to re-index"
            ) from None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.tmp-", dir=database_dir))
    except OSError as err:
        raise OutputError(f"--bids-database-dir {database_dir} is not writable: {err.strerror or err}") from None
    try:
        records = _write_database(root, config, tmp, database_dir)
        try:
            os.rename(tmp, cache)
            LOGGER.info("saved PyBIDS index %s", cache)
        except OSError:
            LOGGER.info("another process saved %s first; keeping it", cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return records


def _write_database(root: Path, config: dict, tmp: Path, database_dir: Path) -> list[dict]:
    """Index ``root`` into a new database in ``tmp``; a failed write is an OutputError naming the folder."""
    from sqlalchemy.exc import OperationalError

    try:
        return _image_records(_build_layout(root, config, tmp), root)
    except (OSError, sqlite3.OperationalError, OperationalError) as err:
        reason = getattr(err, "orig", None) or getattr(err, "strerror", None) or err
        reason = str(reason).splitlines()[0] if str(reason) else type(err).__name__
        raise OutputError(f"--bids-database-dir {database_dir}: cannot write the PyBIDS index of {root} ({reason}); "
                          "free space there or give another folder") from None


def _check_map_folders(root: Path) -> None:
    """Refuse folders named like a subject's map (``sub-03_..._statmap.nii.gz/``).

    PyBIDS indexes files only, so such a map would silently be missing from
    the analysis. Folders PyBIDS does not index (hidden ones, top-level
    ``code``, ``sourcedata``, ...) are not searched.

    Raises
    ------
    DataError
        Naming the folders.
    """
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and not (here == root and d in _NOT_INDEXED)]
        found.extend(here / d for d in dirnames if d.endswith(IMAGE_EXTENSIONS) and _SUBJECT_IN_NAME.search(d))
    if found:
        listed = ", ".join(str(p) for p in sorted(found)[:_MAX_LISTED])
        raise DataError(f"{listed} {'is a folder' if len(found) == 1 else 'are folders'}, not image files: "
                        "the map would be missing from the analysis; put the image there or move the folder out "
                        "of the dataset")


def _build_layout(root: Path, config: dict, database_path):
    """Create (or load from ``database_path``) a BIDSLayout of ``root``."""
    from bids import BIDSLayout
    from bids.layout.index import BIDSLayoutIndexer

    return BIDSLayout(
        root,
        validate=False,
        config=[config],
        database_path=None if database_path is None else str(database_path),
        indexer=BIDSLayoutIndexer(validate=False, index_metadata=False),
    )


def _image_records(layout, root: Path) -> list[dict]:
    """Read the file-name entities of ``layout``'s image files.

    Queries PyBIDS' tag table once, instead of one query per file.
    """
    from bids.layout.models import Tag

    query = layout.session.query(
        Tag.file_path, Tag.entity_name, Tag._value
    ).filter(Tag.is_metadata == False)  # noqa: E712 (SQL expression)
    files: dict[str, dict] = {}
    for path, entity, value in query:
        files.setdefault(path, {})[entity] = str(value)
    records = []
    for path, entities in files.items():
        if entities.get("extension") in IMAGE_EXTENSIONS and "subject" in entities:
            records.append({"path": str(path), "dataset": root.name, **entities})
    return records


def _records_to_table(records: list[dict], order: list[str]) -> pd.DataFrame:
    """Build the sorted index table, entity columns in config order."""
    table = pd.DataFrame.from_records(records)
    present = [name for name in order if name in table.columns]
    extra = sorted(set(table.columns) - set(present) - set(NON_ENTITY_COLUMNS))
    table = table[["path", "dataset", *present, *extra]]
    table = table.drop_duplicates(subset="path").sort_values("path")
    return table.reset_index(drop=True)


# --------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------
def default_filters(table) -> dict[str, list[str]]:
    """The selection applied for entities the user gives no filter for.

    Rules, evaluated on ``table``:

    1. ``stat``: if the entity exists and ``'effect'`` is one of its values,
       select ``stat=effect`` (nilearn / FitLins statmaps: the effect size,
       not the variance, t, z or p maps).
    2. ``suffix``, first rule that applies:

       a. ``statmap`` when rule 1 selected ``stat=effect`` and ``statmap``
          is a suffix;
       b. ``effect`` when it is a suffix (seed-004 style
          ``..._desc-<condition>_effect.nii.gz``; excludes the ``_z`` maps
          next to them);
       c. ``probseg`` together with ``label=GM`` when ``probseg`` is a
          suffix and ``GM`` a label (VBM grey-matter maps).

    3. ``node`` (FitLins) is never chosen: when several nodes exist the
       ambiguity is reported later, as a collision.

    Parameters
    ----------
    table : pandas.DataFrame
        An index from :func:`index_maps` (possibly already filtered).

    Returns
    -------
    dict of str to list of str
        Filters ``{entity: [value]}``, only for entities in ``table``.
        Merge with user filters so that user filters win, e.g.
        ``{**{k: v for k, v in default_filters(t).items() if k not in
        user}, **user}``; computing the defaults on the table already
        narrowed by the user's filters gives the most sensible result.
    """
    values = {col: set(table[col].dropna().astype(str))
              for col in table.columns if col not in NON_ENTITY_COLUMNS}
    filters: dict[str, list[str]] = {}
    if "effect" in values.get("stat", ()):
        filters["stat"] = ["effect"]
    suffixes = values.get("suffix", set())
    if "stat" in filters and "statmap" in suffixes:
        filters["suffix"] = ["statmap"]
    elif "effect" in suffixes:
        filters["suffix"] = ["effect"]
    elif "probseg" in suffixes and "GM" in values.get("label", ()):
        filters["suffix"] = ["probseg"]
        filters["label"] = ["GM"]
    return filters


def select_maps(table, filters, participant_labels=None) -> pd.DataFrame:
    """Select the maps matching entity filters and participant labels.

    Parameters
    ----------
    table : pandas.DataFrame
        An index from :func:`index_maps`.
    filters : dict of str to (str or None or list)
        ``{entity: values}``; a row matches when its value is one of the
        values (compared as strings).  ``None`` means "entity absent",
        ``'*'`` means "entity present, any value".  The ``sub-`` prefix of
        subject values is optional, so is the leading dot of extension
        values; ``run-1`` matches ``run-01`` (numeric index entities).
        ``dataset`` (derivative folder name) can be filtered too.
    participant_labels : list of str, optional
        Subjects to keep, with or without ``sub-``.

    Returns
    -------
    pandas.DataFrame
        The selected rows (same columns, index reset).

    Raises
    ------
    UsageError
        If a filter names an entity that is neither in the table nor in the
        entity configuration (the message lists the table's entities), or a
        filter has no values.
    NoFilesSelectedError
        If a filter leaves no map (the message names it and lists the
        values of that entity left by the filters before it), or if a
        participant label has no selected map (the message lists the
        subjects available).
    """
    filters = dict(filters or {})
    known = set(table.columns) | set(entity_names())
    available = [c for c in table.columns if c != "path"]
    for entity, value in filters.items():
        if entity not in known or entity == "path":
            raise UsageError(
                f"unknown entity '{entity}' in filters; entities in the "
                f"indexed maps: {', '.join(available)}"
            )
        if isinstance(value, (list, tuple, set)) and not value:
            raise UsageError(f"filter '{entity}' has no value; give at least one")
    selected = table
    applied: list[str] = []
    for entity, value in filters.items():
        wanted = _as_value_list(value)
        column = _column(selected, entity)
        kept = selected[_match(column, wanted, entity).to_numpy()]
        if kept.empty:
            raise NoFilesSelectedError(
                _no_match_message(entity, wanted, column, applied)
            )
        selected = kept
        applied.append(_describe_filter(entity, wanted))
    if participant_labels:
        selected = _select_participants(selected, participant_labels, applied)
    return selected.reset_index(drop=True)


def filters_present(table, filters) -> tuple[dict, dict]:
    """Split filters into those whose entity some map of ``table`` has, and the rest.

    Used where one set of filters (a model's ``Input``) meets maps of
    several levels: ``run=1,2`` selects among run-level maps and does not
    apply to subject-level maps, which have no ``run`` entity. A filter
    asking for the entity to be absent (``None`` only) always applies.

    Returns
    -------
    applied, skipped : dict
        Both ``{entity: values}``; ``skipped`` holds the filters on
        entities that no map of ``table`` has.
    """
    applied, skipped = {}, {}
    for entity, value in (filters or {}).items():
        absent = entity not in table.columns or table[entity].isna().all()
        wanted = _as_value_list(value)
        (skipped if absent and any(v is not None for v in wanted) else applied)[entity] = value
    return applied, skipped


def _as_value_list(value) -> list:
    """Normalise a filter value to a list (``None`` stays an element)."""
    if isinstance(value, (list, tuple, set)):
        return list(value)
    return [value]


def _column(table, entity: str) -> pd.Series:
    """The entity column, all-NaN when no map has the entity."""
    if entity in table.columns:
        return table[entity]
    return pd.Series(float("nan"), index=table.index, dtype=object)


def _normalise(entity: str, value) -> str:
    """Canonical string form of a filter or table value of ``entity``."""
    if isinstance(value, bool):
        raise UsageError(f"filter '{entity}': value {value!r} is not a label")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if entity == "subject" and text.startswith("sub-"):
        text = text[len("sub-"):]
    elif entity == "extension" and text and not text.startswith("."):
        text = "." + text
    if entity in INDEX_ENTITIES and text.isdigit():
        text = str(int(text))
    return text


def _match(column: pd.Series, wanted: list, entity: str) -> pd.Series:
    """Boolean mask of the rows of ``column`` matching any wanted value."""
    absent = column.isna()
    mask = pd.Series(False, index=column.index)
    labels = set()
    for value in wanted:
        if value is None:
            mask |= absent
        elif value == ANY_VALUE:
            mask |= ~absent
        else:
            labels.add(_normalise(entity, value))
    if labels:
        present = column[~absent].map(lambda v: _normalise(entity, v))
        mask |= present.isin(labels).reindex(column.index, fill_value=False)
    return mask


def _describe_filter(entity: str, wanted: list) -> str:
    """``entity=v1,v2`` with ``None`` shown as ``n/a`` (absent)."""
    shown = ["n/a" if v is None else str(v) for v in wanted]
    return f"{entity}={','.join(shown)}"


def _list_values(values) -> str:
    """Comma-separated, truncated list for one-line messages."""
    values = list(values)
    shown = ", ".join(values[:_MAX_LISTED])
    if len(values) > _MAX_LISTED:
        shown += f", ... ({len(values) - _MAX_LISTED} more)"
    return shown or "(none)"


def _no_match_message(entity, wanted, column, applied) -> str:
    """One-line message for a filter that left no map."""
    values = sorted(set(column.dropna().astype(str)))
    if column.isna().any():
        values.append("n/a (absent)")
    after = f" after {' '.join(applied)}" if applied else ""
    if column.isna().all():
        return (
            f"filter {_describe_filter(entity, wanted)} selected no maps: no "
            f"map{after} has the '{entity}' entity"
        )
    return (
        f"filter {_describe_filter(entity, wanted)} selected no maps; "
        f"'{entity}' values available{after}: {_list_values(values)}"
    )


def _select_participants(table, labels, applied) -> pd.DataFrame:
    """Keep the rows of ``labels`` (with or without ``sub-``)."""
    wanted = [_normalise("subject", label) for label in labels]
    subjects = table["subject"].astype(str)
    missing = [label for label in dict.fromkeys(wanted)
               if label not in set(subjects)]
    if missing:
        after = f" after {' '.join(applied)}" if applied else ""
        raise NoFilesSelectedError(
            f"no maps for participant label(s) {', '.join(missing)}; "
            f"subjects available{after}: "
            f"{_list_values(sorted(set(subjects)))}"
        )
    return table[subjects.isin(wanted).to_numpy()]


# --------------------------------------------------------------------------
# Filter parsing
# --------------------------------------------------------------------------
def parse_filter_args(items) -> dict[str, list[str]]:
    """Parse repeatable ``--filter ENTITY=VALUE[,VALUE...]`` arguments.

    Parameters
    ----------
    items : list of str or None
        The raw arguments.  Values of a repeated entity are merged.

    Returns
    -------
    dict of str to list of str
        ``{entity: [values]}`` in order of first appearance.

    Raises
    ------
    UsageError
        If an item is not of the form ``ENTITY=VALUE[,VALUE...]``.
    """
    filters: dict[str, list[str]] = {}
    for item in items or []:
        entity, sep, rest = str(item).partition("=")
        entity = entity.strip()
        values = [v.strip() for v in rest.split(",")]
        if not sep or not _ENTITY_NAME.match(entity) or not all(values):
            raise UsageError(f"bad --filter '{item}': expected {_FILTER_FORM}")
        merged = filters.setdefault(entity, [])
        merged.extend(v for v in values if v not in merged)
    return filters


def load_bids_filter_file(path) -> dict[str, list[str]]:
    """Read a ``--bids-filter-file`` JSON file (fMRIPrep style).

    Parameters
    ----------
    path : str or os.PathLike
        JSON file holding either a flat ``{entity: value}`` object or
        fMRIPrep's nesting ``{"<query name>": {entity: value}}``, whose
        inner objects are merged (values of a repeated entity are united).
        A value is a string, a number, a list of those, ``null`` (entity
        must be absent) or ``"*"`` (entity must be present).

    Returns
    -------
    dict of str to list
        ``{entity: [values]}``; ``null`` becomes ``[None]``.

    Raises
    ------
    MissingInputError
        If the file does not exist.
    UsageError
        If the file is not valid JSON (the message gives line and column)
        or does not have one of the accepted shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"--bids-filter-file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UsageError(
            f"--bids-filter-file {path} is not valid JSON: {err.msg} at line "
            f"{err.lineno} column {err.colno}"
        ) from None
    except UnicodeDecodeError as err:
        raise UsageError(
            f"--bids-filter-file {path} is not UTF-8 text: {err}"
        ) from None
    return _flatten_filter_json(data, path)


def _flatten_filter_json(data, path) -> dict[str, list]:
    """Merge fMRIPrep-style nested filters into ``{entity: [values]}``."""
    form = ('{"entity": "value"|["v1","v2"]|null} or '
            '{"<query>": {"entity": ...}}')
    if not isinstance(data, dict):
        raise UsageError(f"--bids-filter-file {path}: expected a JSON object {form}")
    nested = [isinstance(v, dict) for v in data.values()]
    if any(nested) and not all(nested):
        raise UsageError(
            f"--bids-filter-file {path} mixes entities and nested queries; "
            f"expected {form}"
        )
    blocks = list(data.values()) if data and all(nested) else [data]
    filters: dict[str, list] = {}
    for block in blocks:
        for entity, value in block.items():
            values = value if isinstance(value, list) else [value]
            for item in values:
                if not (item is None or isinstance(item, (str, int, float))) \
                        or isinstance(item, bool):
                    raise UsageError(
                        f"--bids-filter-file {path}: entity '{entity}' has a "
                        f"value {json.dumps(item)}; expected {form}"
                    )
            merged = filters.setdefault(entity, [])
            merged.extend(v for v in values if v not in merged)
    return filters


# --------------------------------------------------------------------------
# Collisions
# --------------------------------------------------------------------------
def find_collisions(table, keys) -> list[list[str]]:
    """Groups of maps that share the same values for ``keys``.

    Used to report "more than one map per subject per cell", e.g. several
    runs, sessions or FitLins nodes for one subject and contrast.

    Parameters
    ----------
    table : pandas.DataFrame
        Selected maps (needs a ``path`` column).
    keys : list of str
        Columns that should identify one map, e.g. ``['subject',
        'contrast']``.  A key missing from ``table`` counts as one value
        shared by all rows; NaN counts as a value.

    Returns
    -------
    list of list of str
        Each group holds the sorted paths of two or more rows with equal
        keys; groups are sorted by their first path.
    """
    columns = [
        [None if pd.isna(v) else str(v) for v in _column(table, key)]
        for key in keys
    ]
    groups: dict[tuple, list[str]] = {}
    for path, *key in zip(table["path"], *columns):
        groups.setdefault(tuple(key), []).append(str(path))
    collisions = [sorted(paths) for paths in groups.values() if len(paths) > 1]
    return sorted(collisions)
