"""Output names: every file name this app writes is built, and parsed, here.

Naming scheme (documented in the README)::

    OUTPUT_DIR/
      dataset_description.json, .bidsignore
      model-<model>_smdl.json              the model that ran (BIDS Stats Models)
      model-<model>_report.html            its HTML report
      sub-<label>_report.html              the participant level's report of a subject
      logs/config-<timestamp>-<id>.json    the configuration that ran
      logs/CITATION.md|.html|.bib          the methods text
      figures/model-<model>_node-<node>_<cell>[_contrast-<c>][_stat-<s>][_thresh-<h>]_<figure>.png|.html
      figures/sub-<label>_node-<node>_<entities>[_contrast-<c>][_stat-<s>]_<figure>.png   participant level
      node-<node>/
        model-<model>_<cell>_design.tsv|.json              design matrix; columns, maps, dropped
        model-<model>_<cell>_mask.nii.gz                   analysis mask
        model-<model>_<cell>_contrast-<c>_stat-<s>_statmap.nii.gz|.json
        model-<model>_<cell>_contrast-<c>_stat-<s>_thresh-<h>_statmap.nii.gz|.json
        model-<model>_<cell>_contrast-<c>_thresh-<h>_clusters.tsv|.json
        model-<model>_<cell>_contrast-<c>_nulldist.tsv|.json
      node-<subject node>/sub-<label>/                     maps the app computed for a Subject/Session node
        model-<model>_sub-<label>[_ses-<label>]_<entities>_contrast-<c>_stat-<s>_statmap.nii.gz|.json
    WORK_DIR/perm-shards/<key>-shard-<k>of<n>.npz          permutation shards

``<model>`` is the model's ``Name`` as a label; when OUTPUT_DIR already
holds a *different* model of that name, the new one is saved (with all its
files) as ``<Name><8 hex digits of its content hash>``, so two models never
share a file. ``<cell>`` holds the GroupBy values of the model cell, as
``key-value`` pairs in GroupBy order: the first-level contrast as
``input-<label>``, ``task``/``session``/``run``/``acquisition``/``space``/
``desc``/``label`` with their BIDS keys (``ses``, ``acq``), and
participants.tsv columns under their own names. ``<s>`` is a statistic
(``effect``, ``variance``, ``t``, ``z``, ``p``, ``F``, and the permutation
maps ``logp``, ``logpmaxt``, ``tfce``, ``logpmaxtfce``, ``size``, ``mass``,
``logpmaxsize``, ``logpmaxmass``), ``<h>`` a threshold (``fpr``, ``fdr``,
``bonferroni``, or an FWE kind of :data:`FWE_KINDS`). Labels are sanitised
to BIDS alphanumerics (``-`` becomes ``Minus``, ``+`` ``Plus``, other
separators camelCase the next letter).

Long labels: a file name component may not exceed 255 bytes, so a label
longer than :data:`LABEL_LIMIT` (46) characters is cut to its first 38
characters followed by 8 hex digits of the SHA-1 of the whole label
(:func:`cap_label`): distinct long labels stay distinct and a label is named
the same in every run. With that cap the longest names (a figure of a
relabelled model, a node, a contrast and one GroupBy value, all long, with
the longest ``stat``/``thresh`` labels) stay under 255 bytes; a name that still would
not (several long GroupBy keys and values) is a
:class:`~bids_group_app.errors.UsageError`. Only file names are cut: the
saved model, sidecars and report keep the full names from the model.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from bids_group_app.errors import UsageError
from bids_group_app.outputs.view import as_view

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
#: Entities of an output name that are not GroupBy values, in their order.
RESERVED = ("model", "node", "hemi", "contrast", "stat", "thresh")
EXTENSIONS = (".nii.gz", ".func.gii", ".dscalar.nii", ".json", ".tsv", ".png", ".html", ".npz")
#: Longest label kept whole; longer ones are cut (see :func:`cap_label`).
LABEL_LIMIT = 46
_HASH_DIGITS = 8
#: Bytes a file name component may hold on common file systems (ext4, XFS, APFS, NTFS).
NAME_MAX = 255


@dataclass(frozen=True)
class InferenceKind:
    """One permutation inference family: its threshold label and statistic."""

    label: str  # the ``thresh-`` label of its FWE-thresholded map
    logp: str  # the ``stat-`` label of its FWE -log10 p map
    description: str  # for sidecars
    title: str  # report headings (the statistic is added there)
    short: str  # one word (methods text)


#: The permutation inference kinds, in report order (defined once).
FWE_KINDS = (
    InferenceKind("maxt", "logpmaxt", "voxel-level FWE (maximum statistic)", "voxel-level FWE", "voxel"),
    InferenceKind("maxtfce", "logpmaxtfce", "TFCE FWE", "TFCE FWE", "tfce"),
    InferenceKind("maxsize", "logpmaxsize", "cluster-size FWE", "cluster-size FWE", "size"),
    InferenceKind("maxmass", "logpmaxmass", "cluster-mass FWE", "cluster-mass FWE", "mass"),
)
FWE_BY_LABEL = {k.label: k for k in FWE_KINDS}
#: Parametric height controls, in report order.
PARAMETRIC_THRESHOLDS = ("fpr", "fdr", "bonferroni")


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
    return cap_label(parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:]))


def cap_label(label):
    """Cut a label longer than :data:`LABEL_LIMIT`, ending it with 8 hex digits of its SHA-1.

    >>> cap_label("a" * 50)
    'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa6c177354'
    """
    if len(label) <= LABEL_LIMIT:
        return label
    digest = hashlib.sha1(label.encode("utf-8")).hexdigest()[:_HASH_DIGITS]
    return label[:LABEL_LIMIT - _HASH_DIGITS] + digest


def _check_length(name):
    """Raise UsageError when a file name is longer than :data:`NAME_MAX` bytes."""
    size = len(name.encode("utf-8"))
    if size > NAME_MAX:
        raise UsageError(
            f"output file name {name[:80]}... would be {size} bytes, over the {NAME_MAX} a file system allows "
            f"(labels over {LABEL_LIMIT} characters are already cut); shorten the model, node, contrast or GroupBy "
            "names and values, or group by fewer variables")


def cell_entities(group_values):
    """``(key, label)`` pairs naming a GroupBy cell, e.g. ``(('task', 'x'), ('input', 'motor'))``.

    A participants.tsv column named like a reserved entity (``model``,
    ``stat``, ...) is written ``by<name>``.
    """
    pairs = []
    for key, value in group_values.items():
        name = ENTITY_KEYS.get(key, sanitize_label(key).lower())
        pairs.append((f"by{name}" if name in RESERVED else name, sanitize_label(value)))
    return tuple(pairs)


def join_name(prefix, *parts):
    """Join BIDS filename parts, skipping empty ones."""
    return "_".join(p for p in (prefix, *parts) if p)


def _join(pairs):
    return "_".join(f"{k}-{v}" for k, v in pairs)


def node_folder(node):
    """``node-<node>``: the folder of a node's outputs."""
    return f"node-{sanitize_label(node)}"


