"""The entry path stays lean: `medianest-load --help`, `scenarios list` and `target --help` start in a fresh
interpreter without pandas, scipy, matplotlib, locust or gevent; the analysis commands load when they run (and
matplotlib only when they draw), and the harness's modules reach the analysis package only through the stage gate,
when a run builds it."""

import inspect
import subprocess
import sys

import click
import pytest

from medianest_load.cli import main
from medianest_load.lazy_commands import LazyCommand
from medianest_load.paths import REPO_ROOT

HEAVY = {"pandas", "scipy", "matplotlib", "locust", "gevent"}


def imported_packages(*args: str) -> set[str]:
    """The top-level packages `python -X importtime -m medianest_load.cli ARGS` imports (it must exit 0)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "medianest_load.cli", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line.split("|") for line in done.stderr.splitlines() if line.startswith("import time:")]
    return {columns[-1].strip().split(".")[0] for columns in lines[1:]}  # the first line is the header


@pytest.mark.parametrize("args", [
    ("--help",),
    ("target", "--help"),
    ("scenarios", "list"),  # parses every scenario's SLO set too: analysis/slo.py and criteria.py, without pandas
], ids=" ".join)
def test_the_entry_path_imports_no_heavy_package(args):
    packages = imported_packages(*args)
    assert "medianest_load" in packages, "the importtime listing was read"
    assert packages & HEAVY == set()


def test_the_harness_modules_reach_analysis_only_through_the_gate_when_a_run_builds_it():
    # every module of medianest_load imported in a fresh interpreter: none imports analysis (nor pandas) at
    # module level; the runner imports analysis/gate.py inside live_gate()
    script = ("import importlib, pkgutil, sys, medianest_load\n"
              "names = [m.name for m in pkgutil.iter_modules(medianest_load.__path__, 'medianest_load.')]\n"
              "for name in names: importlib.import_module(name)\n"
              "print(len(names), sorted({m.split('.')[0] for m in sys.modules} & {'analysis', 'pandas'}))")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    count, loaded = done.stdout.split(" ", 1)
    assert int(count) > 20 and loaded.strip() == "[]", done.stdout


def test_the_analysis_commands_load_when_they_run_and_matplotlib_only_to_draw():
    # the real command, with its options: judging needs pandas; the plots' matplotlib loads only where a report is
    # drawn, so a judge-only run (`run --no-report`, a CI gate) never pays for it
    packages = imported_packages("analyze", "--help")
    assert "pandas" in packages and "matplotlib" not in packages, sorted(packages & HEAVY)


def test_the_listing_summarises_each_lazy_command_as_its_own_help_does():
    lazy = {name: command for name, command in main.commands.items() if isinstance(command, LazyCommand)}
    assert set(lazy) == {"analyze", "compare", "project"}
    for name, command in lazy.items():
        real = command.load()
        assert isinstance(real, click.Command) and real.name == name
        assert command.help == inspect.cleandoc(real.help or "").split("\n\n")[0].replace("\n", " "), name
