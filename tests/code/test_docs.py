"""The documentation site builds with every warning an error, and its generated references cover the code.

The site (``docs/mkdocs.yml``) is built with ``mkdocs build --strict`` into a temporary folder, as CI builds it
with the default suite: a broken link or anchor, a page left out of the navigation or a reference page without
its marker fails here. The configuration and command references are written from ``Config`` and
``build_parser()`` at build time; these tests walk both on their own and look for every setting and every
command in the built pages, so a generator that drops one fails too.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, get_args, get_origin

import pytest
from pydantic import BaseModel, Field

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def build(docs: Path, site: Path) -> subprocess.CompletedProcess:
    """``mkdocs build --strict`` of the site whose config is ``docs/mkdocs.yml``, into ``site``."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.fail("mkdocs is not installed: it belongs to the dev extra (pip install -e .[dev])")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(docs / "mkdocs.yml"),
                           "-d", str(site)], capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = build(DOCS, out)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    """docs/gen_reference.py, which is not part of the installed package."""
    name = "weakflow_docs_gen_reference"
    spec = importlib.util.spec_from_file_location(name, DOCS / "gen_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def setting_keys(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Every leaf setting of a config model by its dotted name (``weak_labels.rules[].name`` for a list of
    sections), with its pydantic field: a walk of its own, not the generator's."""
    keys: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        ann = field.annotation
        inner = [a for a in (ann, *get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if get_origin(ann) is list and inner:
            keys[prefix + name] = field
            keys |= setting_keys(inner[0], f"{prefix}{name}[].")
        elif inner:
            for section in inner:
                keys |= setting_keys(section, f"{prefix}{name}.")
        else:
            keys[prefix + name] = field
    return keys


def test_site_builds_strict(site: Path) -> None:
    for page in ("index.html", "concepts.html", "guides/tables.html", "guides/text.html", "benchmarks.html",
                 "reference/configuration.html", "reference/commands.html", "img/mlflow-run.png"):
        assert (site / page).is_file(), page
    # read offline too: no page loads a script, a style sheet or a font from elsewhere (the theme's
    # highlight.js would come from a CDN unless it is off)
    remote = [f"{page.relative_to(site)}: {m}" for page in site.rglob("*.html")
              for m in re.findall(r"<(?:script|link)[^>]*(?:src|href)=\"(?:https?:)?//[^\"]*", page.read_text())]
    assert not remote, remote


def test_every_setting_is_in_the_configuration_reference(site: Path, gen: ModuleType) -> None:
    from weakflow.tasks.lib.config import Config

    page = (site / "reference/configuration.html").read_text()
    written = gen.config_reference()
    keys = setting_keys(Config)
    assert len(keys) > 100  # the walk found the sections, not just the top level
    missing = [key for key in keys if f"<code>{key}</code>" not in page]
    assert not missing, f"settings missing from the built configuration reference: {missing}"
    undescribed = [key for key, field in keys.items()
                   if field.description and gen.md_text(field.description, table=True) not in written]
    assert not undescribed, f"descriptions not taken from the model: {undescribed}"
    assert "serve.max_text_chars" in page and "<table>" in page


def test_the_reference_follows_the_model(gen: ModuleType) -> None:
    """A setting, its bounds, default and description come from the model itself: change them, and the
    reference says the new thing."""
    class Inner(BaseModel):
        depth: int = Field(3, ge=1, description="how deep <it> goes | far")

    class Before(BaseModel):
        inner: Inner = Inner()
        rate: float = Field(0.5, gt=0.0, lt=1.0, description="the old words")

    class After(Before):
        rate: float = Field(0.25, gt=0.0, lt=1.0, description="the new words")

    before, after = gen.config_reference(Before), gen.config_reference(After)
    assert "`inner.depth`" in before and "(&gt;= 1)" in before and r"how deep &lt;it&gt; goes \| far" in before
    assert "the old words" in before and "`0.5`" in before
    assert "the new words" in after and "`0.25`" in after and "the old words" not in after


def test_every_command_and_argument_is_in_the_command_reference(site: Path) -> None:
    from weakflow.flows.cli import build_parser

    page = (site / "reference/commands.html").read_text()
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert len(commands) >= 10
    for name, sub in commands.items():
        assert re.search(rf"<h2 id=\"[^\"]*\">weakflow {re.escape(name)}\b", page), f"no heading for {name}"
        assert f"usage: weakflow {name}" in page, name
        for action in sub._actions:
            for flag in action.option_strings:
                assert flag in page, f"weakflow {name} {flag} is not in the command reference"
        for line in (sub.epilog or "").splitlines()[1:]:  # the examples, as argparse shows them
            assert line.strip().replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace(
                '"', "&quot;") in page, f"example missing: {line}"


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    """--strict and the link checks are on: a page linking to a missing page or anchor stops the build."""
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs, ignore=shutil.ignore_patterns("__pycache__"))
    page = docs / "pages" / "concepts.md"
    page.write_text(page.read_text() + "\n[gone](no-such-page.md) and [here](index.md#no-such-anchor)\n")
    done = build(docs, tmp_path / "site")
    assert done.returncode != 0
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    for planted in ("no-such-page.md", "no-such-anchor"):
        assert any(planted in line for line in warnings), f"{planted} gave no warning:\n{done.stderr}"


def test_the_readme_links_resolve() -> None:
    """The README is read on its own (GitHub, the package index): each relative link names a file that exists."""
    text = (ROOT / "README.md").read_text()
    targets = {m.split("#")[0] for m in re.findall(r"\]\(([^)\s]+)\)", text) if not m.startswith(("http", "#"))}
    assert targets, "no relative links found: the pattern is wrong"
    missing = sorted(t for t in targets if not (ROOT / t).exists())
    assert not missing, f"README links to files that do not exist: {missing}"
