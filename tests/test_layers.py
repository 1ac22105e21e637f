"""The package's layers hold: compute -> analysis -> present, with the run format apart.

Read from the source with ``ast`` (nothing is imported): every ``import`` of every module,
at module level or inside a function (a lazy import). The rules:

- ``analysis`` never imports Keras, TensorFlow or another layer of ours, not even lazily;
- ``compute`` imports no presentation, no run format and no wiring; it may reach analysis
  only lazily, inside a convenience method;
- the run format (``run``) imports no analysis at module level (lazily inside a method is
  fine), and never compute, presentation or wiring;
- ``present`` never runs the model: no compute, no Keras, no wiring;
- the shared base (``decoding``, ``options``, ``_columns``, ``_errors``, ``_loss_report``)
  imports only the base at module level;
- the dashboard (``dashboard``: TensorBoard's Error Analysis tab) reads runs and may use
  analysis, never compute, presentation, wiring, Keras or TensorFlow; inside it only
  ``_plugin.py`` imports TensorBoard (and werkzeug), so the queries run without a server;
- wiring (``pipeline``, ``callback``, ``analyze``, ``cli``, ``demo``) sits on top; only the
  command line and the demo may import the demo.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "keras_erranalysis"
BASE = {"decoding", "options", "_columns", "_errors", "_loss_report"}
LAYERS = {"compute", "analysis", "run", "present", "demo", "dashboard"}
WIRING = {"pipeline", "_epoch_heatmaps", "callback", "_analyze", "cli", "health"}
FRAMEWORKS = {"keras", "tensorflow"}

# layer -> (forbidden at module level, forbidden even inside functions)
RULES = {
    "base": (LAYERS | WIRING | FRAMEWORKS, LAYERS - {"analysis"} | WIRING | FRAMEWORKS),
    "analysis": (
        LAYERS - {"analysis"} | WIRING | FRAMEWORKS,
        LAYERS - {"analysis"} | WIRING | FRAMEWORKS,
    ),
    "compute": (
        {"analysis", "run", "present", "demo", "dashboard"} | WIRING,
        {"run", "present", "demo", "dashboard"} | WIRING,
    ),
    "run": (
        {"analysis", "compute", "present", "demo", "dashboard", "keras", "tensorflow"} | WIRING,
        {"compute", "present", "demo", "dashboard", "keras"} | WIRING,
    ),
    "present": (
        {"compute", "demo", "dashboard", "keras"} | WIRING,
        {"compute", "demo", "dashboard", "keras"} | WIRING,
    ),
    "dashboard": (
        {"compute", "present", "demo"} | WIRING | FRAMEWORKS,
        {"compute", "present", "demo"} | WIRING | FRAMEWORKS,
    ),
    "wiring": ({"demo", "cli"}, {"demo", "cli"}),
    "demo": ({"cli"}, {"cli"}),
    "cli": (set(), set()),
}


def layer_of(relative: Path) -> str:
    """The layer of a module, from its path inside the package."""
    top = relative.parts[0].removesuffix(".py")
    if top in LAYERS:
        return top
    if top in BASE or top == "__init__":
        return "base" if top != "__init__" else "root"
    if top == "cli":
        return "cli"
    if top in WIRING:
        return "wiring"
    raise AssertionError(f"{relative} belongs to no layer: add it to a rule in {__file__}")


def target_of(name: str) -> str | None:
    """What an imported name belongs to: one of our layers or wiring, a framework, or None."""
    parts = name.split(".")
    if parts[0] in FRAMEWORKS:
        return parts[0]
    if parts[0] != "keras_erranalysis" or len(parts) == 1:
        return None
    first = parts[1]
    if first in LAYERS or first in WIRING:
        return first
    return None  # the base


def imports(source: str) -> list[tuple[str, bool, int]]:
    """(imported module, lazy?, line) for every import in a module's source."""
    found: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((alias.name, lazy, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module, lazy, child.lineno))
                if child.module == "keras_erranalysis":  # from keras_erranalysis import x
                    found.extend(
                        (f"keras_erranalysis.{alias.name}", lazy, child.lineno)
                        for alias in child.names
                    )
            visit(child, inside)

    visit(ast.parse(source), False)
    return found


