"""Click's errors as the harness shows them: one line, `error: ...`, exit code 2 for every user mistake,
whichever command (the harness's own, or the reference target run on its own) made it."""

from __future__ import annotations

import click


class UsageProblem(click.ClickException):
    """A usage error shown as one line, exit code 2."""

    exit_code = 2

    def show(self, file: object = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class _OneLine(click.Command):
    """Turns click's usage errors, raised while parsing or by the command itself (click.BadParameter), into a
    UsageProblem naming the command; on a group it covers every subcommand too."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as error:
            raise _one_line(ctx, error) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as error:
            raise _one_line(ctx, error) from None


def _one_line(ctx: click.Context, error: click.UsageError) -> UsageProblem:
    where = error.ctx.command_path if error.ctx else ctx.command_path
    return UsageProblem(f"{where}: {error.format_message()} (see --help)")


class OneLineErrors(_OneLine, click.Command):
    pass


class OneLineGroup(_OneLine, click.Group):
    pass
