"""Methods boilerplate (logs/CITATION.md, .html, .bib) rendered from OUTPUT_DIR.

Each module fixture runs the CLI once on a generated dataset (``--n-perm``
small) and renders the boilerplate; the tests check that the text states the
numbers of the sidecars, cites exactly what it uses, and that the HTML is
well-formed and carries the same text.
"""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bids_group_app.reporting.boilerplate import Bibliography, markdown_to_html, template_dir, write_boilerplate
from bids_group_app.stats.permutation import TIE_TOLERANCE

PERMUTATION_KEYS = {"freedman1983", "winkler2014", "winkler2015", "smith2009", "nichols2002", "bullmore1999"}
SELECTED = ["01", "02", "03", "04", "05", "06"]
RM_ANOVA = [
    "--rm-anova", "desc=IniFF,ImmFF,DelFF,IniUF,ImmUF,DelUF,IniSF,ImmSF,DelSF",
    "--contrast", "FacesScrambled=1/6,1/6,1/6,1/6,1/6,1/6,-1/3,-1/3,-1/3",
    "--contrast", "Interaction=F:1/2,-1/2,0,1/2,-1/2,0,-1,1,0;1,-1,0,-1,1,0,0,0,0",
]


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------
def _render(run_cli, bids_dir, out, *options):
    assert run_cli([bids_dir, out, "group", "--quiet", *options]) == 0
    paths = write_boilerplate(out)
    return {p.suffix: p.read_text(encoding="utf-8") for p in paths}


def _design(out):
    [path] = sorted(Path(out).glob("node-*/*design.json"))
    return json.loads(path.read_text())


def _sidecar(out, pattern):
    return json.loads(next(Path(out).glob(f"node-*/{pattern}")).read_text())


def _md_keys(md):
    return set(re.findall(r"\]\(#([\w-]+)\)", md))


def _bib_keys(bib):
    return set(re.findall(r"^@\w+\{([^,\s]+),", bib, re.M))


def _md_text(md):
    """The visible text of the markdown subset (an independent, rough reader)."""
    md = re.sub(r'<a id="[^"]*"></a>', "", md)
    lines = [re.sub(r"^(#{1,6}\s+|- )", "", line) for line in md.splitlines()]
    out = []
    for part in re.split(r"(`[^`]*`)", "\n".join(lines)):
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            out.append(part[1:-1])
        else:
            part = re.sub(r"\[([^\]]*)\]\([^)\s]+\)", r"\1", part)
            out.append(re.sub(r"\\(.)|\*+", lambda m: m.group(1) or "", part))
    return " ".join("".join(out).split())


class _Page(HTMLParser):
    """Checks that tags nest and close; collects the text of <body>."""

    VOID = {"meta", "br", "hr", "img", "link", "input"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.text, self.in_body = [], [], [], False

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)
        self.in_body = self.in_body or tag == "body"

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()
        if tag == "body":
            self.in_body = False

    def handle_data(self, data):
        if self.in_body:
            self.text.append(data)


def _parse(page):
    parser = _Page()
    parser.feed(page)
    parser.close()
    return parser


# --------------------------------------------------------------------------
# Fixtures: one CLI run each
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def perm_run(run_cli, nilearn_dataset, tmp_path_factory):
    """Regression with a covariate that has n/a (two subjects dropped), TFCE and cluster inference."""
    out = tmp_path_factory.mktemp("boilerplate") / "perm"
    files = _render(run_cli, nilearn_dataset["root"], out, "--filter", "contrast=motor", "--covariates", "age", "score",
                    "--smoothing-fwhm", "6", "--n-perm", "60", "--tfce", "--tfce-e", "0.6", "--tfce-h", "1.5",
                    "--cluster-forming-p", "0.005", "--seed", "3", "--one-sided")
    return out, files


@pytest.fixture(scope="module")
def parametric_run(run_cli, nilearn_dataset, tmp_path_factory):
    """One-sample test, parametric only, Bonferroni."""
    out = tmp_path_factory.mktemp("boilerplate") / "parametric"
    return out, _render(run_cli, nilearn_dataset["root"], out, "--filter", "contrast=motor",
                        "--height-control", "bonferroni", "--alpha", "0.05", "--one-sided")


