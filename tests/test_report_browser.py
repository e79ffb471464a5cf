"""The report of a real drained sweep, opened in a real headless browser (Debian's chromium).

The page must draw every plot with the sweep's data in it, list every task in its table, and
fetch nothing: Chromium goes through a proxy on 127.0.0.1 that refuses and records every
connection, and its net log is read for any URL that is not the file itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import CHROMIUM, Dom, RefusingProxy, Request, drained_sweep, gitqueue, load
from conftest import isolate

from gitqueue import Queue
from gitqueue.task import State

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium): the browser tests need it"
)

PLOTS = ("done-over-time", "timeline", "parallel", "per-arg")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    folder = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as env:
        isolate(folder, env)  # module-scoped: the autouse isolation has not run yet
        url = drained_sweep(folder)
        page = folder / "report.html"
        made = gitqueue("report", "--queue", url, "-o", str(page), "--metric", "result.acc")
        assert made.returncode == 0, made.stderr
        assert "wrote" in made.stderr
        yield url, page


@pytest.fixture(scope="module")
def rendered(sweep: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Dom, list[Request], set[str]]:
    _, page = sweep
    folder = tmp_path_factory.mktemp("chromium")
    with pytest.MonkeyPatch.context() as env, RefusingProxy() as proxy:
        isolate(folder, env)
        dom, urls = load(page, profile=folder / "profile", proxy=proxy)
    return Dom(dom), urls, proxy.hosts()


def test_the_sweep_was_drained_by_real_workers(sweep: tuple[str, Path]) -> None:
    url, _ = sweep
    with Queue.open(url) as q:
        tasks = q.tasks()
    states = {t.id: t.state for t in tasks}
    assert len(tasks) == 12
    assert [t.args for t in tasks if t.state is State.FAILED] == [{"lr": 0.1, "bs": 64, "opt": "sgd"}]
    assert sum(s is State.DONE for s in states.values()) == 11
    outcomes = [a["outcome"] for t in tasks for a in t.attempts]
    assert outcomes.count("reaped") == 1 and outcomes.count("failed") == 3  # 2 of the hopeless task, 1 retried
    workers = {a["worker"] for t in tasks for a in t.attempts}
    assert workers == {"old-box/0", "gpu-box/0", "gpu-box/1"}


def test_the_page_made_no_network_request(rendered: tuple[Dom, list[Request], set[str]]) -> None:
    _, started, proxied = rendered
    assert [r.url for r in started if r.page] == [], "the page tried to reach the network"
    # Whatever reached the proxy was the browser's own (update checks and the like), not the page's.
    assert proxied <= {r.host for r in started if not r.page}, (
        "a request reached the proxy that the browser did not make"
    )


def test_every_plot_drew_its_data(rendered: tuple[Dom, list[Request], set[str]], sweep: tuple[str, Path]) -> None:
    dom, _, _ = rendered
    url, _ = sweep
    with Queue.open(url) as q:
        tasks = q.tasks()
    assert dom.find(cls="plot-error") == []
    for plot in PLOTS:
        [div] = [d for d in dom.find(tag="div") if d.get("data-plot") == plot]
        assert div.get("data-drawn") == "yes", f"{plot} did not finish drawing"
        assert dom.find(tag="svg", cls="main-svg", plot=plot), f"{plot} has no SVG"
    done_runs = sum(a["outcome"] == "done" for t in tasks for a in t.attempts)
    ended_badly = sum(a["outcome"] in ("failed", "reaped") for t in tasks for a in t.attempts)
    # tasks done over time: a marker per run that ended done, and one per failed or reaped run
    assert len(dom.find(tag="path", cls="point", plot="done-over-time")) == done_runs + ended_badly
    # timeline: each run is a bar with a marker at both ends; each failure and reap one more
    runs = sum(len(t.attempts) for t in tasks)
    assert len(dom.find(tag="path", cls="point", plot="timeline")) == 2 * runs + ended_badly
    assert len(dom.find(tag="path", cls="js-line", plot="timeline")) >= 3  # done, failed, reaped bars
    assert {"old-box/0", "gpu-box/0", "gpu-box/1"} <= set(dom.text("timeline"))  # a lane per worker
    # per arg: a point per done task in each of the three args' plots
    assert len(dom.find(tag="path", cls="point", plot="per-arg")) == 3 * 11
    # parallel coordinates: drawn on canvas (WebGL), an axis per arg plus the metric
    assert dom.find(tag="canvas", plot="parallel"), "parallel coordinates drew no canvas"
    assert len(dom.find(tag="g", cls="axis", plot="parallel")) == 4


def test_the_parallel_axes_span_the_results(
    rendered: tuple[Dom, list[Request], set[str]], sweep: tuple[str, Path]
) -> None:
    """The metric's axis is labelled with the lowest and highest acc: the data reached the plot."""
    dom, _, _ = rendered
    url, _ = sweep
    with Queue.open(url) as q:
        accs = [t.result["acc"] for t in q.tasks(State.DONE)]
    labels = dom.text("parallel")
    assert {"lr", "bs", "opt", "result.acc"} <= set(labels)
    for value in (min(accs), max(accs)):
        assert str(value) in labels, f"acc {value} is not at the end of its axis: {labels}"


def test_the_table_has_a_row_per_task(rendered: tuple[Dom, list[Request], set[str]], sweep: tuple[str, Path]) -> None:
    dom, _, _ = rendered
    url, _ = sweep
    with Queue.open(url) as q:
        tasks = {t.id: t.state.value for t in q.tasks()}
    rows = [(attrs, parents) for tag, attrs, _, parents in dom.elements if tag == "tr" and "tbody" in parents]
    in_results = [attrs for attrs, parents in rows if attrs.get("class") in {s.value for s in State}]
    assert len(in_results) == len(tasks) == 12
    assert sorted(attrs["class"] for attrs in in_results) == sorted(tasks.values())


def test_the_network_check_sees_a_page_that_fetches(tmp_path: Path) -> None:
    """The proxy and the net log do catch a page that reaches out (else the test above proves nothing)."""
    page = tmp_path / "fetches.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://gitqueue-test.invalid/pixel.png"></body></html>')
    with RefusingProxy() as proxy:
        _, started = load(page, profile=tmp_path / "profile", proxy=proxy)
    assert [r.url for r in started if r.page] == ["http://gitqueue-test.invalid/pixel.png"]
    assert any("gitqueue-test.invalid" in line for line in proxy.requests), proxy.requests
