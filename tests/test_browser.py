"""The MLflow UI as a user sees it: Debian's Chromium, headless, driven by Playwright, on `mlflow ui` after a
tiny study, at the URL the end-of-run message gives. Writes reports/mlflow-ui.png (shown in README.md)."""
import re
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from mlflow.tracking import MlflowClient

from study.records import ExperimentTag, Tag
from study.tracking.store import VIEW_KEY, ui_url
from study.tracking.writers import log_summary
from tests.servers import start_mlflow, stop
from tests.studies import ROOT, free_port, run_study, small_study

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (.ci/run installs it); never `playwright install`
SCREENSHOT = ROOT / "reports" / "mlflow-ui.png"
TRIALS = ("ISNM seed=0", "ISNM seed=1", "ISNM+GSG seed=0", "ISNM+GSG seed=1")
WAIT_MS = 60_000  # the longest any one step in the browser may take
VIEWPORT = {"width": 1400, "height": 900}  # a laptop's browser window: what the page must be legible at


def loopback_only(route) -> None:
    """The browser reaches 127.0.0.1 and nothing else (no fonts, telemetry or updates from outside)."""
    if urlsplit(route.request.url).hostname == "127.0.0.1":
        route.continue_()
    else:
        route.abort()


@contextmanager
def browser_page():
    """A page of Debian's Chromium, headless, that reaches 127.0.0.1 only; closed on the way out."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=["--no-sandbox", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(WAIT_MS)
            page.route("**/*", loopback_only)
            yield page
        finally:
            browser.close()


def test_the_parent_run_gets_each_variants_mean_over_its_newest_runs(mlflow_uri):
    client = MlflowClient(mlflow_uri)
    exp = client.create_experiment("summary")
    parent = client.create_run(exp).info.run_id

    started = iter(range(1_000, 2_000))  # start times (ms) order the runs: the newest of a config hash counts

    def trial(variant: str, config_hash: str, test_acc: float, under: str = "older") -> None:
        tags = {"kind": "trial", "variant": variant, "config_hash": config_hash, Tag.PARENT: under}
        run_id = client.create_run(exp, start_time=next(started), tags=tags).info.run_id
        client.log_metric(run_id, "test_acc", test_acc)
        client.set_terminated(run_id, "FINISHED")

    trial("ISNM+GSG", "h1", 0.1, parent)  # an older run of h1: not counted
    trial("ISNM+GSG", "h1", 0.9, parent)
    trial("ISNM+GSG", "h2", 0.8, parent)
    trial("ISNM_GSG", "h3", 0.5, parent)  # another variant, the same metric name
    trial("ISNM", "h4", 0.7)  # planned, cached in this experiment under an older parent
    trial("ISNM", "h9", 0.2)  # neither this parent's child nor planned
    summary = log_summary(client, exp, parent, {"h4": {Tag.ROW: "ISNM"}, "h1": {Tag.ROW: "ISNM+GSG", Tag.COLUMN: "soft"}},
                          "The study's own description.")
    assert summary == pytest.approx({"ISNM": 0.7, "ISNM+GSG": 0.85, "ISNM_GSG": 0.5})
    # in the run's description, not as metrics (which the UI drew as one-bar charts labelled "Unassigned")
    run = client.get_run(parent)
    assert not run.data.metrics and run.data.tags[Tag.NOTE].splitlines()[0] == "The study's own description."
    assert run.data.tags[Tag.NOTE].splitlines()[-3:] == ["| ISNM | 1 | 70.00 |", "| ISNM+GSG | 2 | 85.00 |",
                                                         "| ISNM_GSG | 1 | 50.00 |"]
    # each run counted carries its row (and column) in this layout: a planned one's place, else its variant
    tags = {r.data.tags["config_hash"]: r.data.tags for r in client.search_runs([exp], "attributes.status = 'FINISHED'",
                                                                                 order_by=["attributes.start_time ASC"])}
    assert (tags["h1"]["row"], tags["h1"]["column"], tags["h2"]["row"], tags["h4"]["row"]) == (
        "ISNM+GSG", "soft", "ISNM+GSG", "ISNM")
    assert "row" not in tags["h9"]  # not counted


@pytest.mark.slow  # a real study, an MLflow server and a browser
def test_the_printed_url_shows_the_trials_and_their_test_acc_chart(tmp_path, shared_ray):
    assert CHROMIUM.is_file(), f"{CHROMIUM} missing: apt-get install chromium (.ci/run does)"
    from playwright.sync_api import expect

    began = time.monotonic()
    done = run_study(tmp_path, str(small_study(tmp_path, name="browse", epochs=2)), cluster=shared_ray)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("browse")
    # tagged as model training, with the saved view the URL opens, and each variant's mean in the parent run's
    # description (no metric of its own: the UI drew those as charts labelled "Unassigned")
    assert experiment.tags[ExperimentTag.KIND] == "custom_model_development"
    assert ExperimentTag.VIEW + VIEW_KEY in experiment.tags
    (parent,) = client.search_runs([experiment.experiment_id], "tags.kind = 'study'")
    trials = client.search_runs([experiment.experiment_id], "tags.kind = 'trial'")
    assert not parent.data.metrics
    for variant in ("ISNM", "ISNM+GSG"):
        finals = [r.data.metrics["test_acc"] for r in trials if r.data.tags["variant"] == variant]
        assert len(finals) == 2 and f"| {variant} | 2 | {50 * sum(finals):.2f} |" in parent.data.tags[Tag.NOTE]
    # the end-of-run message names the page: the experiment's runs, charts, grouped by table row
    url = ui_url(experiment.experiment_id, "http://127.0.0.1:5000")
    assert re.search(rf"^then open {re.escape(url)}\s", done.stdout, re.M), done.stdout[-2000:]
    assert "compareRunsMode=CHART" in url and "viewStateShareKey=by-row" in url

    port = free_port()
    server = start_mlflow("ui", port, "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                          log=tmp_path / "mlflow-ui.log", cwd=tmp_path)
    try:
        with browser_page() as page:
            page.goto(url.replace("http://127.0.0.1:5000", f"http://127.0.0.1:{port}"), timeout=WAIT_MS)
            # the trial runs, under their readable names, listed under their table row's group
            for name in TRIALS:
                expect(page.get_by_text(name, exact=True)).to_be_visible(timeout=WAIT_MS)
            expect(page.get_by_text("Group by: row")).to_be_visible()
            for row in ("ISNM", "ISNM+GSG"):  # each row's group; MLflow's runs list is 295 px wide whatever the
                # window, so a longer name is cut there: whole on hover, and in the chart's legend (below)
                expect(page.get_by_text(f"Group: {row}", exact=True)).to_have_attribute("title", row)
            # the model-training layout (Runs, Models), not the GenAI one (Prompts, Judges)
            expect(page.get_by_text("Prompts", exact=True)).to_have_count(0)
            close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
            if close.count() and close.first.is_visible():
                close.first.click()  # MLflow's assistant opens beside a first visit: it hides the charts
            # the test_acc chart: a drawn plot, one mean curve per variant
            chart = page.get_by_test_id("experiment-view-compare-runs-card").filter(
                has=page.get_by_title("test_acc", exact=True))
            expect(chart).to_have_count(1)
            chart.scroll_into_view_if_needed()
            expect(chart).to_be_visible()
            expect(chart.locator(".js-plotly-plot")).to_be_visible()
            for variant in ("ISNM", "ISNM+GSG"):
                expect(chart.get_by_text(f"{variant} (test_acc)", exact=True)).to_be_visible()
            expect(page.get_by_text("No charts in this section")).to_have_count(0)
            # its title whole, and no other chart: the parent run's metrics were drawn as bar charts of one bar each,
            # "Unassigned" (the parent run is in no row: its empty group stays in the legend's hidden last line)
            assert chart.get_by_title("test_acc", exact=True).evaluate("e => e.scrollWidth <= e.clientWidth")
            expect(page.get_by_test_id("experiment-view-compare-runs-card")).to_have_count(1)
            page.wait_for_timeout(1000)  # plotly's transitions, for the picture
            page.evaluate("window.scrollTo(0, 0)")
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
    finally:
        stop(server)
    assert SCREENSHOT.stat().st_size > 10_000
    print(f"browser test: {time.monotonic() - began:.0f}s, screenshot {SCREENSHOT}")


# a grid-only study (its one implicit variant, `base`, is no row) and the comparison demo (two networks on digits,
# which a grouping by variant merged): the runs as study.run tags them, at the end of a run, then the saved view
GROUPED = {
    "grid": ({"name": "tau_grid", "base": {"dataset": "digits", "arch": "tiny", "epochs": 2},
              "grid": {"neuron.tau": [1.5, 2.0, 3.0]}, "seeds": [0, 1], "table": {"rows": "neuron.tau"}},
             {"neuron.tau=1.5": 2, "neuron.tau=2.0": 2, "neuron.tau=3.0": 2}),
    "comparison demo": (ROOT / "search_spaces" / "comparison.yaml", {"digits · VGG-small": 3, "digits · ResNet": 3}),
}


@pytest.mark.slow  # an MLflow server and a browser
def test_the_view_shows_a_group_per_table_row(tmp_path, mlflow_uri):
    from playwright.sync_api import expect

    from study.design.load import load_study

    from study.design.profiles import with_profile
    from study.design.plan import plan_trials
    from study.tracking.store import show_layout
    from study.tracking.writers import place_tags
    from tests.stores import write_spec, write_store

    pages = {}  # case -> (its experiment id, its parent run id)
    for case, (spec, groups) in GROUPED.items():
        if isinstance(spec, Path):  # the shipped file as its demo profile makes it
            spec = {k: v for k, v in with_profile(yaml.safe_load(spec.read_text()), "demo").items() if k != "profiles"}
        study = load_study(write_spec(tmp_path, spec))
        trials = plan_trials(study)
        write_store(tmp_path, spec, {t.name: 0.8 + 0.01 * t.seed for t in trials}, mlflow_uri)
        client = MlflowClient(mlflow_uri)
        exp = client.get_experiment_by_name(study.name).experiment_id
        (parent,) = client.search_runs([exp], "tags.kind = 'study'")
        log_summary(client, exp, parent.info.run_id, {t.config_hash: place_tags(study, t) for t in trials})
        show_layout(client, exp, columns=False)
        pages[case] = exp, parent.info.run_id
    port = free_port()
    server = start_mlflow("ui", port, "--backend-store-uri", mlflow_uri, log=tmp_path / "mlflow-ui.log", cwd=tmp_path)
    try:
        with browser_page() as page:
            for case, (exp, _) in pages.items():
                page.goto(ui_url(exp, f"http://127.0.0.1:{port}"), timeout=WAIT_MS)
                expect(page.get_by_text("Group by: row")).to_be_visible()
                groups = GROUPED[case][1]
                for row in groups:  # one group per table row
                    expect(page.get_by_text(f"Group: {row}")).to_be_visible()
                expect(page.get_by_text(re.compile(r"Group: "))).to_have_count(len(groups))
    finally:
        stop(server)
    client = MlflowClient(mlflow_uri)
    for case, (exp, parent) in pages.items():
        groups = GROUPED[case][1]
        # a mean per row, none per variant; each group's runs
        note = client.get_run(parent).data.tags[Tag.NOTE]
        assert [line.split(" | ")[0][2:] for line in note.splitlines()[4:]] == sorted(groups), case
        runs = client.search_runs([exp], "tags.kind = 'trial'")
        assert Counter(r.data.tags[Tag.ROW] for r in runs) == groups, case