@pytest.fixture(scope="module")
def selected_run(run_cli, nilearn_dataset, tmp_path_factory):
    """One-sample test of six subjects chosen with --participant-label (parametric only)."""
    out = tmp_path_factory.mktemp("boilerplate") / "selected"
    return out, _render(run_cli, nilearn_dataset["root"], out, "--filter", "contrast=motor",
                        "--participant-label", *SELECTED)


@pytest.fixture(scope="module")
def model_selected_run(run_cli, nilearn_dataset, tmp_path_factory):
    """The same six subjects chosen by the model's Input ``subject`` instead."""
    folder = tmp_path_factory.mktemp("boilerplate")
    model = folder / "model_smdl.json"
    model.write_text(json.dumps({
        "Name": "chosen", "BIDSModelVersion": "1.0.0",
        "Input": {"subject": SELECTED, "contrast": ["motor"], "stat": ["effect"]},
        "Nodes": [{"Level": "Dataset", "Name": "chosen", "Model": {"Type": "glm", "X": [1]},
                   "DummyContrasts": {"Contrasts": ["intercept"], "Test": "t"}}]}))
    out = folder / "out"
    return out, _render(run_cli, nilearn_dataset["root"], out, "--model", model)


@pytest.fixture(scope="module")
def anova_run(run_cli, seed004_dataset, tmp_path_factory):
    """Repeated-measures ANOVA: subject columns, F-test, permutations within subjects."""
    out = tmp_path_factory.mktemp("boilerplate") / "anova"
    return out, _render(run_cli, seed004_dataset["root"], out, *RM_ANOVA, "--height-control", "fdr",
                        "--alpha", "0.05", "--n-perm", "40", "--cluster-forming-p", "0.001")


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------
def test_files_are_written_in_logs(perm_run):
    out, files = perm_run
    for name in ("CITATION.md", "CITATION.html", "CITATION.bib"):
        assert (out / "logs" / name).stat().st_size > 0
    assert set(files) == {".md", ".html", ".bib"}


def test_text_states_inputs_and_dropped_subjects(perm_run):
    out, files = perm_run
    md, design = files[".md"], _design(out)
    assert f"maps of {len(design['Subjects'])} subjects ({design['NumberOfMaps']} maps" in md
    assert design["DroppedSubjects"], "the dataset has n/a scores"
    dropped = [f"sub-{d['subject']}" for d in design["DroppedSubjects"]]
    assert f"{len(dropped)} were excluded" in md
    assert " and ".join(dropped) in md
    for entry in design["DroppedSubjects"]:
        assert entry["reason"] in md
    for dataset in {i.split(":")[1] for i in design["Inputs"]}:
        assert f"`{dataset}`" in md
    assert "`stat` = `effect`" in md and "`contrast` = `motor`" in md
    assert f"{design['Mask']['NumberOfVoxels']} voxels" in md
    assert "6 mm full width at half maximum" in md
    assert f"rank {design['Rank']} and {design['DegreesOfFreedom']} residual degrees of freedom" in md


def test_text_states_design_contrasts_and_versions(perm_run):
    out, files = perm_run
    md = files[".md"]
    assert "the columns `intercept`, `age` and `score`" in md
    assert "`score` (t-test of `score`)" in md
    versions = _design(out)["SoftwareVersions"]
    for package, version in versions.items():
        assert version in md, package
    assert f"*bids_group_app* {versions['bids_group_app']}" in md
    assert f"nilearn {versions['nilearn']} ([Abraham et al., 2014](#abraham2014))" in md
    assert f"PyBIDS {versions['pybids']} ([Yarkoni et al., 2019](#yarkoni2019))" in md


def test_text_states_permutation_settings(perm_run):
    out, files = perm_run
    md = files[".md"]
    perm = _sidecar(out, "*contrast-score_stat-logpmaxtfce_statmap.json")
    n = perm["NumberOfPermutations"]
    assert n == 60 and not perm["Shuffling"]["Exhaustive"]
    assert f"{n} random shufflings (seed 3)" in md
    assert "permutations combined with sign-flips" in md  # Scheme "both"
    assert "without exchangeability blocks" in md
    assert perm["FreedmanLane"] and f"rank {perm['NuisanceRank']})" in md
    assert "Freedman–Lane procedure ([Freedman & Lane, 1983](#freedman1983)" in md
    assert "E = 0.6, H = 1.5 and 6-connectivity" in md
    assert "exact integral" in md and "[Smith & Nichols, 2009](#smith2009)" in md
    assert "clusters were formed at an uncorrected p < 0.005" in md
    t = perm["ClusterForming"]["StatisticThreshold"]
    assert f"t > {t:.3g}" in md
    assert "voxel statistic, TFCE, cluster size and cluster mass" in md
    assert "FWE-corrected p ≤ 0.05" in md
    assert f"N = {n}" in md and f"1/{n + 1}" in md
    assert "uncorrected p < 0.001 (one-sided; z > 3.09)" in md  # the default fpr threshold


