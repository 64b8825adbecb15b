"""The configuration and command references, written from the code itself so they cannot drift from it.

``config_reference()`` walks the pydantic ``Config`` (every section, nested section and key: type, default,
bounds, description); ``command_reference()`` walks ``weakflow.flows.cli.build_parser()`` (every sub-command:
its help, usage, description, arguments and examples). ``docs/hooks.py`` puts both into the site at build
time; ``python docs/gen_reference.py config|commands`` prints one, to read it without building.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

USAGE_WIDTH = 100  # usage lines wrap here whatever the terminal that builds the site


# --------------------------------------------------------------------------------------------- markdown text

def md_text(text: str, table: bool = False) -> str:
    """``text`` as Markdown that shows it literally: ``<workspace>`` stays text, not an HTML tag, and ``*``
    no emphasis; `code spans` are kept as they are (Markdown escapes inside them itself, and a table's cells
    do not split at a ``|`` inside one). In a table cell, ``|`` outside code spans is escaped too."""
    parts = re.split(r"(``.+?``|`[^`]+`)", " ".join(text.split()))
    out = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            part = html.escape(part, quote=False)
            part = re.sub(r"([\\*\[\]_])", r"\\\1", part)
            if table:
                part = part.replace("|", r"\|")
        out.append(part)
    return "".join(out)


# ------------------------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class Setting:
    """One key of the config: its dotted name as ``--set`` takes it, and what the model says of it."""

    key: str
    type: str
    default: str
    bounds: str
    description: str


@dataclass(frozen=True)
class Section:
    """One heading of the reference: a section (or one variant of ``data``) and its keys, nested ones apart."""

    name: str
    doc: str
    settings: list[Setting]

    @property
    def anchor(self) -> str:
        """The heading's id: the dotted name (``weak_train.clid_mu``), ``data-files`` for a variant of data."""
        return self.name.replace("[]", "").replace(" (source: ", "-").rstrip(")").replace(" ", "-")


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The config sections an annotation holds: itself, a union's members, a list's items."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def type_name(annotation: Any) -> str:
    """A type as a config file's writer reads it: ``int``, ``list of str``, ``auto, always or never``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return " or ".join(json.dumps(a) if isinstance(a, str) else str(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0]) + _bounds(args[1:])
    if origin in (Union, types.UnionType):
        named = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(named) + (" or null" if type(None) in args else "")
    if origin in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"list of {len(args)} " + " / ".join(dict.fromkeys(type_name(a) for a in args))
        inner = type_name(args[0]) if args else ""
        return f"list of ({inner})" if " or " in inner else f"list of {inner}" if inner else "list"
    if annotation is Path:
        return "path"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


_BOUND_WORDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "min_length": "at least {} item(s)",
                "max_length": "at most {} item(s)", "pattern": "matches {}"}


def _bounds(metadata: Any) -> str:
    """pydantic's constraints (``Field(ge=0, lt=1)``) in words, in parentheses: `` (>= 0, < 1)``."""
    said = _bound_words(metadata)
    return f" ({said})" if said else ""


def _bound_words(metadata: Any) -> str:
    said = []
    for item in metadata:
        if isinstance(item, FieldInfo):  # Annotated[int, Field(ge=1)] inside a union or a list
            said.append(_bound_words(item.metadata))
            continue
        for name, word in _BOUND_WORDS.items():
            value = getattr(item, name, None)
            if value is not None:
                said.append(word.format(value) if "{}" in word else f"{word} {value}")
    return ", ".join(s for s in said if s)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    return json.dumps(to_jsonable_python(value)) if value is not None else "null"


def _walk(model: type[BaseModel], prefix: str, title: str, doc: str) -> list[Section]:
    here = Section(title, doc, [])
    below: list[Section] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        models = _models_in(field.annotation)
        if models and typing.get_origin(field.annotation) is list:  # a list of sections (weak_labels.rules)
            here.settings.append(Setting(key, "list of sections (below)", _default(field), "",
                                         field.description or ""))
            below += _walk(models[0], f"{key}[].", f"{key}[]", models[0].__doc__ or "")
        elif len(models) > 1:  # a tagged union (data): one heading per variant
            for variant in models:
                tag = variant.model_fields["source"].default if "source" in variant.model_fields else variant.__name__
                below += _walk(variant, f"{key}.", f"{key} (source: {tag})", variant.__doc__ or "")
        elif models:
            below += _walk(models[0], f"{key}.", key, models[0].__doc__ or "")
        else:
            here.settings.append(Setting(key, type_name(field.annotation), _default(field),
                                         _bound_words(field.metadata), field.description or ""))
    return [here, *below]


