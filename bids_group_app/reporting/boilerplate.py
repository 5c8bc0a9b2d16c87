"""Methods boilerplate: a citable description of what ran, with references.

Everything is read back from OUTPUT_DIR (the model JSON, the logged
configuration, the design and map sidecars), so the text states what
actually ran, and ``--reports-only`` re-renders it without refitting.
:func:`write_boilerplate` writes ``OUTPUT_DIR/logs/CITATION.md``, the same
text as ``CITATION.html``, and ``CITATION.bib`` with the cited references
only, as fMRIPrep does.

The wording lives in the top-level ``boilerplate/`` folder of the source
tree, installed as the package ``bids_group_app.templates`` (:mod:`.templates`):
``citation.md.j2`` (the text, jinja2), ``citation.html.j2`` (the HTML page
around it) and ``references.bib``. This module only gathers the facts, keeps
track of citations and turns the markdown into HTML.
"""

from __future__ import annotations

import html
import logging
import re
from fractions import Fraction
from pathlib import Path

from bids_group_app.errors import UnreadableResultsError
from bids_group_app.outputs.dataset import dataset_nodes, latest_config, read_optional_result, read_result_json, unreadable_results
from bids_group_app.outputs.naming import FWE_KINDS as _KINDS, contrast_files, model_cells, model_of, saved_models
from bids_group_app.outputs.view import as_view
from bids_group_app.outputs.writer import writing
from bids_group_app.reporting.graph import fitted_nodes, model_graph
from bids_group_app.reporting.templates import template_dir

LOGGER = logging.getLogger(__name__)

FWE_KINDS = {k.label: k.short for k in _KINDS}


_read_json = read_result_json


# --------------------------------------------------------------------------
# Facts: what ran, from OUTPUT_DIR
# --------------------------------------------------------------------------
def _number(value, digits=3):
    """Short decimal text: 6.0 -> '6', 3.0902 -> '3.09', 1.4e15 -> '1.43 × 10^15'."""
    if value is None:
        return "n/a"
    value = float(value)
    if value.is_integer() and abs(value) < 1e6:
        return str(int(value))
    text = f"{value:.{digits}g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        return f"{mantissa} × 10^{int(exponent)}"
    return text


def _coefficient(weight):
    frac = Fraction(weight).limit_denominator(1000)
    if abs(float(frac) - weight) < 1e-9 * max(1.0, abs(weight)):
        return str(abs(frac))
    return _number(abs(weight), 4)


def _expression(weights, columns):
    """A weight row as an expression of the design columns: ``1/6*IniFF - 1/3*DelSF``."""
    text = ""
    for weight, column in zip(weights, columns):
        if abs(weight) < 1e-12:
            continue
        coef = _coefficient(weight)
        term = column if coef == "1" else f"{coef}*{column}"
        sign = "-" if weight < 0 else "+"
        text += (f" {sign} " if text else ("-" if sign == "-" else "")) + term
    return text or "0"


def _contrast_facts(sidecars):
    """One contrast of one cell, from the sidecars of its maps."""
    first = sidecars[0]
    contrast = first["Contrast"]
    rows = contrast["Weights"] if contrast["Test"] == "F" else [contrast["Weights"]]
    facts = {"name": contrast["Name"], "test": contrast["Test"],
             "rows": [_expression(r, contrast["Columns"]) for r in rows],
             "dof": first.get("DegreesOfFreedom"), "df_num": first.get("NumeratorDegreesOfFreedom"),
             "parametric": None, "permutation": None, "fwe": [], "fwe_alpha": None, "atlas": None}
    for sidecar in sidecars:
        if "HeightControl" in sidecar and facts["parametric"] is None:
            facts["parametric"] = {k: sidecar.get(k) for k in (
                "HeightControl", "Alpha", "ClusterExtentThreshold", "TwoSided")}
            facts["parametric"]["z"] = (sidecar.get("Threshold") or {}).get("Value")
        if "NumberOfPermutations" in sidecar and facts["permutation"] is None:
            facts["permutation"] = {k: sidecar.get(k) for k in (
                "NumberOfPermutations", "Shuffling", "ExchangeabilityBlocks", "FreedmanLane",
                "NuisanceRank", "TwoSided", "TFCE", "ClusterForming", "TieTolerance")}
        if sidecar.get("_kind") in FWE_KINDS:
            facts["fwe"].append(FWE_KINDS[sidecar["_kind"]])
            facts["fwe_alpha"] = sidecar.get("FWEAlpha")
        atlas = sidecar.get("Atlas")
        if isinstance(atlas, dict):
            atlas = atlas.get("Name") or atlas.get("Atlas") or next(iter(atlas.values()), None)
        facts["atlas"] = facts["atlas"] or (str(atlas) if atlas else None)
    facts["fwe"] = [k for k in FWE_KINDS.values() if k in facts["fwe"]]
    return facts