@dataclass(frozen=True)
class OutputName:
    """A parsed (or to be built) output file name.

    Parameters
    ----------
    entities : tuple of (key, label)
        In file-name order.
    suffix : str
        ``statmap``, ``clusters``, ``design``, ``mask``, ``nulldist``,
        ``smdl``, ``report``, or a figure kind.
    extension : str
    folder : str
        The folder relative to OUTPUT_DIR (``node-<node>``, ``figures``, or ``""``).
    """

    entities: tuple
    suffix: str
    extension: str
    folder: str = ""

    def get(self, key, default=None):
        """The label of an entity (``default`` when absent)."""
        return dict(self.entities).get(key, default)

    @property
    def cell(self):
        """The GroupBy entities (everything but the reserved ones)."""
        return tuple((k, v) for k, v in self.entities if k not in RESERVED)

    @property
    def relpath(self):
        """The path relative to OUTPUT_DIR."""
        name = join_name(_join(self.entities), f"{self.suffix}{self.extension}")
        _check_length(name)
        return f"{self.folder}/{name}" if self.folder else name

    def with_model(self, model):
        """The same name for another model label."""
        return OutputName(tuple((k, model if k == "model" else v) for k, v in self.entities),
                          self.suffix, self.extension, self.folder)


def parse(relpath):
    """Parse a path relative to OUTPUT_DIR into an :class:`OutputName`.

    Returns None for a name that does not follow the scheme.
    """
    path = Path(relpath)
    extension = next((e for e in EXTENSIONS if path.name.endswith(e)), None)
    if extension is None:
        return None
    *pairs, suffix = path.name[: -len(extension)].split("_")
    entities = []
    for pair in pairs:
        key, sep, value = pair.partition("-")
        if not sep or not key or not value:
            return None
        entities.append((key, value))
    folder = path.parent.as_posix()
    return OutputName(tuple(entities), suffix, extension, "" if folder == "." else folder)


