"""Report figures read the way the statistic means: colour maps, headings, viewer titles.

Two runs on the seed004 layout: an F contrast with permutations (``--rm-anova
desc --n-perm 50``), whose maps are all positive-only (F, FWE-thresholded F,
and the upper-tail z of the F-test), and a two-sided t contrast with a long
name whose effect at the planted blob is negative, whose maps are signed.
The check that matters to a reader is made on the pixels: a positive-only
figure holds no blue pixel (blue reads as "below zero"), a signed one still
does. The viewers are inspected in headless Chromium inside the report's
frames.
"""

import base64
import html.parser
import io
import logging
import re

import matplotlib.image as mpimg
import numpy as np
import pytest

from bids_group_app.cli.run import main


LONG_NAME = "scrambledOverFamousFacesAtInitialPresentation"

# Draws on an on-page canvas, recorded in every frame before its scripts run:
# brainsprite writes the viewer's title with fillText, then clears the next
# panel with fillRect, which hides whatever part of the title reaches into it.
RECORDER = """
(() => {
  const P = CanvasRenderingContext2D.prototype, text = P.fillText, rect = P.fillRect;
  window.__draws = [];
  P.fillText = function (s, x, y, ...rest) {
    if (this.canvas.isConnected) {
      window.__draws.push({op: "text", text: String(s), x: x, y: y, width: this.measureText(s).width,
                           size: parseFloat(this.font), canvas: this.canvas.width});
    }
    return text.call(this, s, x, y, ...rest);
  };
  P.fillRect = function (x, y, w, h) {
    if (this.canvas.isConnected) window.__draws.push({op: "rect", x: x, y: y, w: w, h: h});
    return rect.call(this, x, y, w, h);
  };
})();
"""


def _run(example_dataset, tmp_path_factory, name, options):
    truth = example_dataset("seed004")
    out = tmp_path_factory.mktemp(name) / "out"
    code = main([truth["root"], str(out), "group", "--rm-anova", "desc", *options, "--quiet"])
    assert code == 0
    (report,) = out.glob("model-*_report.html")
    return out, report


@pytest.fixture(scope="module")
def f_run(example_dataset, tmp_path_factory):
    """An F contrast (descEffect) with 50 permutations: F, maxt and fpr maps."""
    return _run(example_dataset, tmp_path_factory, "f", ["--n-perm", "50"])


@pytest.fixture(scope="module")
def t_run(example_dataset, tmp_path_factory):
    """A two-sided t contrast, negative at the planted faces-vs-scrambled blob."""
    return _run(example_dataset, tmp_path_factory, "t", ["--two-sided", "--contrast", f"{LONG_NAME}=IniSF-IniFF"])


def _blue_pixels(rgb, alpha=None):
    """Number of pixels whose blue clearly exceeds their red (blue, cyan, light blue)."""
    blue = rgb[..., 2] > rgb[..., 0] + 0.2
    if alpha is not None:
        blue &= alpha > 0
    return int(blue.sum())


def _png(path):
    return mpimg.imread(str(path))[..., :3]


def _viewer_images(viewer):
    """The viewer's colour bar and overlay sprite (every slice of the drawn map), as RGBA arrays."""
    text = viewer.read_text()
    images = {}
    for kind in ("colorMap", "overlayImg"):
        match = re.search(rf'<img id="{kind}-[^"]*"[^>]*?src="data:image/png;base64,([^"]+)"', text, flags=re.S)
        assert match, f"{viewer.name}: no {kind} image"
        images[kind] = mpimg.imread(io.BytesIO(base64.b64decode(match.group(1))), format="png")
    return images