def _cell_facts(output_dir, cell, contrast_order):
    """One GroupBy cell (:class:`~bids_group_app.outputs.naming.CellNames`): inputs, design, mask, smoothing, contrasts."""
    design = _read_json(output_dir / cell.design(".json"))
    by_label = {}
    for label, names in contrast_files(output_dir, cell).items():
        for name in names:
            sidecar = _read_json(output_dir / name.relpath)
            sidecar["_kind"] = name.get("thresh")
            by_label.setdefault(label, []).append(sidecar)
    contrasts = []
    for label, sidecars in by_label.items():
        facts = _contrast_facts(sidecars)
        for kind in sorted({s["_kind"] for s in sidecars if s["_kind"]}):
            table = output_dir / cell.clusters(label, kind)
            if not facts["atlas"] and table.exists() and "aal" in table.read_text().split("\n", 1)[0].lower():
                facts["atlas"] = "AAL3"
        contrasts.append(facts)
    rank = {name: i for i, name in enumerate(contrast_order)}
    contrasts.sort(key=lambda c: (rank.get(c["name"], len(rank)), c["name"]))
    clusters, nuisance = {}, {}
    for c in contrasts:
        perm = c["permutation"] or {}
        if perm.get("ClusterForming"):
            key = (c["test"], round(perm["ClusterForming"]["StatisticThreshold"], 6))
            clusters.setdefault(key, []).append(c["name"])
        if perm.get("FreedmanLane"):
            nuisance.setdefault(perm.get("NuisanceRank"), []).append(c["name"])
    columns = design.get("Columns", [])
    subjects = [c for c in columns if c.startswith("sub-")]
    dropped = {}
    for entry in design.get("DroppedSubjects", []):
        dropped.setdefault(entry.get("reason", "no reason recorded"), []).append(entry["subject"])
    inputs = design.get("Inputs", [])
    return {
        "group_by": design.get("GroupBy") or {},
        "n_maps": design.get("NumberOfMaps", len(inputs)),
        "n_subjects": len(design.get("Subjects", [])),
        "datasets": sorted({i.split(":")[1] or "OUTPUT_DIR" for i in inputs if i.startswith("bids:")}),
        "inputs": inputs,
        "dropped": [{"reason": r, "subjects": s} for r, s in dropped.items()],
        "n_dropped": sum(len(s) for s in dropped.values()),
        "columns": [c for c in columns if c not in subjects],
        "subject_columns": subjects,
        "rank": design.get("Rank"), "dof": design.get("DegreesOfFreedom"),
        "mask": design.get("Mask") or {},
        "smoothing": design.get("SmoothingFWHM"),
        "n_resampled": len(design.get("ResampledInputs", [])),
        "contrasts": contrasts,
        "permutation": next((c["permutation"] for c in contrasts if c["permutation"]), None),
        "cluster_thresholds": [{"test": t, "value": v, "contrasts": n} for (t, v), n in clusters.items()],
        "nuisance": [{"rank": r, "contrasts": n} for r, n in nuisance.items()],
        "fwe": [k for k in FWE_KINDS.values() if any(k in c["fwe"] for c in contrasts)],
        "fwe_alpha": next((c["fwe_alpha"] for c in contrasts if c["fwe_alpha"] is not None), None),
        "versions": design.get("SoftwareVersions", {}),
        "without_maps": design.get("ParticipantsWithoutMaps", []),
        "without_row": design.get("SubjectsWithoutParticipantsRow", []),
    }


def _inference(cell):
    """What a cell's inference paragraphs say, without the dof-dependent thresholds."""
    keys = ("HeightControl", "Alpha", "ClusterExtentThreshold", "TwoSided")
    parametric = [tuple((c["parametric"] or {}).get(k) for k in keys) for c in cell["contrasts"]]
    permutation = {k: v for k, v in (cell["permutation"] or {}).items() if k not in ("ClusterForming", "Shuffling")}
    shuffling = {k: v for k, v in ((cell["permutation"] or {}).get("Shuffling") or {}).items()
                 if k != "NumberOfDistinctShufflings"}
    forming = {k: v for k, v in ((cell["permutation"] or {}).get("ClusterForming") or {}).items()
               if k != "StatisticThreshold"}
    return (parametric, permutation, shuffling, forming, [(g["rank"], g["contrasts"]) for g in cell["nuisance"]],
            cell["fwe"], cell["fwe_alpha"])