@dataclass(frozen=True)
class CellNames:
    """Names of the files of one model cell (one node, one set of GroupBy values).

    Parameters
    ----------
    model : str
        The model label.
    node : str
        The node name (sanitised here).
    cell : tuple of (key, label)
        See :func:`cell_entities`.
    """

    model: str
    node: str
    cell: tuple = field(default_factory=tuple)

    @property
    def folder(self):
        """``node-<node>``."""
        return node_folder(self.node)

    @property
    def label(self):
        """The GroupBy values as they appear in file names (``task-x_input-motor``)."""
        return _join(self.cell)

    @property
    def key(self):
        """A stable identifier of the cell within a model (node and GroupBy values)."""
        return join_name(self.folder, self.label)

    def _name(self, extra, suffix, extension):
        return OutputName((("model", self.model), *self.cell, *extra), suffix, extension, self.folder).relpath

    def design(self, extension=".tsv"):
        """``<cell>_design.tsv|.json``."""
        return self._name((), "design", extension)

    def mask(self, extension=".nii.gz", hemi=None):
        """``<cell>_mask.nii.gz`` (``<cell>_hemi-<L|R>_mask.func.gii`` on a surface)."""
        return self._name((("hemi", hemi),) if hemi else (), "mask", extension)

    def statmap(self, contrast, stat, thresh=None, extension=".nii.gz", hemi=None):
        """A statistic map (thresholded with ``thresh``) of a contrast, or its sidecar; ``hemi``: the
        hemisphere of a GIFTI map (``L``/``R``)."""
        extra = ((("hemi", hemi),) if hemi else ()) + (("contrast", sanitize_label(contrast)), ("stat", stat)) + (
            (("thresh", thresh),) if thresh else ())
        return self._name(extra, "statmap", extension)

    def clusters(self, contrast, thresh, extension=".tsv"):
        """The cluster table of a thresholded map, or its sidecar."""
        return self._name((("contrast", sanitize_label(contrast)), ("thresh", thresh)), "clusters", extension)

    def nulldist(self, contrast, extension=".tsv"):
        """The permutation null distributions of a contrast, or their sidecar."""
        return self._name((("contrast", sanitize_label(contrast)),), "nulldist", extension)

    def figure(self, kind, contrast=None, stat=None, thresh=None, extension=".png"):
        """A report figure (``figures/``), named after the model, node, cell and map it shows."""
        extra = tuple((k, v) for k, v in (("contrast", contrast and sanitize_label(contrast)), ("stat", stat),
                                          ("thresh", thresh)) if v)
        entities = (("model", self.model), ("node", sanitize_label(self.node)), *self.cell, *extra)
        return OutputName(entities, kind, extension, "figures").relpath

    @classmethod
    def from_name(cls, name, node):
        """The cell of a parsed node-folder name (:func:`parse`)."""
        return cls(name.get("model"), node, name.cell)


def computed_map(model, node, subject, entities, contrast, stat, extension=".nii.gz"):
    """A subject-level map the app computed from run-level maps (or its sidecar).

    ``node-<node>/sub-<subject>/model-<model>_sub-<subject>_<entities>_contrast-<c>_stat-<s>_statmap.nii.gz``;
    ``entities`` (a dict: session, task, ...) are named as :func:`cell_entities` names them.
    """
    subject = sanitize_label(subject)
    pairs = (("model", model), ("sub", subject), *cell_entities(entities), ("contrast", sanitize_label(contrast)),
             ("stat", stat))
    return OutputName(pairs, "statmap", extension, f"{node_folder(node)}/sub-{subject}").relpath


#: Entities of a first-level map's name, in FitLins's order (``contrast`` and ``stat`` follow).
FIRST_LEVEL_ENTITIES = (("subject", "sub"), ("session", "ses"), ("task", "task"), ("acquisition", "acq"),
                        ("run", "run"), ("space", "space"))


def first_level_map(node, entities, contrast=None, stat=None, suffix="statmap", extension=".nii.gz"):
    """A map (or table) the participant level writes, named as FitLins names it.

    ``node-<node>/sub-<label>/sub-<label>[_ses-][_task-][_acq-][_run-][_space-]_contrast-<c>_stat-<s>_statmap.nii.gz``,
    ``node`` and ``contrast`` as FitLins labels them (:func:`~bids_group_app.model.graph.fitlins_label`:
    ``faces-scrambled`` is ``facesScrambled``), so the group level (and FitLins users) find them; no
    ``model-`` entity, which marks the group level's own files.

    Parameters
    ----------
    node : str
        The node's name.
    entities : dict
        ``subject`` and any of ``session``, ``task``, ``acquisition``, ``run``, ``space``.
    contrast, stat : str, optional
        Left out of the name when None (a design matrix: ``suffix="design"``, ``extension=".tsv"``).
    """
    from bids_group_app.model.graph import fitlins_label

    pairs = [(key, str(entities[name])) for name, key in FIRST_LEVEL_ENTITIES if entities.get(name) is not None]
    if contrast is not None:
        pairs.append(("contrast", cap_label(fitlins_label(contrast))))
    if stat is not None:
        pairs.append(("stat", stat))
    folder = f"node-{fitlins_label(node)}/sub-{entities['subject']}"
    return OutputName(tuple(pairs), suffix, extension, folder).relpath


