"""Reports: ``edgequery report`` on a real demo run folder and ``benchmarks/run_all.py``'s index.html over the
committed results, each rendered in headless Chromium (a PNG of it is saved under ``test-artifacts/``):
every figure and table present, every image decoded, nothing loaded from elsewhere."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path

import pytest

from edgequery.report import Page, external_references

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
RESULTS = ROOT / "benchmarks" / "results"

# what `edgequery report` draws for a demo run with search and deploy
RUN_FIGURES = {"accuracy", "pareto", "lut-scatter", "block-heatmap", "retrieval-grid"}
RUN_TABLES = {"stages", "accuracy", "measured", "export"}


def rendered(chromium, page: Path, shot: str) -> dict:
    """Open ``page`` in Chromium, wait for every image, save a full-page PNG; what the page holds."""
    chromium.open(page.resolve().as_uri())
    chromium.wait_for("[...document.images].every(i => i.complete)")
    info = json.loads(chromium.evaluate(
        "JSON.stringify({images: [...document.images].map(i => ({w: i.naturalWidth, h: i.naturalHeight})),"
        " figures: [...document.querySelectorAll('figure[data-figure]')].map(f => f.dataset.figure),"
        " tables: [...document.querySelectorAll('table[data-table]')].map(t => [t.dataset.table,"
        "   t.querySelectorAll('tbody tr').length]),"
        " sections: [...document.querySelectorAll('section')].map(s => s.id),"
        " missing: [...document.querySelectorAll('p.missing')].map(p => p.textContent),"
        " height: document.body.scrollHeight})"))
    chromium.send("Emulation.setDeviceMetricsOverride", {"width": 1200, "height": min(info["height"], 16000),
                                                        "deviceScaleFactor": 1, "mobile": False})
    ARTIFACTS.mkdir(exist_ok=True)
    chromium.screenshot(ARTIFACTS / shot)
    assert (ARTIFACTS / shot).stat().st_size > 10_000
    assert info["images"] and all(i["w"] > 0 and i["h"] > 0 for i in info["images"]), "a broken image"
    return info


# --------------------------------------------------------------------------- the page builder


def test_a_page_escapes_its_text_and_refuses_anything_loaded_from_elsewhere():
    page = Page("<title>").section("s")
    page.text("<script>alert(1)</script>").table(["a"], [["<b>"]], name="t")
    html = page.render()
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;" in html
    assert external_references(html) == []
    assert external_references('<img src="https://x/y.png"><a href="#ok">') == ["https://x/y.png"]
    page._add('<img src="http://example.com/a.png">')
    with pytest.raises(AssertionError, match="from elsewhere"):
        page.render()


def test_report_of_a_folder_that_is_not_a_run_says_what_to_pass(tmp_path, capsys):
    from edgequery.commands import main

    assert main(["report", "--run", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no summary.json" in err and "edgequery demo" in err


# --------------------------------------------------------------------------- the benchmarks' index


def test_the_committed_index_is_what_run_all_writes_from_the_committed_results(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import run_all
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    for f in [*RESULTS.glob("*.json"), *RESULTS.glob("*.png")]:
        shutil.copy(f, tmp_path / f.name)
    fresh = run_all.write_index(tmp_path).read_text()
    assert fresh == (RESULTS / "index.html").read_text(), \
        "benchmarks/results/index.html is stale: python benchmarks/run_all.py --index-only"
    rows = run_all.paper_vs_ours(run_all.load_results(RESULTS))
    assert [r[0].split(":")[0] for r in rows] == [
        "BCT is necessary", "heterogeneous accuracy does not follow FLOPs",
        "reward R3 (het + hom) beats R1 (hom) and R2 (het)", "cost reduction within a small accuracy loss of the paragon"]
    assert all(r[3] for r in rows), "every finding has a verdict"


def test_the_benchmarks_index_renders_every_result_in_chromium(chromium):
    info = rendered(chromium, RESULTS / "index.html", "benchmarks-index.png")
    pngs = {p.stem for p in RESULTS.glob("*.png")}
    results = {p.stem for p in RESULTS.glob("*.json")
               if json.loads(p.read_text()).get("format") == "edgequery-benchmark"}
    assert pngs <= set(info["figures"]), f"figures not shown: {pngs - set(info['figures'])}"
    assert results <= set(info["sections"]), f"results without a section: {results - set(info['sections'])}"
    tables = dict(info["tables"])
    assert tables["overview"] == len(results) and tables["paper-vs-ours"] == 4


# --------------------------------------------------------------------------- a run folder


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """``edgequery demo`` end to end, as small as it goes (a narrowed space: 25 blocks to time): every stage the
    report reads; its last line names the report."""
    from edgequery.commands import main

    out = tmp_path_factory.mktemp("demo") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["demo", "--out", str(out), "--n-train", "400", "--gallery-steps", "10", "--gallery-n-train",
                     "1000", "--query-epochs", "1", "--supernet-epochs", "1", "--population", "4", "--generations",
                     "1", "--space-option", "widths=0.5", "--space-option", "kernels=3,5", "--space-option",
                     "expands=3"])
    assert code == 0
    assert printed.getvalue().rstrip().splitlines()[-1] == f"report: {out / 'report.html'}"
    return out


@pytest.mark.slow
def test_the_demo_ends_with_its_report_and_the_report_renders_in_chromium(demo_run, chromium):
    report = demo_run / "report.html"
    assert report.is_file(), "edgequery demo writes its report"
    html = report.read_text()
    assert external_references(html) == []
    info = rendered(chromium, report, "run-report.png")
    assert RUN_FIGURES <= set(info["figures"]), f"missing figures: {RUN_FIGURES - set(info['figures'])}"
    tables = dict(info["tables"])
    assert RUN_TABLES <= set(tables), f"missing tables: {RUN_TABLES - set(tables)}"
    summary = json.loads((demo_run / "summary.json").read_text())
    assert tables["stages"] == len(summary["stages"])
    # paragon + (het, hom) per query net + the raw-pixel baseline
    assert tables["accuracy"] == 1 + 2 * len(summary["eval"]) + 1
    measured = json.loads((demo_run / "latency-measured.json").read_text())["measured"]
    assert tables["measured"] == len(measured) and {"chosen", "mobilenet_v3_small"} <= {r["label"] for r in measured}
    assert all(r["median_ms"] > 0 for r in measured)
    assert info["missing"] == []


@pytest.mark.slow
def test_a_run_without_search_or_export_says_so_instead_of_failing(demo_run, tmp_path):
    from edgequery.report import run_report

    run = tmp_path / "run"   # the whole folder, moved: a rerun with --no-search --no-deploy leaves older files
    shutil.copytree(demo_run, run)
    summary = json.loads((demo_run / "summary.json").read_text())
    summary["search"] = None
    summary.pop("deploy")
    summary["eval"].pop("searched")
    (run / "summary.json").write_text(json.dumps(summary))
    html = run_report(run).render()
    assert html.count('class="missing"') == 5   # search, LUT, blocks, retrieval grid, export
    assert 'data-figure="accuracy"' in html and 'data-figure="pareto"' not in html


@pytest.mark.slow
def test_a_moved_run_folder_reports_its_own_files(demo_run, tmp_path):
    from edgequery.report import write_run_report

    moved = tmp_path / "elsewhere"
    shutil.copytree(demo_run, moved)
    shutil.rmtree(demo_run / "gallery_index.bak", ignore_errors=True)
    (demo_run / "gallery_index").rename(demo_run / "gallery_index.bak")   # the original is gone
    try:
        html = write_run_report(moved).read_text()
    finally:
        (demo_run / "gallery_index.bak").rename(demo_run / "gallery_index")
    assert 'data-figure="retrieval-grid"' in html and 'class="missing"' not in html
