"""The HTML report and the compare / report commands: built from a small sweep with a method
that clusters against known groups, checked as a file, and loaded in headless Chromium (no
console errors, every figure rendered, a screenshot kept as a test artifact)."""

from __future__ import annotations

import base64
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from plural.cli import main
from plural.config import ConfigError
from plural.report.html import write_report
from plural.report.runs import discover_runs, group_methods
from plural.runner.sweep import Axis, run_sweep

CHROMIUM = os.environ.get("PLURAL_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("PLURAL_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = Path(os.environ.get("PLURAL_TEST_ARTIFACTS", "test-artifacts"))

BASE: dict[str, Any] = {
    "name": "report-test",
    "rounds": 3,
    "dataset": {"name": "digits"},
    "partition": {"name": "iid", "num_clients": 8},
    "transforms": [{"name": "rotation", "groups": 2}],
    "model": {"name": "mlp", "hidden": [8]},
    "algorithm": {"name": "fedavg"},
    "train": {"lr": 0.05, "batch_size": 32},
    "eval": {"splits": ["test"]},
    "backend": {"threads_per_worker": 1},
}
GRID = [Axis("algorithm", ("fedavg", "ifca", {"name": "pfedlia", "warmup_rounds": 1}))]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    run_sweep(BASE, out, GRID, (0, 1), progress=None)
    return out


@pytest.fixture(scope="module")
def report(sweep_dir: Path) -> Path:
    methods = group_methods(discover_runs([sweep_dir]))
    return write_report(methods, sweep_dir / "report.html", title="test report")


def figure_names(report: Path) -> list[str]:
    return re.findall(r'<figure id="fig-([^"]+)">', report.read_text())


def test_report_is_one_file_with_every_section_and_figure(report: Path) -> None:
    text = report.read_text()
    names = figure_names(report)
    for expected in ("rounds", "distribution", "cdf", "cost", "clusters", "labels-0", "sizes-0"):
        assert expected in names
    assert sum(n.startswith("assignments-") for n in names) == 2  # ifca and pfedlia
    assert any(n.startswith("influence-") for n in names)
    # self-contained: no scripts or stylesheets to fetch, figures inlined
    assert not re.search(r'<(script|link)[^>]+(src|href)="(http|//)', text)
    assert len(re.findall(r'src="data:image/svg\+xml;base64,', text)) == len(names)
    for name in names:  # each figure is also a PNG and an SVG file
        assert (report.parent / "report_files" / f"{name}.png").stat().st_size > 1000
        assert (report.parent / "report_files" / f"{name}.svg").stat().st_size > 1000
    # reproducibility: every run's exact config, seed and versions
    assert text.count("<details>") == 6
    assert "warmup_rounds: 1" in text
    assert "torch " in text and "plural 0." in text


def test_inlined_figures_are_the_saved_svgs(report: Path) -> None:
    text = report.read_text()
    inlined = re.findall(
        r'<figure id="fig-([^"]+)"><img [^>]*src="data:image/svg\+xml;base64,([^"]+)"', text
    )
    for name, data in inlined:
        assert (
            base64.b64decode(data) == (report.parent / "report_files" / f"{name}.svg").read_bytes()
        )


def test_report_renders_in_headless_chromium(report: Path) -> None:
    """Every figure renders, nothing is logged to the console, a screenshot is kept."""
    driver = _chromium()
    try:
        driver.get(report.as_uri())
        state = driver.execute_script(
            "return Array.from(document.querySelectorAll('figure img')).map(i => "
            "[i.closest('figure').id, i.complete, i.naturalWidth, i.naturalHeight, "
            "i.getBoundingClientRect().width])"
        )
        console = driver.get_log("browser")
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1280, min(int(height) + 100, 16000))
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "report.png"
        assert driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    assert [row[0] for row in state] == [f"fig-{n}" for n in figure_names(report)]
    for figure_id, complete, width, height_px, shown in state:
        assert complete and width > 0 and height_px > 0 and shown > 0, figure_id
    assert console == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def _chromium() -> Any:
    """Headless Chromium through Selenium and Debian's chromedriver. Missing browser: skip
    locally, fail in CI (`.ci/run` installs it)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        message = f"Chromium not installed ({CHROMIUM}, {CHROMEDRIVER}); `make browser`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


# --------------------------------------------------------------------------- commands


def test_compare_prints_a_ranked_table_and_writes_the_report(
    sweep_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp.html"
    assert main(["compare", str(sweep_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if re.match(r"\d\. ", line)]
    assert [line.split()[1] for line in lines] and len(lines) == 3
    means = [float(line.split()[3]) for line in lines]
    assert means == sorted(means, reverse=True)  # ranked, best first
    assert all("+-" in line for line in lines)  # two seeds: mean +- std over seeds
    assert out.is_file() and (tmp_path / "cmp_files" / "rounds.svg").is_file()


def test_compare_ranks_by_loss_ascending(
    sweep_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compare", str(sweep_dir), "--metric", "loss", "--no-report"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if re.match(r"\d\. ", line)]
    means = [float(line.split()[3]) for line in lines]
    assert means == sorted(means)


def test_report_of_one_run(sweep_dir: Path, tmp_path: Path) -> None:
    run_dir = next((sweep_dir / "runs").glob("algorithm-ifca/seed-0"))
    out = tmp_path / "one.html"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    names = figure_names(out)
    assert "assignments-0" in names and "rounds" in names


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "{missing}"], "does not exist"),
        (["compare", "{empty}"], "no runs under"),
        (["compare", "{sweep}", "--metric", "f1"], "--metric: 'f1' is not a metric; allowed"),
        (["compare", "{sweep}", "--split", "val"], "--split: no run evaluated the 'val' split"),
        (["report", "{sweep}"], "is not a run directory"),
    ],
)
def test_bad_input_is_named(
    argv: list[str],
    message: str,
    sweep_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "sweep": sweep_dir}
    assert main([a.format(**paths) for a in argv]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("**/*.html"))


def test_runs_are_found_in_folders_and_listed_once(sweep_dir: Path) -> None:
    runs = discover_runs([sweep_dir, sweep_dir / "runs", sweep_dir / "runs" / "algorithm-ifca"])
    assert len(runs) == 6
    with pytest.raises(ConfigError, match="no runs under"):
        discover_runs([sweep_dir / "runs" / "algorithm-ifca" / "seed-0" / "metrics"])