def test_positive_only_is_decided_from_the_statistic_and_the_data(caplog):
    from bids_group_app.reporting.report import is_positive_only

    assert is_positive_only("F", [0.0, 1.5, 40.0])
    for label in ("logp", "logpmaxt", "logpmaxtfce", "size", "mass", "p"):
        assert is_positive_only(label, [0.0, 2.0])
    assert not is_positive_only("t", [-2.0, 0.0, 5.0])
    assert not is_positive_only("z", [-3.5, 4.0])
    assert not is_positive_only("effect", [-0.1, 1.0])
    assert not is_positive_only("tfce", [-30.0, 12.0])      # two-sided TFCE
    assert is_positive_only("tfce", [0.0, 12.0])            # one-sided TFCE
    assert is_positive_only("t", [np.nan, 0.0, 3.2, 7.0])   # one-sided thresholded t map; NaN ignored
    assert not is_positive_only("t", [np.nan, -4.0, -3.1])  # two-sided thresholded map, negative survivors
    assert is_positive_only("z", [-3.9, 0.0, 12.0], test="F")  # the z of an F-test: large is an effect
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        assert not is_positive_only("F", [-0.5, 3.0])       # impossible values are shown, not hidden
    assert "negative" in caplog.text


def test_positive_only_figures_of_an_f_contrast_hold_no_blue(f_run):
    out, _ = f_run
    figures = sorted(out.glob("figures/*contrast-descEffect_*_slices.png")) + sorted(
        out.glob("figures/*contrast-descEffect_*_glass.png"))
    names = {p.name.split("contrast-descEffect_")[1] for p in figures}
    assert names == {f"{m}_{v}.png" for m in ("stat-F", "thresh-maxt", "thresh-fpr") for v in ("slices", "glass")}
    blue = {p.name: _blue_pixels(_png(p)) for p in figures}
    assert blue == dict.fromkeys(blue, 0), blue
    for path in figures:   # the figures are drawn in colour, not blank
        rgb = _png(path)
        assert int((rgb[..., 0] > rgb[..., 2] + 0.2).sum()) > 20, path.name


def test_f_contrast_viewer_draws_no_blue(f_run):
    out, _ = f_run
    (viewer,) = out.glob("figures/*contrast-descEffect_stat-z_viewer.html")
    images = _viewer_images(viewer)
    colour_bar = images["colorMap"]
    assert _blue_pixels(colour_bar[..., :3]) == 0
    overlay = images["overlayImg"]
    assert _blue_pixels(overlay[..., :3], overlay[..., 3]) == 0
    assert int(((overlay[..., 0] > overlay[..., 2] + 0.2) & (overlay[..., 3] > 0)).sum()) > 20


def test_signed_figures_keep_a_diverging_map(t_run):
    out, _ = t_run
    for kind in ("stat-t", "thresh-fpr"):   # the two-sided fpr map holds only negative survivors
        for view in ("slices", "glass"):
            (path,) = out.glob(f"figures/*contrast-{LONG_NAME}_{kind}_{view}.png")
            assert _blue_pixels(_png(path)) > 20, path.name
    for view in ("slices", "glass"):   # a title running past the figure would widen it
        widths = {_png(p).shape[1] for p in out.glob(f"figures/*_{view}.png")}
        assert len(widths) == 1, (view, widths)
    (viewer,) = out.glob(f"figures/*contrast-{LONG_NAME}_stat-z_viewer.html")
    overlay = _viewer_images(viewer)["overlayImg"]
    assert _blue_pixels(overlay[..., :3], overlay[..., 3]) > 20


class _Headings(html.parser.HTMLParser):
    """Headings (h3/h4) and visible text with the alt texts, in document order."""

    def __init__(self):
        super().__init__()
        self.items, self._tag = [], None

    def handle_starttag(self, tag, attrs):
        if tag in ("h3", "h4"):
            self._tag = tag
            self.items.append([tag, ""])
        if tag == "img":
            self.items.append(["alt", dict(attrs).get("alt", "")])

    def handle_endtag(self, tag):
        if tag == self._tag:
            self._tag = None

    def handle_data(self, data):
        if self._tag:
            self.items[-1][1] += data
        else:
            self.items.append(["text", data])