def _contrast_order(node):
    names = [str(c.get("Name")) for c in node.get("Contrasts", [])]
    dummy = node.get("DummyContrasts")
    if isinstance(dummy, dict):
        names += ["intercept" if c in (1, "1") else str(c) for c in dummy.get("Contrasts", [])]
    return names


def _model_facts(output_dir, model_path):
    """The facts of one saved model and its cells (raises UnreadableResultsError)."""
    with unreadable_results(model_path.name):
        model = _read_json(model_path)
        if not isinstance(model, dict):
            raise ValueError("not a BIDS Stats Models document")
        nodes = []
        label = model_of(model_path)
        for node in dataset_nodes(model):
            cells = [_cell_facts(output_dir, c, _contrast_order(node)) for c in model_cells(output_dir, label, node.get("Name"))]
            if cells:
                design = [(c["columns"], [(k["name"], k["test"], k["rows"]) for k in c["contrasts"]]) for c in cells]
                nodes.append({"name": node.get("Name"), "group_by": node.get("GroupBy", []),
                              "same_design": all(d == design[0] for d in design),
                              "same_inference": len(cells) > 1 and all(_inference(c) == _inference(cells[0])
                                                                       for c in cells),
                              "transformations": (node.get("Transformations") or {}).get("Instructions", []),
                              "filter": node.get("Filter") or {}, "cells": cells})
        fitted = fitted_nodes(output_dir, label, {
            node["name"]: [{"NumberOfMaps": c["n_maps"], "Inputs": c["inputs"]} for c in node["cells"]] for node in nodes})
    return {"name": model.get("Name"), "file": model_path.name, "nodes": nodes,
            "description": model.get("Description", ""), "input": model.get("Input") or {},
            "graph": model_graph(model, fitted)}


def collect(output_dir, strict=True):
    """Gather what ran from the files of OUTPUT_DIR.

    Parameters
    ----------
    output_dir : str, pathlib.Path or bids_group_app.outputs.view.OutputView
    strict : bool or collection of str
        A model whose files cannot be read (invalid JSON, missing file) is
        an error (:class:`~bids_group_app.errors.UnreadableResultsError`
        naming the file); with ``strict=False`` it is left out of the text
        with a warning, so that one model's bad files never break another
        model's run; a collection of model labels: those must be readable,
        the others may be left out.

    Returns
    -------
    dict
        The template context: ``models`` (each with its dataset-level
        ``nodes`` and their ``cells``), ``config`` (the latest
        ``logs/config-*.json``), ``versions``, ``description``.
    """
    output_dir = as_view(output_dir)
    config_path = latest_config(output_dir)
    config = read_optional_result(config_path, strict is True)
    description = read_optional_result(output_dir / "dataset_description.json", strict is True)
    models = []
    for model_path in saved_models(output_dir):
        try:
            model = _model_facts(output_dir, model_path)
        except UnreadableResultsError as err:
            if strict is True or (strict and model_of(model_path) in strict):
                raise
            LOGGER.warning("the methods text leaves out %s: %s", model_path.name, err)
            continue
        if model["nodes"]:
            models.append(model)
    cells = [c for m in models for n in m["nodes"] for c in n["cells"]]
    return {
        "models": models, "cells": cells, "config": config,
        "config_file": f"logs/{config_path.name}" if config_path else None,
        "versions": (cells[0]["versions"] if cells else {}) or config.get("SoftwareVersions", {}),
        "description": description,
        "any_permutation": any(c["permutation"] for c in cells),
        "atlases": sorted({k["atlas"] for c in cells for k in c["contrasts"] if k["atlas"]}),
        "datasets": sorted({d for c in cells for d in c["datasets"]}),
    }


# --------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------
class _Raw(str):
    """Markdown that the template must not escape (citations, code spans)."""


