"""User strings never become code: names carrying script and TeX payloads.

One real subprocess runs a model whose name, description, node name and
contrast name, a participants.tsv column name (a covariate of the design)
and a participants.tsv value (a GroupBy cell) carry HTML/script payloads
and ``$`` signs (matplotlib mathtext). The run must succeed, and in a real
headless Chromium the report, every interactive viewer page and the methods
page must run none of the payloads (each payload sets ``window.__xss``)
and show them as text.
"""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

IMG = '<img src=x onerror="window.__xss=1">'
SCRIPT = "</script><script>window.__xss=1</script>"
TEX = " $\\frac{$"  # two dollars: matplotlib would parse "\frac{" as (invalid) mathtext
COLUMN = "age" + IMG + TEX
NAMES = {
    "model": "m" + SCRIPT + TEX,
    "description": IMG + SCRIPT + " a$b",
    "node": "n" + IMG + " a$b",
    "contrast": SCRIPT + IMG + TEX,
    "site": "A" + SCRIPT + "$x$",
}


def _command():
    script = Path(sys.executable).with_name("bids_group_app")
    return [str(script)] if script.is_file() and os.access(script, os.X_OK) else [sys.executable, "-m", "bids_group_app"]


def _hostile_dataset(source, target):
    """Copy ``source`` with the payloads in a participants column name and in the site values."""
    shutil.copytree(source, target)
    with open(target / "participants.tsv", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    header = rows[0]
    header[header.index("age")] = COLUMN
    site = header.index("site")
    for row in rows[1:]:
        row[site] = NAMES["site"] if row[site] == "A" else row[site]
    (target / "participants.tsv").write_text("\n".join("\t".join(r) for r in rows) + "\n")
    model = {
        "Name": NAMES["model"], "BIDSModelVersion": "1.0.0", "Description": NAMES["description"],
        "Input": {"contrast": ["motor"], "stat": ["effect"]},
        "Nodes": [{"Level": "Dataset", "Name": NAMES["node"], "GroupBy": ["contrast", "site"],
                   "Model": {"Type": "glm", "X": [1, COLUMN]},
                   "Contrasts": [{"Name": NAMES["contrast"], "ConditionList": [1, COLUMN],
                                  "Weights": [0, 1], "Test": "t"}]}],
    }
    path = target.parent / "model.json"
    path.write_text(json.dumps(model))
    return path


@pytest.fixture(scope="module")
def hostile_run(example_dataset, tmp_path_factory):
    """The hostile run, as a real process: (completed process, OUTPUT_DIR)."""
    root = tmp_path_factory.mktemp("hostile")
    model = _hostile_dataset(Path(example_dataset("nilearn")["root"]), root / "bids")
    out = root / "out"
    proc = subprocess.run([*_command(), str(root / "bids"), str(out), "group", "--model", str(model),
                           "--n-perm", "20", "--quiet"], capture_output=True, text=True, timeout=600)
    return proc, out


def test_hostile_names_run_and_write_reports(hostile_run):
    proc, out = hostile_run
    assert proc.returncode == 0, proc.stderr
    assert "error" not in proc.stderr
    assert len(list(out.glob("model-*_report.html"))) == 1
    assert len(list(out.glob("figures/*_viewer.html"))) == 3  # one per site
    assert (out / "logs" / "CITATION.html").is_file()


def _check_page(chromium, page, texts):
    chromium.load(page.resolve().as_uri(), settle=1.0)
    assert chromium.evaluate("typeof window.__xss") == "undefined", f"a payload ran in {page.name}"
    assert chromium.errors() == [], page.name
    shown = chromium.evaluate("document.title + '\\n' + document.body.innerText")
    for text in texts:
        assert text in shown, f"{text!r} is not shown as text in {page.name}"


def test_report_runs_no_payload_and_shows_the_names(hostile_run, chromium):
    proc, out = hostile_run
    assert proc.returncode == 0, proc.stderr
    (report,) = out.glob("model-*_report.html")
    # the model JSON is shown as JSON text: the description with its quotes escaped
    _check_page(chromium, report, [NAMES["model"], NAMES["node"], NAMES["contrast"], COLUMN,
                                   json.dumps(NAMES["description"])])


def test_viewer_pages_run_no_payload(hostile_run, chromium):
    proc, out = hostile_run
    assert proc.returncode == 0, proc.stderr
    viewers = sorted(out.glob("figures/*_viewer.html"))
    assert viewers
    for viewer in viewers:
        _check_page(chromium, viewer, [f"{NAMES['contrast']}: z map"])
        assert chromium.evaluate("document.title") == f"{NAMES['contrast']}: z map"


def test_methods_page_runs_no_payload(hostile_run, chromium):
    proc, out = hostile_run
    assert proc.returncode == 0, proc.stderr
    _check_page(chromium, out / "logs" / "CITATION.html", [NAMES["model"], NAMES["node"], NAMES["contrast"]])


@pytest.mark.parametrize("name", ["a$b$", "$\\frac{$", "a\\$b$", "$x^2$ and $y$", "50$"])
def test_plain_text_draws_the_name_literally(name):
    """A title drawn from :func:`plain_text` looks like the name drawn with mathtext off (matplotlib's own switch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from bids_group_app.reporting.report import plain_text

    def pixels(text, **options):
        figure = plt.figure(figsize=(3, 0.5), dpi=72)
        figure.text(0.05, 0.3, text, **options)
        figure.canvas.draw()
        image = np.asarray(figure.canvas.buffer_rgba()).copy()
        plt.close(figure)
        return image

    literal = pixels(name, parse_math=False)
    assert np.array_equal(pixels(plain_text(name)), literal)
    if name.count("$") % 2 == 0 and "\\" not in name and name != "$\\frac{$":
        assert not np.array_equal(pixels(name), literal)  # the raw name is mathtext: the test can tell


@pytest.mark.parametrize("name", ["x\n# <b>heading</b>", "x\r\n- item <i>", "a\n\nb `c`"])
def test_a_line_break_in_a_name_starts_no_markdown_block(name):
    """A name in the methods text stays inline text: a line break cannot open a heading, list or paragraph."""
    from bids_group_app.reporting.boilerplate import _code, _escape, markdown_to_html

    for value in (_escape(name), _code(name)):
        page = markdown_to_html(f"The contrast {value} was tested.")
        assert page.count("<p>") == 1 and "<h1>" not in page and "<li>" not in page, page
        assert "<b>" not in page and "<i>" not in page
