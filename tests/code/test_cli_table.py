"""The command line is a parser and a table of handlers: every command the parser knows has exactly one
handler in the table, and no handler is left without a command."""

from __future__ import annotations

import argparse

from weakflow.flows.cli import build_parser
from weakflow.flows.commands import HANDLERS


def commands(parser: argparse.ArgumentParser) -> set[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_every_command_has_one_handler_and_every_handler_a_command():
    assert commands(build_parser()) == set(HANDLERS)
    assert len(set(map(id, HANDLERS.values()))) == len(HANDLERS)  # no handler serves two commands