def test_parametric_only_run_mentions_no_permutation(parametric_run):
    out, files = parametric_run
    md, bib = files[".md"], files[".bib"]
    for word in ("permutation", "shuffl", "Freedman", "TFCE", "FWE", "exchangeab"):
        assert word.lower() not in md.lower(), word
    assert not PERMUTATION_KEYS & (_md_keys(md) | _bib_keys(bib))
    z = _sidecar(out, "*stat-z_thresh-bonferroni_statmap.json")["Threshold"]["Value"]
    assert f"Bonferroni-corrected p < 0.05 across the voxels of the mask (one-sided; z > {z:.3g})" in md
    assert "benjamini1995" not in bib


def test_participants_without_maps_are_reported_without_a_selection(parametric_run, nilearn_dataset):
    """Guard: sub-17 has a participants.tsv row and no map, and no subject selection hides it."""
    out, files = parametric_run
    extra = nilearn_dataset["participant_without_maps"]
    assert _design(out)["ParticipantsWithoutMaps"] == [extra]
    assert f"without any selected map (sub-{extra}) did not enter the analysis" in files[".md"]


@pytest.mark.parametrize("run", ["selected_run", "model_selected_run"])
def test_subjects_left_out_by_the_selection_are_not_said_to_lack_maps(run, request, nilearn_dataset):
    """Subjects outside --participant-label (or the model's Input subject) have maps: they were not chosen."""
    out, files = request.getfixturevalue(run)
    md, design = files[".md"], _design(out)
    assert design["Subjects"] == SELECTED
    assert design["ParticipantsWithoutMaps"] == []
    assert "without any selected map" not in md
    chosen = ", ".join(f"sub-{s}" for s in SELECTED[:-1]) + f" and sub-{SELECTED[-1]}"
    assert f"The analysis was restricted to the participants {chosen}." in md
    for subject in (set(nilearn_dataset["subjects"]) | {nilearn_dataset["participant_without_maps"]}) - set(SELECTED):
        assert f"sub-{subject}" not in md


def test_tie_tolerance_is_stated_from_the_engine_constant(perm_run, tmp_path):
    out, files = perm_run
    exponent = int(f"{TIE_TOLERANCE:e}".split("e")[1])
    assert f"{TIE_TOLERANCE:e}".startswith("1.000000e")
    assert f"10^{exponent}" in files[".md"] and "10^-6" not in files[".md"]
    perm = _sidecar(out, "*contrast-score_stat-logp_statmap.json")
    assert perm["TieTolerance"] == TIE_TOLERANCE
    assert f"{TIE_TOLERANCE:g}" in perm["PValueConvention"]
    # the text follows the value recorded with the maps (not a copy in the template)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for path in copy.glob("node-*/*_statmap.json"):
        sidecar = json.loads(path.read_text())
        if "TieTolerance" in sidecar:
            path.write_text(json.dumps({**sidecar, "TieTolerance": 1e-7}))
    md = write_boilerplate(copy)[0].read_text(encoding="utf-8")
    assert "10^-7" in md and f"10^{exponent}" not in md


def test_rm_anova_blocks_f_test_and_fdr(anova_run):
    out, files = anova_run
    md, bib = files[".md"], files[".bib"]
    assert "one indicator column per subject (16 columns)" in md
    assert "(144 maps, 9 per subject" in md
    assert "restricted to exchangeability blocks defined by `subject`" in md
    assert "winkler2015" in _bib_keys(bib)
    assert "permutations of the observations" in md
    f = _sidecar(out, "*contrast-Interaction_stat-F_statmap.json")
    assert f"`Interaction`: F with {f['NumeratorDegreesOfFreedom']} and {f['DegreesOfFreedom']} degrees of freedom" in md
    assert "`Interaction` (F-test of the 2 rows `1/2*IniFF - 1/2*ImmFF + 1/2*IniUF - 1/2*ImmUF - IniSF + ImmSF`" in md
    assert "`FacesScrambled` (t-test of `1/6*IniFF + 1/6*ImmFF" in md
    assert "false discovery rate ([Benjamini & Hochberg, 1995](#benjamini1995)) of q < 0.05" in md
    assert "benjamini1995" in _bib_keys(bib)
    assert "No subject with a selected map was excluded." in md