class Bibliography:
    """The entries of ``references.bib`` and the citations a rendering makes.

    Parameters
    ----------
    path : pathlib.Path
        A BibTeX file with one ``field = {value},`` per line.
    """

    def __init__(self, path):
        self.entries = {}
        for match in re.finditer(r"^@(\w+)\{([^,\s]+),\n(.*?)^\}", Path(path).read_text(), re.M | re.S):
            fields = dict(re.findall(r"^\s*(\w+)\s*=\s*\{(.*)\},?\s*$", match.group(3), re.M))
            self.entries[match.group(2)] = {"type": match.group(1), "fields": fields, "raw": match.group(0)}
        self.cited = []

    def label(self, key):
        """In-text label: ``Abraham et al., 2014``, ``Freedman & Lane, 1983``."""
        fields = self.entries[key]["fields"]
        if "shorthand" in fields:
            return fields["shorthand"]
        names = [a.split(",")[0].strip(" {}") for a in fields["author"].split(" and ")]
        if len(names) == 2 and names[1] != "others":
            who = f"{names[0]} & {names[1]}"
        else:
            who = names[0] + (" et al." if len(names) > 1 else "")
        return f"{who}, {fields.get('year', 'n.d.')}"

    def cite(self, *keys):
        """Markdown citation ``([Label](#key); ...)``; records the keys."""
        for key in keys:
            if key not in self.entries:
                raise KeyError(f"citation key {key!r} is not in references.bib")
            if key not in self.cited:
                self.cited.append(key)
        return _Raw("(" + "; ".join(f"[{self.label(k)}](#{k})" for k in keys) + ")")

    def reference(self, key):
        """One formatted reference (markdown), e.g. for the list at the end."""
        fields = {k: re.sub(r"[{}]", "", v).replace("\\&", "&") for k, v in self.entries[key]["fields"].items()}
        authors = []
        for name in fields.get("author", "").split(" and "):
            family, _, given = (p.strip() for p in name.partition(","))
            initials = " ".join("-".join(f"{part[0]}." for part in word.split("-")) for word in given.split())
            authors.append("et al." if family == "others" else f"{family}, {initials}".strip(", "))
        if len(authors) > 7:
            authors = authors[:6] + ["et al."]
        if len(authors) > 1 and authors[-1] != "et al.":
            authors[-2:] = [f"{authors[-2]}, & {authors[-1]}"]
        text = ", ".join(authors)
        text += f" ({fields.get('year', 'n.d.')}). {_escape(fields['title'])}."
        venue = fields.get("journal") or fields.get("booktitle") or fields.get("howpublished")
        if venue:
            text += f" *{_escape(venue)}*"
            for part, fmt in (("volume", ", {}"), ("number", "({})"), ("pages", ", {}")):
                if part in fields:
                    text += fmt.format(fields[part].replace("--", "–"))
            text += "."
        if "doi" in fields:
            text += f" [doi:{fields['doi']}](https://doi.org/{fields['doi']})"
        elif "url" in fields:
            text += f" [{fields['url']}]({fields['url']})"
        return _Raw(text)

    def references(self):
        """The cited entries, sorted by label: dicts with ``key`` and ``text``."""
        return [{"key": k, "text": self.reference(k)} for k in sorted(self.cited, key=lambda k: self.label(k).lower())]

    def bibtex(self):
        """BibTeX of the cited entries only."""
        return "\n\n".join(self.entries[k]["raw"] for k in sorted(self.cited)) + "\n"


# --------------------------------------------------------------------------
# Markdown text and its HTML
# --------------------------------------------------------------------------
def _one_line(value):
    """``value`` as text with its line breaks made spaces: a value cannot open a markdown block."""
    return re.sub(r"\s*[\r\n]+\s*", " ", str(value))


def _escape(value):
    """A value as markdown text: its markup characters backslash-escaped, on one line."""
    return re.sub(r"([\\`*_\[\]<])", r"\\\1", _one_line(value))


def _finalize(value):
    if value is None:
        return ""
    return value if isinstance(value, _Raw) else _escape(value)


def _code(value):
    return _Raw(f"`{_one_line(value).replace('`', chr(39))}`")


def render_markdown(context, bibliography):
    """Render ``citation.md.j2`` with the facts and the ``cite`` helper.

    Parameters
    ----------
    context : dict
        From :func:`collect`.
    bibliography : Bibliography
        Records the citations the text makes.

    Returns
    -------
    str
    """
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(str(template_dir())), trim_blocks=True, lstrip_blocks=True,
                      extensions=["jinja2.ext.do"], finalize=_finalize, undefined=StrictUndefined)
    env.filters.update(code=_code, num=_number,
                       codes=lambda values: _Raw(_join([_code(v) for v in values])),
                       join_and=lambda values: _Raw(_join([_finalize(v) for v in values])))
    text = env.get_template("citation.md.j2").render(
        **context, cite=bibliography.cite, references=bibliography.references, raw=_Raw)
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def _join(items):
    """``a``, ``a and b``, ``a, b and c``."""
    items = list(items)
    if len(items) < 2:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