def config_sections(model: type[BaseModel] | None = None) -> list[Section]:
    """Every section of ``model`` (default: weakflow's ``Config``) in the model's order, nested sections after
    their parent; the top-level keys (``seed``, ``device``) last."""
    if model is None:
        from weakflow.tasks.lib.config import Config as model
    root, *sections = _walk(model, "", "top level", "Settings outside any section.")
    return [s for s in [*sections, root] if s.settings]


def config_reference(model: type[BaseModel] | None = None) -> str:
    """The configuration reference as Markdown: a heading and a table per section."""
    lines: list[str] = []
    for section in config_sections(model):
        lines += [f"## {section.name} {{ #{section.anchor} }}", ""]
        if section.doc.strip():
            lines += [md_text(section.doc), ""]
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        for s in section.settings:
            typ = s.type + (f" ({s.bounds})" if s.bounds else "")
            lines.append(f"| `{s.key}` | {md_text(typ, table=True)} | `{s.default}` | "
                         f"{md_text(s.description, table=True)} |")
        lines.append("")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- commands

def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of every sub-command, in the parser's order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


def _usage(parser: argparse.ArgumentParser) -> str:
    """argparse's own usage line, wrapped at a fixed width."""
    formatter = parser.formatter_class(prog=parser.prog, width=USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _argument_rows(parser: argparse.ArgumentParser, skip: frozenset[str] = frozenset()) -> list[str]:
    """One table row per argument (but those named in ``skip``): as written, its value, its default, its help
    in argparse's own wording."""
    formatter = parser._get_formatter()
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or _name(action) in skip:
            continue
        if action.nargs == 0:
            value = ""
        elif action.choices is not None:
            value = " or ".join(str(c) for c in action.choices)
        else:
            value = action.metavar or (action.dest.upper() if action.option_strings else action.dest)
        default = ""
        if action.default not in (None, False, [], argparse.SUPPRESS) and action.nargs != 0:
            default = str(action.default)
        help_text = ("(required) " if action.required and action.option_strings else "")
        help_text += formatter._expand_help(action) if action.help else ""
        rows.append(f"| `{_name(action)}` | {md_text(str(value), table=True)} | {md_text(default, table=True)} | "
                    f"{md_text(help_text, table=True)} |")
    return rows


def _name(action: argparse.Action) -> str:
    return ", ".join(action.option_strings) or action.dest


_TABLE_HEAD = ["| argument | value | default | what it does |", "|---|---|---|---|"]


def _description(text: str | None, prog: str) -> list[str]:
    """A raw description (line breaks are the author's) as paragraphs; ``%(prog)s`` filled as argparse does."""
    if not text:
        return []
    if "%(prog)" in text:
        text = text % {"prog": prog}
    return [line for para in text.split("\n\n") for line in (md_text(para), "")]


def command_reference() -> str:
    """The command reference as Markdown: the top-level help, the arguments every sub-command takes, then a
    heading per sub-command with its own."""
    from weakflow.flows.cli import build_parser

    parser = build_parser()
    commands = _subcommands(parser)
    shared = frozenset.intersection(*(frozenset(_name(a) for a in sub._actions) for _, _, sub in commands))
    lines = [md_text(parser.description or ""), "", "```text", _usage(parser), "```", "",
             "| command | what it does |", "|---|---|"]
    lines += [f"| [`weakflow {name}`](#{_anchor(name)}) | {md_text(help_line, table=True)} |"
              for name, help_line, _ in commands]
    lines.append("")
    if parser.epilog:
        lines += ["```text", parser.epilog.rstrip(), "```", ""]
    lines += ["## Arguments of every command { #arguments-of-every-command }", "", *_TABLE_HEAD,
              *_argument_rows(commands[0][2], skip=frozenset(_name(a) for a in commands[0][2]._actions) - shared), ""]
    for name, help_line, sub in commands:
        lines += [f"## weakflow {name} {{ #{_anchor(name)} }}", "", f"**{md_text(help_line)}**", "", "```text", _usage(sub), "```", ""]
        lines += _description(sub.description, sub.prog)
        own = _argument_rows(sub, skip=shared)
        lines += [*_TABLE_HEAD, *own, ""] if own else ["Only the [arguments of every command](#arguments-of-every-command).", ""]
        if sub.epilog:
            lines += ["```text", sub.epilog.rstrip(), "```", ""]
    return "\n".join(lines)


def _anchor(command: str) -> str:
    return f"weakflow-{command}"


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else ""
    if which not in ("config", "commands"):
        sys.exit("usage: python docs/gen_reference.py config|commands")
    print(config_reference() if which == "config" else command_reference())