def test_f_contrast_section_names_the_inference_not_maxt(f_run):
    _, report = f_run
    parser = _Headings()
    parser.feed(report.read_text())
    start = next(i for i, (tag, text) in enumerate(parser.items) if tag == "h3" and "descEffect" in text)
    section = parser.items[start:]
    headings = [text for tag, text in section if tag == "h4"]
    assert not [text for _, text in section if "maxt" in text.lower()], section
    permutation = [h for h in headings if h.startswith("Permutation")]
    assert permutation == ["Permutation: voxel-level FWE (max F)"], headings
    assert "Parametric: uncorrected (fpr)" in headings


def _frame_contexts(chromium):
    """Execution contexts of the report's frames (the viewers), by URL."""
    contexts = {}
    for event in chromium.events:
        if event.get("method") == "Runtime.executionContextCreated":
            context = event["params"]["context"]
            url = chromium.call("Runtime.evaluate", {"expression": "location.href", "returnByValue": True,
                                                     "contextId": context["id"]}, session=True)["result"]["value"]
            if url.endswith("_viewer.html"):
                contexts[url] = context["id"]
    return contexts


def _in_frame(chromium, context, expression):
    result = chromium.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "contextId": context}, session=True)
    return result["result"].get("value")


@pytest.mark.parametrize("which", ["f_run", "t_run"])
def test_viewer_title_and_viewer_fit_in_the_report(which, request, chromium):  # noqa: F811
    out, report = request.getfixturevalue(which)
    script = chromium.call("Page.addScriptToEvaluateOnNewDocument", {"source": RECORDER}, session=True)
    try:
        chromium.load(report.resolve().as_uri(), settle=4.0)
    finally:
        chromium.call("Page.removeScriptToEvaluateOnNewDocument", {"identifier": script["identifier"]}, session=True)
    contexts = _frame_contexts(chromium)
    assert len(contexts) == 1, contexts
    (context,) = contexts.values()
    title = re.search(r'"title": "([^"]*)"', next(out.glob("figures/*_viewer.html")).read_text()).group(1)
    draws = _in_frame(chromium, context, "window.__draws")
    last = max(i for i, d in enumerate(draws) if d["op"] == "text" and d["text"] == title)
    text = draws[last]
    left, right = text["x"], text["x"] + text["width"]
    top, bottom = text["y"] - text["size"], text["y"] + 0.3 * text["size"]
    assert 0 <= left and right <= text["canvas"], (title, text)
    covering = [d for d in draws[last + 1:] if d["op"] == "rect" and d["x"] < right and d["x"] + d["w"] > left
                and d["y"] < bottom and d["y"] + d["h"] > top]
    assert not covering, f"the viewer title {title!r} ends at x={right:.0f}, under a later panel: {covering[0]}"
    height, inner = _in_frame(chromium, context, "[document.documentElement.scrollHeight, innerHeight]")
    assert height <= inner, f"the viewer is {height}px tall in a {inner}px frame: its bottom is cut off"


def test_two_sided_t_section_names_both_tails(t_run):
    _, report = t_run
    parser = _Headings()
    parser.feed(report.read_text())
    headings = [text for tag, text in parser.items if tag == "h4"]
    assert "Parametric: uncorrected (fpr)" in headings
    text = " ".join(text for tag, text in parser.items if tag == "text")
    assert "uncorrected (fpr) α = 0.001, |z| > 3.291" in text


def test_design_figures_of_very_long_column_names_draw(tmp_path):
    """A 90-character covariate once made the correlation figure fail (no room left for the plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd
    from nilearn.plotting import plot_design_matrix_correlation

    from bids_group_app.reporting.report import _plain_columns

    long_a, long_b = "age_" + "x" * 90, "age_" + "x" * 90 + "_squared"
    design = pd.DataFrame(np.random.default_rng(0).normal(size=(12, 3)), columns=["intercept", long_a, long_b])
    plain = _plain_columns(design)
    assert len(set(plain.columns)) == 3 and all(len(c) <= 32 for c in plain.columns)
    assert plain.columns[0] == "intercept" and plain.columns[1].endswith("…")
    ax = plot_design_matrix_correlation(plain)
    ax.figure.savefig(tmp_path / "corr.png")
    assert (tmp_path / "corr.png").stat().st_size > 0
