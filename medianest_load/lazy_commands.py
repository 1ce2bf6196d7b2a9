"""Subcommands that load only when they run: `medianest-load --help` lists them without importing their module.

The analysis commands live in analysis/commands.py, which imports pandas, scipy and matplotlib. The group lists
a LazyCommand in their place, with the summary its help shows; once a command is chosen on the command line
(to run it, or for its own --help) the group swaps in the real one.
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

    def load(self) -> click.Command:
        module, _, attribute = self.import_path.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command), f"{self.import_path} is not a click command"
        return command


class LazyGroup(OneLineGroup):
    """A group whose LazyCommands are replaced by the real commands when chosen on the command line."""

    def resolve_command(self, ctx: click.Context,
                        args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if isinstance(command, LazyCommand):
            command = command.load()
            self.add_command(command, name)
        return name, command, rest