def violations(layer: str, source: str, where: str) -> list[str]:
    """The imports of one module that break its layer's rule."""
    if layer == "root":
        return []  # the declared public API imports lazily from every layer
    at_top, anywhere = RULES[layer]
    broken = []
    for name, lazy, line in imports(source):
        target = target_of(name)
        if target is None:
            continue
        if target in anywhere or (not lazy and target in at_top):
            how = "lazily" if lazy else "at module level"
            broken.append(f"{where}:{line} ({layer}) imports {name} {how}")
    return broken


def test_every_layer_keeps_to_its_imports():
    broken = []
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 30
    for path in modules:
        relative = path.relative_to(PACKAGE)
        broken += violations(layer_of(relative), path.read_text(), str(relative))
    assert not broken, "layer boundaries broken:\n" + "\n".join(broken)


@pytest.mark.parametrize(
    ("layer", "source", "expected"),
    [
        ("analysis", "import tensorflow as tf\n", 1),
        ("analysis", "def f():\n    import keras\n", 1),
        ("analysis", "from keras_erranalysis.compute import compute_losses\n", 1),
        ("analysis", "from keras_erranalysis import present\n", 1),
        ("analysis", "import numpy as np\nfrom keras_erranalysis.decoding import V\n", 0),
        ("compute", "from keras_erranalysis.analysis import rank_examples\n", 1),
        ("compute", "def f():\n    from keras_erranalysis.analysis import x\n", 0),
        ("compute", "def f():\n    from keras_erranalysis.present import x\n", 1),
        ("run", "from keras_erranalysis.analysis._ranking import rank_examples\n", 1),
        (
            "run",
            "class R:\n    def m(self):\n        from keras_erranalysis.analysis import x\n",
            0,
        ),
        ("present", "from keras_erranalysis.compute import compute_losses\n", 1),
        ("present", "from keras_erranalysis.analysis import likely_mislabeled\n", 0),
        ("base", "from keras_erranalysis.analysis import rank_examples\n", 1),
        ("dashboard", "from keras_erranalysis.analysis._similarity import nearest\n", 0),
        ("dashboard", "from keras_erranalysis.run import load_run\n", 0),
        ("dashboard", "def f():\n    import tensorflow as tf\n", 1),
        ("dashboard", "def f():\n    from keras_erranalysis.compute import x\n", 1),
        ("dashboard", "from keras_erranalysis.present import write_report\n", 1),
        ("dashboard", "from keras_erranalysis import cli\n", 1),
    ],
)
def test_the_rule_catches_what_it_must(layer, source, expected):
    assert len(violations(layer, source, "m.py")) == expected


def test_analysis_imports_without_keras_or_tensorflow():
    import subprocess
    import sys

    code = (
        "import sys, keras_erranalysis.analysis, keras_erranalysis.run;"
        "print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


SERVER_LIBRARIES = {"tensorboard", "werkzeug"}


def test_only_the_plugin_module_imports_tensorboard():
    # The queries (and the package __init__) must import without a TensorBoard server.
    broken = []
    for path in sorted((PACKAGE / "dashboard").rglob("*.py")):
        if path.name == "_plugin.py":
            continue
        for name, _, line in imports(path.read_text()):
            if name.split(".")[0] in SERVER_LIBRARIES:
                broken.append(f"{path.relative_to(PACKAGE)}:{line} imports {name}")
    assert not broken, "only dashboard/_plugin.py may import TensorBoard:\n" + "\n".join(broken)
    plugin = (PACKAGE / "dashboard" / "_plugin.py").read_text()
    assert any(n.startswith("tensorboard") for n, _, _ in imports(plugin))


def test_dashboard_queries_import_without_tensorboard_or_tensorflow():
    import subprocess
    import sys

    code = (
        "import sys, keras_erranalysis.dashboard._queries;"
        "print(sorted(m for m in ('keras', 'tensorflow', 'tensorboard') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
