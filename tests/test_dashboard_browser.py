"""The Error Analysis dashboard in real TensorBoard, driven in headless Chromium over CDP.

`keras-erranalysis serve` starts TensorBoard (with the plugin) on a logdir of two runs; the test
opens TensorBoard's own iframe page for the tab (/data/plugin_entry.html?name=erranalysis, the page
TensorBoard puts in the tab's iframe), and works through the dashboard like a user: filters,
sorts, clicks a class bar and a confusion cell, box-selects on the data map, moves the epoch
slider, opens details, and checks that hostile text stays text and the console stays clean.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
from _cdp import CHROMIUM, Browser
from _dashboard import CELL_BREAK, LONG, RTL, TEXTS, dashboard_logdir, serve

from keras_erranalysis.run import load_run

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium)"
)
pytest.importorskip("tensorboard")

# Read-only probes the test evaluates in the page (they only read the DOM).
PROBES = """
window.__probe = {
  rows: () => [...document.querySelectorAll('section[data-view="examples"] table.rows tbody tr')],
  column: (name) => __probe.rows().map((tr) => {
    const td = tr.querySelector(`td[data-column="${name}"]`);
    return td ? (td.dataset.value !== undefined ? td.dataset.value : td.textContent) : null;
  }),
  total: () => Number(document.getElementById('examples-summary').dataset.total),
};
true
"""


def _set(page, selector, value, event="change"):
    """Sets a form control's value and fires the event a user's change fires."""
    page.evaluate(
        f"""(() => {{ const node = document.querySelector({json.dumps(selector)});
        node.value = {json.dumps(value)};
        node.dispatchEvent(new Event({json.dumps(event)}, {{bubbles: true}})); return true; }})()"""
    )


def _search(page, text):
    """Types in the text filter and waits out its debounce (300 ms) and the request."""
    _set(page, "input[name=text]", text, event="input")
    time.sleep(0.4)
    page.settle()


def _get(base, route, **params):
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{base}/data/plugin/erranalysis/{route}?{query}") as answer:
        return json.loads(answer.read())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("dashboard")
    logdir = dashboard_logdir(root)
    process, url = serve(logdir)
    browser = Browser(root / "chromium-profile")
    try:
        yield logdir, url, browser
    finally:
        browser.close()
        process.kill()
        process.wait(timeout=10)


def test_dashboard_workflow_in_tensorboard(served):
    started = time.monotonic()
    logdir, url, browser = served
    listing = json.loads(urllib.request.urlopen(f"{url}/data/plugins_listing").read())
    assert listing["erranalysis"]["enabled"] is True
    assert listing["erranalysis"]["tab_name"] == "Error Analysis"

    # TensorBoard's own page: the tab is there, and its iframe shows the first rows.
    board = browser.page(f"{url}/#erranalysis")
    shown = board.wait(
        "(() => { const frame = document.querySelector('iframe');"
        " const inner = frame && frame.contentDocument;"
        " return inner && inner.querySelectorAll('table.rows tbody tr').length; })()",
        timeout=40,
        what="the Error Analysis tab inside TensorBoard",
    )
    assert shown == 50
    assert board.problems() == []

    # The rest drives the page TensorBoard puts in that iframe, opened on its own.
    page = browser.page(f"{url}/data/plugin_entry.html?name=erranalysis")
    page.wait("!!document.querySelector('table.rows tbody tr')", timeout=30, what="the first rows")
    page.settle()
    page.evaluate(PROBES)
    runs = page.evaluate("[...document.querySelectorAll('#run-select option')].map(o => o.value)")
    assert sorted(runs) == ["classes", "tokens"]
    _set(page, "#run-select", "classes")
    page.settle()
    run = load_run(logdir / "classes")
    last = run.epochs[-1]
    ids = np.asarray(run.array("example_id", last))
    correct = np.asarray(run.array("correct", last))
    label = np.asarray(run.array("label", last))
    prediction = np.asarray(run.array("prediction", last))
    assert page.evaluate("__probe.total()") == len(ids)

    # 1. The disagreements: every row shown is wrong, and they are all the wrong examples.
    _set(page, "select[name=correct]", "false")
    page.settle()
    assert set(page.evaluate("__probe.column('correct')")) == {"false"}
    assert page.evaluate("__probe.total()") == int((~correct).sum())
    shown = sorted(int(v) for v in page.evaluate("__probe.column('example_id')"))
    assert shown == sorted(ids[~correct].tolist())

    # 2. Sort by clicking a header: descending, then ascending.
    page.click("section[data-view=examples] th[data-column=loss]")
    page.settle()
    losses = [float(v) for v in page.evaluate("__probe.column('loss')")]
    assert losses == sorted(losses, reverse=True) and len(losses) == int((~correct).sum())
    page.click("section[data-view=examples] th[data-column=loss]")
    page.settle()
    assert [float(v) for v in page.evaluate("__probe.column('loss')")] == sorted(losses)

    # 3. Hostile text is text: <script>, <img onerror>, </td>, a right-to-left override, 100 kB.
    page.click("button.reset")
    page.settle()
    _search(page, "window.__pwned")
    assert page.evaluate("__probe.total()") == 2
    assert sorted(page.evaluate("__probe.column('input_text')")) == sorted([TEXTS[0], TEXTS[4]])
    _search(page, "out of the table")
    assert page.evaluate("__probe.total()") == 1
    assert page.evaluate("__probe.column('input_text')") == [CELL_BREAK]
    cells = page.evaluate("__probe.rows()[0].cells.length")
    assert cells == page.evaluate(
        "document.querySelectorAll('section[data-view=examples] table.rows thead th').length"
    )
    _search(page, "reversed and")
    assert page.evaluate("__probe.total()") == 1
    isolated = page.evaluate(
        "(() => { const b = document.querySelector("
        "'section[data-view=examples] td[data-column=input_text] bdi');"
        " return [b.textContent, b.getAttribute('dir')]; })()"
    )
    assert isolated == [RTL, "auto"]
    _search(page, "xxxxxxxxxx")
    assert page.evaluate("__probe.total()") == 1
    shown_text = page.evaluate("__probe.column('input_text')")[0]
    assert shown_text.startswith("long xxx") and len(shown_text) < 300
    page.click("section[data-view=examples] button.show-all")
    full = page.wait(
        "document.querySelector('section[data-view=examples] .full-text')?.textContent",
        what="the whole 100 kB text",
    )
    assert full == LONG
    assert page.evaluate("document.getElementById('injected')") is None
    assert page.evaluate("document.querySelectorAll('main img, main script, main b').length") == 0
    assert page.evaluate("String(window.__pwned)") == "undefined"
    assert page.evaluate("document.title") == "Error Analysis"
    page.click("button.reset")
    page.settle()

    # 4. A class's bar opens that class's examples; a confusion cell opens label x prediction.
    page.click("button[data-tab=metrics]")
    page.settle()
    page.click('rect.bar[data-class="1"][data-metric="f1"]')
    page.settle()
    assert page.evaluate("document.documentElement.dataset.view") == "examples"
    assert set(page.evaluate("__probe.column('label')")) == {"1"}
    assert page.evaluate("__probe.total()") == int((label == 1).sum())
    page.click("button[data-tab=metrics]")
    page.settle()
    page.click('table.confusion td.cell[data-row="0"][data-col="1"]')
    page.settle()
    both = ((label == 0) & (prediction == 1)).sum()
    assert page.evaluate("__probe.total()") == int(both) > 0
    assert set(page.evaluate("__probe.column('label')")) == {"0"}
    assert set(page.evaluate("__probe.column('prediction')")) == {"1"}

    # 5. A box on the data map opens exactly the points inside it.
    page.click("button[data-tab=maps]")
    page.settle()
    left, top, right, bottom = page.evaluate(
        "(() => { const s = document.querySelector('svg.scatter-layer');"
        " const r = s.getBoundingClientRect(); const p = s.dataset.plot.split(',').map(Number);"
        " return [r.left + p[0], r.top + p[1], r.left + p[2], r.top + p[3]]; })()"
    )
    width, height = right - left, bottom - top
    page.drag((left + 0.3 * width, top + 0.2 * height), (left + 0.75 * width, top + 0.65 * height))
    page.settle()
    box = [
        float(v)
        for v in page.evaluate("document.querySelector('svg.scatter-layer').dataset.box").split(",")
    ]
    points = _get(url, "map", run="classes", epoch=last, kind="datamap")["points"]
    inside = sorted(
        p["example_id"] for p in points if box[0] <= p["x"] <= box[1] and box[2] <= p["y"] <= box[3]
    )
    assert 0 < len(inside) < len(ids)
    assert page.evaluate("document.documentElement.dataset.view") == "examples"
    assert page.evaluate("__probe.total()") == len(inside)
    rows = sorted(int(v) for v in page.evaluate("__probe.column('example_id')"))
    assert len(rows) == min(50, len(inside)) and set(rows) <= set(inside)

    # 5b. Why: the stored features show as text; a slice's row opens exactly its examples.
    page.click("button[data-tab=why]")
    page.settle()
    features = page.evaluate(
        "[...document.querySelectorAll('section[data-view=why] table.records')[0]"
        ".querySelectorAll('tbody tr td:first-child')].map((td) => td.textContent)"
    )
    assert features == ["length", "has <script>"]
    slices = _get(url, "why", run="classes", epoch=last)["slices"]
    assert slices
    page.click("section[data-view=why] .table-box:nth-of-type(2) table.records tbody tr")
    page.settle()
    assert page.evaluate("document.documentElement.dataset.view") == "examples"
    assert page.evaluate("__probe.total()") == slices[0]["support"]

    # 5c. Fixed between the first and the last epoch; then paging through all the rows.
    page.click("button.reset")
    page.settle()
    _set(page, "select[name=changed-kind]", "fixed")
    page.settle()
    before_ok = np.asarray(run.array("correct", run.epochs[0]))
    assert page.evaluate("__probe.total()") == int((correct & ~before_ok).sum())
    assert set(page.evaluate("__probe.column('correct')")) <= {"true"}
    page.click("button.reset")
    page.settle()
    page.click("section[data-view=examples] .pager button:nth-child(3)")  # next
    page.settle()
    assert len(page.evaluate("__probe.column('example_id')")) == len(ids) - 50

    # 6. The epoch slider (keyboard, like a user): the rows now hold the earlier epoch's losses.
    page.click("section[data-view=examples] .pager button:nth-child(1)")  # first
    page.settle()
    before = page.evaluate("__probe.column('loss')")
    page.evaluate("document.getElementById('epoch-slider').focus()")
    page.key("ArrowLeft", 37)
    page.settle()
    earlier = run.epochs[-2]
    assert page.evaluate("document.getElementById('epoch-label').textContent").startswith(
        f"{earlier} of"
    )
    after = [float(v) for v in page.evaluate("__probe.column('loss')")]
    shown_ids = [int(v) for v in page.evaluate("__probe.column('example_id')")]
    loss_then = dict(
        zip(
            np.asarray(run.array("example_id", earlier)).tolist(),
            np.asarray(run.array("loss", earlier)).tolist(),
        )
    )
    assert after == pytest.approx([loss_then[i] for i in shown_ids], rel=1e-5)
    assert after != [float(v) for v in before]

    # 7. Detail: trajectory and neighbours; "more like this" opens them in Examples.
    page.click("section[data-view=examples] table.rows tbody tr")
    page.settle()
    assert page.evaluate("document.documentElement.dataset.view") == "detail"
    dots = page.evaluate("document.querySelectorAll('svg.line-chart circle.dot.loss').length")
    assert dots == len(run.epochs)
    neighbours = page.evaluate(
        "document.querySelectorAll('section[data-view=detail] table.records tbody tr').length"
    )
    page.click("#more-like-this")
    page.settle()
    assert page.evaluate("__probe.total()") >= min(neighbours, 2)

    # 8. Detail of a token-level run: the per-token table matches the stored token losses.
    _set(page, "#run-select", "tokens")
    page.settle()
    tokens = load_run(logdir / "tokens")
    page.click('section[data-view=examples] table.rows tbody tr[data-id="1"]')
    page.settle()
    image = page.wait(
        "(() => { const i = document.querySelector('.heatmaps img');"
        " return i && i.complete && [i.naturalWidth, i.getAttribute('src')]; })()",
        what="the stored heatmap",
    )
    assert image[0] == 6 and "name=example1_attention.png" in image[1]
    example = int(page.evaluate("document.querySelector('section[data-view=detail]').dataset.id"))
    row = int(np.flatnonzero(np.asarray(tokens.array("example_id")) == example)[0])
    token_loss = np.asarray(tokens.array("token_loss"))[row]
    mask = np.asarray(tokens.array("token_mask"))[row]
    table = page.evaluate(
        "[...document.querySelectorAll('table.tokens tbody tr')].map((tr) =>"
        " [tr.querySelector('td.loss').dataset.value, tr.cells[5].textContent])"
    )
    assert len(table) == len(token_loss)
    assert [c == "yes" for _, c in table] == mask.tolist()
    assert [float(v) for v, _ in table] == pytest.approx(
        np.where(mask, token_loss, 0).tolist(), abs=1e-6
    )

    # The console is watched: a log line of ours arrives as a Runtime.consoleAPICalled event.
    page.evaluate("console.log('probe-done'), true")
    page.wait("true", what="nothing")
    logged = [
        e
        for e in browser.events
        if e.get("method") == "Runtime.consoleAPICalled"
        and e["params"]["args"][0].get("value") == "probe-done"
    ]
    assert logged
    # The browser's own request for /favicon.ico (a top-level page) is not the dashboard's.
    problems = [p for p in page.problems() if not p.rstrip().endswith("/favicon.ico")]
    assert problems == []
    assert time.monotonic() - started < 60