@pytest.mark.parametrize("run", ["perm_run", "parametric_run", "anova_run"])
def test_bib_holds_exactly_the_cited_keys(run, request):
    _, files = request.getfixturevalue(run)
    md, bib = files[".md"], files[".bib"]
    keys = _md_keys(md)
    assert keys and keys == _bib_keys(bib)
    for key in keys:  # each citation links to its entry of the reference list
        assert f'<a id="{key}"></a>' in md
    assert {"abraham2014", "yarkoni2019", "gorgolewski2016", "bidsstatsmodels"} <= keys
    assert all(re.search(r"doi = \{10\.", block) or "url = {" in block for block in bib.split("\n\n@"))


@pytest.mark.parametrize("run", ["perm_run", "parametric_run", "anova_run"])
def test_html_is_well_formed_with_the_same_text(run, request):
    _, files = request.getfixturevalue(run)
    page = _parse(files[".html"])
    assert not page.errors and not page.stack
    assert " ".join("".join(page.text).split()) == _md_text(files[".md"])
    for key in _md_keys(files[".md"]):
        assert f'<a href="#{key}">' in files[".html"] and f'<a id="{key}"></a>' in files[".html"]


def test_rerendering_reads_only_output_dir(perm_run, tmp_path):
    out, files = perm_run
    copy = tmp_path / "moved"
    shutil.copytree(out, copy)
    for name in ("CITATION.md", "CITATION.html", "CITATION.bib"):
        (copy / "logs" / name).unlink()
    staging = tmp_path / "staging"
    written = write_boilerplate(copy, target_dir=staging)
    assert [p.parent for p in written] == [staging / "logs"] * 3
    assert (staging / "logs" / "CITATION.md").read_text(encoding="utf-8") == files[".md"]


def test_atlas_labels_cite_aal3(perm_run, tmp_path):
    out, _ = perm_run
    sidecar = next(out.glob("node-*/*contrast-score_stat-z_thresh-fpr_statmap.json"))
    assert json.loads(sidecar.read_text())["Atlas"]["Atlas"] == "AAL3"   # written by the run
    copy = tmp_path / "atlas"
    shutil.copytree(out, copy)
    md = write_boilerplate(copy)[0].read_text(encoding="utf-8")
    assert "labelled with the AAL3 ([Rolls et al., 2020](#rolls2020)) atlas" in md
    assert "rolls2020" in _bib_keys((copy / "logs" / "CITATION.bib").read_text())


def test_markdown_to_html_subset():
    html = markdown_to_html("# Title\n\nA *b* **c** `x_1 < 2` [d](#k) \\* e & f\nnext line\n\n"
                            '- <a id="k"></a>item\n  continued\n- two\n')
    assert html == ("<h1>Title</h1>\n"
                    '<p>A <em>b</em> <strong>c</strong> <code>x_1 &lt; 2</code> <a href="#k">d</a> * e &amp; f next line</p>\n'
                    '<ul>\n<li><a id="k"></a>item continued</li>\n<li>two</li>\n</ul>\n')


def test_bibliography_labels_and_templates_ship():
    folder = template_dir()
    assert {"citation.md.j2", "citation.html.j2", "references.bib"} <= {p.name for p in folder.iterdir()}
    bib = Bibliography(folder / "references.bib")
    assert bib.label("abraham2014") == "Abraham et al., 2014"
    assert bib.label("freedman1983") == "Freedman & Lane, 1983"
    assert bib.label("mckinney2010") == "McKinney, 2010"
    assert bib.cite("smith2009", "nichols2002") == "([Smith & Nichols, 2009](#smith2009); [Nichols & Holmes, 2002](#nichols2002))"
    assert bib.cited == ["smith2009", "nichols2002"]
    assert _bib_keys(bib.bibtex()) == {"smith2009", "nichols2002"}
    with pytest.raises(KeyError):
        bib.cite("nope")
