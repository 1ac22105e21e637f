"""The HTML report in a real headless Chromium: it renders, sorts, filters, logs no error."""

import html
import json
import re
import shutil
import struct
import subprocess

import pytest
from _presentation import HOSTILE, make_run

from keras_erranalysis.present._report import write_report

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium)"
)

# Appended to a copy of the report: drives the page like a user and writes what it saw.
PROBE = """
<script>
(function () {
  var out = {};
  try {
    var table = document.getElementById('hardest-2');
    var heads = Array.prototype.map.call(table.tHead.rows[0].cells, function (c) {
      return c.textContent;
    });
    var loss = heads.indexOf('loss');
    var column = function (i, visibleOnly) {
      return Array.prototype.filter.call(table.tBodies[0].rows, function (r) {
        return !visibleOnly || !r.hidden;
      }).map(function (r) { return r.cells[i].textContent; });
    };
    out.ready = document.documentElement.getAttribute('data-ready');
    out.initial = column(1);
    table.tHead.rows[0].cells[loss].click();
    out.ascending = column(loss);
    table.tHead.rows[0].cells[loss].click();
    out.descending = column(loss);
    var box = document.querySelector('.filters[data-table="hardest-2"]');
    var correct = box.querySelector('[data-filter="correct"]');
    correct.value = 'no';
    correct.dispatchEvent(new Event('change'));
    out.wrong_rows = column(heads.indexOf('correct'), true);
    out.count = box.querySelector('.count').textContent;
    correct.value = '';
    correct.dispatchEvent(new Event('change'));
    var text = box.querySelector('[data-filter="text"]');
    text.value = 'DOCUMENT.title';
    text.dispatchEvent(new Event('input'));
    out.text_rows = column(heads.indexOf('input_text'), true);
    out.pwned = String(window.__pwned);
    out.title = document.title;
    out.scripts = document.querySelectorAll('script').length;
    out.images = document.querySelectorAll('img').length;
    out.broken_images = Array.prototype.filter.call(document.images, function (i) {
      return !i.complete || i.naturalWidth === 0;
    }).length;
    var first = document.querySelector('section[data-epoch="1"]');
    out.epoch1_hidden = first.hasAttribute('data-hidden');
  } catch (error) {
    out.error = String(error);
  }
  var pre = document.createElement('pre');
  pre.id = 'probe-result';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
  console.log('probe-done');
}());
</script>
"""


def _chromium(tmp_path, *args, timeout=90):
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--enable-logging=stderr",
        "--v=0",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]
    return subprocess.run(
        [CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _console(stderr):
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_report_renders_sorts_filters_and_keeps_script_text_inert(tmp_path):
    run_dir = tmp_path / "run"
    make_run(run_dir, epochs=2, n=12)
    report = write_report(run_dir, tmp_path / "report.html")
    probe = tmp_path / "probe.html"
    probe.write_text(
        report.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8"
    )

    done = _chromium(tmp_path, "--dump-dom", probe.as_uri())
    match = re.search(r'<pre id="probe-result">(.*?)</pre>', done.stdout, re.S)
    assert match, done.stderr[-3000:]
    seen = json.loads(html.unescape(match.group(1)))
    assert "error" not in seen, seen
    console = _console(done.stderr)
    assert any("probe-done" in line for line in console), done.stderr[-3000:]  # logs captured
    errors = [line for line in console if re.search(r"Uncaught|Error|Refused|violat", line)]
    assert not errors, errors

    assert seen["ready"] == "1" and seen["epoch1_hidden"] is True
    losses_up = [float(v) for v in seen["ascending"]]
    assert losses_up == sorted(losses_up) and len(losses_up) == 12
    assert [float(v) for v in seen["descending"]] == sorted(losses_up, reverse=True)
    assert seen["wrong_rows"] and set(seen["wrong_rows"]) == {"no"}
    assert seen["count"] == f"{len(seen['wrong_rows'])} of 12 rows shown"
    assert seen["text_rows"] == [HOSTILE[0]]  # the <script> example, shown as its text
    assert seen["pwned"] == "undefined" and seen["title"].startswith("Error analysis")
    assert seen["scripts"] == 2  # the report's own and the probe: none from the data
    assert seen["images"] == 3 and seen["broken_images"] == 0

    shot = tmp_path / "report.png"
    taken = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1800", report.as_uri())
    assert shot.exists(), taken.stderr[-3000:]
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (1280, 1800)
    assert shot.stat().st_size > 50_000  # a rendered page, not a blank one
