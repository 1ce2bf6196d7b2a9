"""Subcommands that load only when they run: `medianest-load --help` lists them without importing their module.

The analysis commands live in analysis/commands.py, which imports pandas, scipy and matplotlib. The group lists
a LazyCommand in their place, with the summary its help shows; once a command is chosen on the command line
(to run it, or for its own --help) the group resolves it to the real one, loaded once.
"""

from __future__ import annotations

import importlib

import click

from medianest_load.one_line_errors import OneLineGroup


class LazyCommand(click.Command):
    """Stands in for the command `module:attribute` in its group's listing, with the first paragraph of its help."""

    def __init__(self, name: str, import_path: str, summary: str) -> None:
        super().__init__(name, help=summary)
        self.import_path = import_path
        self._loaded: click.Command | None = None

    def load(self) -> click.Command:
        if self._loaded is None:
            module, _, attribute = self.import_path.partition(":")
            command = getattr(importlib.import_module(module), attribute)
            assert isinstance(command, click.Command), f"{self.import_path} is not a click command"
            self._loaded = command
        return self._loaded


class LazyGroup(OneLineGroup):
    """A group whose LazyCommands hand over to the real commands when chosen on the command line. The group itself
    never changes: its listing stays lazy in a process that already ran an analysis command (tests, or a program
    that calls `main` twice)."""

    def resolve_command(self, ctx: click.Context,
                        args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if isinstance(command, LazyCommand):
            command = command.load()
        return name, command, rest
