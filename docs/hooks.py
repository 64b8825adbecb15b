"""MkDocs hooks (``hooks:`` in docs/mkdocs.yml): what the site takes from outside ``docs/pages/``.

``docs/benchmarks.md`` and ``docs/img/`` stay where the benchmarks and the browser test write them (the README
links them there), so they join the site here rather than being copied. The two reference pages carry a
marker that is replaced, at every build, by the text ``gen_reference`` writes from the pydantic ``Config`` and
the argparse parser: the references are never committed, so they cannot be stale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gen_reference  # docs/gen_reference.py: MkDocs puts this folder on sys.path while it loads the hook
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

DOCS = Path(__file__).resolve().parent
BEGIN, END = "<!-- generated at build time -->", "<!-- end of the generated part -->"
GENERATED = {"reference/configuration.md": gen_reference.config_reference,
             "reference/commands.md": gen_reference.command_reference}


def on_files(files: Files, config: Any) -> Files:
    """Add ``docs/benchmarks.md`` and ``docs/img/*`` to the site, at ``benchmarks.md`` and ``img/``."""
    for path in [DOCS / "benchmarks.md", *sorted((DOCS / "img").glob("*"))]:
        files.append(File(str(path.relative_to(DOCS)), src_dir=str(DOCS), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Replace a reference page's lines from BEGIN to END (a note for whoever reads the source) with the
    generated reference; a reference page without both markers fails the build."""
    make = GENERATED.get(page.file.src_uri)
    if make is None:
        return markdown
    if BEGIN not in markdown or END not in markdown:
        raise PluginError(f"{page.file.src_uri} needs the lines {BEGIN!r} and {END!r} around the place for the "
                          "generated reference")
    begin, end = markdown.index(BEGIN), markdown.index(END) + len(END)
    return markdown[:begin] + make() + markdown[end:]
