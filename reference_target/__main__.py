"""`python -m reference_target [options]`: the same command as `medianest-load target`."""

from reference_target.command import target

target(prog_name="python -m reference_target")