def first_level_figure(relpath, kind):
    """The report figure of a participant-level file (a :func:`first_level_map` map or design table).

    ``node-<node>/sub-<label>/sub-<label>_<entities>_<suffix>.<ext>`` gives
    ``figures/sub-<label>_node-<node>_<entities>_<kind>.png``: the subject
    first, so that a subject's figures sort together, and the node, since
    two nodes name their maps alike.

    Parameters
    ----------
    relpath : str or pathlib.Path
        Relative to OUTPUT_DIR, as :func:`first_level_map` returns it.
    kind : str
        The figure: ``design``, ``slices``, ``glass``.
    """
    name = parse(relpath)
    node = Path(relpath).parent.parent.name.partition("-")[2]
    if name is None or not node or not name.entities or name.entities[0][0] != "sub":
        raise ValueError(f"{relpath} is not a participant-level file name")
    entities = (name.entities[0], ("node", node), *name.entities[1:])
    return OutputName(entities, kind, ".png", "figures").relpath


def participant_report_file(subject):
    """``sub-<label>_report.html``: the participant level's report of one subject (a BIDS label, as
    its ``node-<node>/sub-<label>/`` folders are named)."""
    return f"sub-{subject}_report.html"


def participant_reports(output_dir):
    """The subjects' reports (:func:`participant_report_file`) in OUTPUT_DIR, in name order.

    ``output_dir`` is a path or an :class:`~.view.OutputView`; paths are
    relative to OUTPUT_DIR.
    """
    return as_view(output_dir).glob(participant_report_file("*"))


def participant_sidecars(output_dir):
    """The sidecars of the participant level's maps (:func:`first_level_map`), one per contrast
    (its ``stat-effect``, or ``stat-F``), in name order; paths as a reader opens them."""
    view = as_view(output_dir)
    return [view / rel for pattern in ("effect", "F")
            for rel in view.glob(f"node-*/sub-*/sub-*_stat-{pattern}_statmap.json")]


def computed_sidecars(output_dir, model):
    """The sidecars of the subject-level maps a model computed (:func:`computed_map`), in name order.

    ``output_dir`` is a path or an :class:`~.view.OutputView`; the paths
    returned are those a reader opens.
    """
    view = as_view(output_dir)
    return [view / rel for rel in view.glob(f"node-*/sub-*/model-{model}_sub-*_stat-effect_statmap.json")]


def model_file(model):
    """``model-<model>_smdl.json``."""
    return f"model-{model}_smdl.json"


def report_file(model):
    """``model-<model>_report.html``."""
    return f"model-{model}_report.html"


def saved_models(output_dir):
    """The saved models of OUTPUT_DIR (``model-*_smdl.json``), in name order.

    ``output_dir`` is a path or an :class:`~.view.OutputView`; the paths
    returned are those a reader opens.
    """
    view = as_view(output_dir)
    return [view / rel for rel in view.glob(model_file("*"))]


def model_of(path):
    """The model label of a ``model-<model>_...`` file name (None otherwise)."""
    name = parse(Path(path).name)
    return name.get("model") if name else None


def config_file(timestamp, run_id):
    """``logs/config-<timestamp>-<id>.json``."""
    return f"logs/config-{timestamp}-{run_id}.json"


def shard_file(shard_key, k, n):
    """``<key>-shard-<k>of<n>.npz`` (in ``WORK_DIR/perm-shards``)."""
    return f"{shard_key}-shard-{k}of{n}.npz"


def parse_shard_file(name):
    """``(key, k, n)`` of a shard file name (None otherwise)."""
    match = re.fullmatch(r"(\w+)-shard-(\d+)of(\d+)\.npz", Path(name).name)
    return (match.group(1), int(match.group(2)), int(match.group(3))) if match else None


def model_cells(output_dir, model, node):
    """The cells of one model in a node folder of OUTPUT_DIR (from their design sidecars).

    Returns
    -------
    list of CellNames
    """
    view = as_view(output_dir)
    cells = []
    for rel in view.glob(f"{node_folder(node)}/model-{model}_*design.json"):
        name = parse(rel)
        if name is not None and name.get("model") == model and name.suffix == "design":
            cells.append(CellNames.from_name(name, node))
    return cells


def contrast_files(output_dir, cell):
    """The statistic maps of a cell, grouped by contrast label.

    Returns
    -------
    dict
        ``{contrast label: [OutputName, ...]}`` of the ``_statmap.json``
        sidecars, in name order.
    """
    found = {}
    for rel in as_view(output_dir).glob(f"{cell.folder}/model-{cell.model}_*_statmap.json"):
        name = parse(rel)
        if name is None or name.get("model") != cell.model or name.cell != cell.cell or not name.get("contrast"):
            continue
        found.setdefault(name.get("contrast"), []).append(name)
    return found
