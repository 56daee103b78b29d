"""The API reference: built from the docstrings, strict, and complete.

``make docs`` builds ``mkdocs.yml`` with ``--strict``; these tests pin down that
the build passes, that every public name is on a page, and that strict really
is strict: a broken reference or a docstring griffe complains about fails it.
The last tests cover the griffe extension that renders the docstrings' reST.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import griffe
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "mkdocs.yml"
# Each public package (or public module with its own ``__all__``) and its page.
PAGES = {
    "fournines": "fournines",
    "fournines.testing": "testing",
    "fournines.asgi": "asgi",
    "fournines.policies.adaptive": "asgi",
    "fournines.asgi.protocol": "asgi",
    "fournines.wsgi": "wsgi",
    "fournines.wsgi.gunicorn": "wsgi",
    "fournines.wsgi.django": "wsgi",
    "fournines.wsgi.flask": "wsgi",
    "fournines.client": "client",
    "fournines.aiohttp": "aiohttp",
    "fournines.discovery": "discovery",
    "fournines.data": "data",
    "fournines.slo": "slo",
    "fournines.chaos": "chaos",
    "fournines.chaos.ctk.actions": "chaos",
    "fournines.chaos.ctk.probes": "chaos",
    "fournines.instrumentation": "instrumentation",
    "fournines.lab": "lab",
    "fournines.serve": "serve",
    "fournines.serve.k8s": "k8s",
    "fournines.grpc": "grpc",
}


def build(config: Path, site: Path, *, strict: bool = True) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mkdocs", "build", "-f", str(config), "-d", str(site)]
    if strict:
        command.append("--strict")
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def small_config(tmp_path: Path, page: str, *, paths: tuple[Path, ...] = ()) -> Path:
    """A copy of the project's mkdocs.yml that builds one page from ``tmp_path``."""
    config = yaml.safe_load(CONFIG.read_text())
    python = config["plugins"][1]["mkdocstrings"]["handlers"]["python"]
    python["paths"] = [str(ROOT / "src"), *map(str, paths)]
    python["options"]["extensions"] = [f"{ROOT / 'docs/_griffe/rest_markup.py'}:RestMarkup"]
    config["docs_dir"] = str(tmp_path / "docs")
    config["nav"] = ["index.md"]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text(page)
    path = tmp_path / "mkdocs.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    site = tmp_path_factory.mktemp("site")
    result = build(CONFIG, site)
    assert result.returncode == 0, result.stderr
    return site, result.stderr


def anchors(site: Path, package_name: str) -> set[str]:
    """The objects rendered on ``package_name``'s page (their heading anchors)."""
    html = (site / "api" / PAGES[package_name] / "index.html").read_text()
    return set(re.findall(r'id="([\w.]+)"', html))


def documents(anchor: str, value: object) -> bool:
    """Whether the object rendered at ``anchor`` (``module.name``) is ``value``."""
    module, _, name = anchor.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None) is value
    except ImportError:  # a class member's anchor: its prefix is no module
        return False


def test_the_reference_builds_strict_without_a_warning(reference: tuple[Path, str]) -> None:
    _, log = reference
    assert "WARNING" not in log


@pytest.mark.parametrize("package_name", PAGES)
def test_every_public_name_of_a_package_is_documented(
    reference: tuple[Path, str], package_name: str
) -> None:
    site, _ = reference
    documented = anchors(site, package_name)
    package = importlib.import_module(package_name)
    # A lazy name is rendered where it is defined (griffe cannot follow __getattr__).
    missing = [
        name for name in package.__all__
        if f"{package_name}.{name}" not in documented
        and not any(documents(anchor, getattr(package, name))
                    for anchor in documented if anchor.rpartition(".")[2] == name)
    ]
    assert missing == []


def test_the_exception_tree_is_drawn_on_the_fournines_page(reference: tuple[Path, str]) -> None:
    site, _ = reference
    page = (site / "api" / "fournines" / "index.html").read_text()
    assert "├── RejectedError" in page


def test_a_broken_cross_reference_fails_the_strict_build(tmp_path: Path) -> None:
    config = small_config(tmp_path, "# Broken\n\nSee [the limiter][fournines.NoSuchLimiter].\n")

    result = build(config, tmp_path / "site")

    assert result.returncode != 0
    assert "fournines.NoSuchLimiter" in result.stderr


def test_a_missing_object_fails_the_build(tmp_path: Path) -> None:
    config = small_config(tmp_path, "# Missing\n\n::: fournines.NoSuchLimiter\n")

    result = build(config, tmp_path / "site")

    assert result.returncode != 0
    assert "fournines.NoSuchLimiter" in result.stderr


def test_a_docstring_griffe_warns_about_fails_only_the_strict_build(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "sample").mkdir(parents=True)
    (source / "sample" / "__init__.py").write_text(
        '"""A sample."""\n\n\ndef double(x: int) -> int:\n'
        '    """Twice ``x``.\n\n    :param y: not a parameter of double.\n    """\n'
        "    return 2 * x\n"
    )
    config = small_config(tmp_path, "# Sample\n\n::: sample.double\n", paths=(source,))

    lenient = build(config, tmp_path / "lenient", strict=False)
    strict = build(config, tmp_path / "strict")

    assert "Parameter 'y' does not appear in the function signature" in lenient.stderr
    assert strict.returncode != 0


def rest_markup() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "rest_markup", ROOT / "docs" / "_griffe" / "rest_markup.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_rest_role_becomes_an_optional_cross_reference_with_the_short_title() -> None:
    obj = griffe.Module("fournines")
    text = rest_markup().translate(obj, "Run it with :func:`~fournines.asgi.server.serve`.")
    assert text == (
        'Run it with <autoref identifier="fournines.asgi.server.serve" optional>'
        "<code>serve</code></autoref>."
    )


def test_a_doctest_becomes_a_fenced_pycon_block() -> None:
    text = rest_markup().translate(griffe.Module("m"), "Example:\n\n>>> 1 + 1\n2\n\nDone.")
    assert text == "Example:\n\n```pycon\n>>> 1 + 1\n2\n```\n\nDone."


def test_a_literal_block_marker_loses_one_colon() -> None:
    text = rest_markup().translate(griffe.Module("m"), "The tree::\n\n    A\n    └── B\n")
    assert text == "The tree:\n\n    A\n    └── B\n"