_INLINE = re.compile(r"""(?P<code>`[^`]*`)|(?P<esc>\\[\\`*_\[\]<])|(?P<anchor><a\ id="[\w-]+"></a>)
    |\[(?P<text>[^\]]*)\]\((?P<url>[^)\s]+)\)|\*\*(?P<strong>.+?)\*\*|\*(?P<em>[^*]+?)\*""", re.X)


def _inline(text):
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[pos:m.start()], quote=False))
        if m.group("code"):
            out.append(f"<code>{html.escape(m.group('code')[1:-1], quote=False)}</code>")
        elif m.group("esc"):
            out.append(html.escape(m.group("esc")[1], quote=False))
        elif m.group("anchor"):
            out.append(m.group("anchor"))
        elif m.group("url"):
            out.append(f'<a href="{html.escape(m.group("url"))}">{_inline(m.group("text"))}</a>')
        elif m.group("strong"):
            out.append(f"<strong>{_inline(m.group('strong'))}</strong>")
        else:
            out.append(f"<em>{_inline(m.group('em'))}</em>")
        pos = m.end()
    return "".join(out) + html.escape(text[pos:], quote=False)


def markdown_to_html(text):
    """The markdown subset of the templates as HTML.

    Headings (``#``), paragraphs, ``- `` lists, code spans, ``**bold**``,
    ``*italic*``, ``[links](url)``, backslash escapes and empty
    ``<a id="..."></a>`` anchors; anything else is text.

    Parameters
    ----------
    text : str

    Returns
    -------
    str
    """
    blocks, paragraph, items = [], [], []

    def flush():
        if paragraph:
            blocks.append(f"<p>{_inline(' '.join(paragraph))}</p>")
            paragraph.clear()
        if items:
            blocks.append("<ul>\n" + "\n".join(f"<li>{_inline(i)}</li>" for i in items) + "\n</ul>")
            items.clear()

    for line in text.splitlines():
        heading = re.match(r"^(#{1,6})\s+(.*)$", line)
        if not line.strip():
            flush()
        elif heading:
            flush()
            level = len(heading.group(1))
            blocks.append(f"<h{level}>{_inline(heading.group(2).strip())}</h{level}>")
        elif line.startswith("- "):
            if paragraph:
                flush()
            items.append(line[2:].strip())
        elif items and line.startswith("  "):
            items[-1] += " " + line.strip()
        else:
            if items:
                flush()
            paragraph.append(line.strip())
    flush()
    return "\n".join(blocks) + "\n"


def write_boilerplate(output_dir, target_dir=None, strict=True):
    """Write ``logs/CITATION.md``, ``.html`` and ``.bib`` for OUTPUT_DIR.

    Reads only the files of OUTPUT_DIR (see :func:`collect`), so it can
    re-render an earlier run (``--reports-only``).

    Parameters
    ----------
    output_dir : str, pathlib.Path or bids_group_app.outputs.view.OutputView
        The results to describe (a view: with a run's staged files).
    target_dir : str or pathlib.Path, optional
        Where to write ``logs/CITATION.*`` (default: OUTPUT_DIR), e.g. the
        staging folder of an :class:`~bids_group_app.outputs.writer.OutputWriter`.
    strict : bool or collection of str
        See :func:`collect`.

    Returns
    -------
    list of pathlib.Path
        The written files.
    """
    from jinja2 import Environment, FileSystemLoader, select_autoescape
    from markupsafe import Markup

    output_dir = as_view(output_dir)
    context = collect(output_dir, strict)
    bibliography = Bibliography(template_dir() / "references.bib")
    text = render_markdown(context, bibliography)
    env = Environment(loader=FileSystemLoader(str(template_dir())), autoescape=select_autoescape(["html", "j2"]))
    page = env.get_template("citation.html.j2").render(body=Markup(markdown_to_html(text)), **context)
    logs = Path(target_dir if target_dir is not None else output_dir.root) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in (("CITATION.md", text), ("CITATION.html", page), ("CITATION.bib", bibliography.bibtex())):
        with writing(logs / name):
            (logs / name).write_text(content, encoding="utf-8")
        written.append(logs / name)
    return written
