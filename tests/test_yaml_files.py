"""Every YAML file the harness reads (scenario, target profile, SLO set, the reference target's profiles)
fails the same way on a broken, unreadable or non-UTF-8 file: one line naming the file, where, and what
was expected."""

import re
from pathlib import Path

import pytest

from analysis.slo import SLO, SloError
from medianest_load.inputs import load_named
from medianest_load.scenario import SCENARIO, ScenarioError
from medianest_load.target_profile import TARGET_PROFILE, ProfileError
from reference_target.config import ConfigError, load_profiles

LOADERS = {
    "scenario": (lambda path: load_named(SCENARIO, path), ScenarioError, "a YAML scenario file"),
    "target profile": (lambda path: load_named(TARGET_PROFILE, path), ProfileError, "a YAML target profile"),
    "SLO set": (lambda path: load_named(SLO, path), SloError, "a YAML SLO set"),
    "reference target profiles": (lambda path: load_profiles(Path(path)), ConfigError, "a YAML file with a mapping"),
}


@pytest.mark.parametrize("kind", LOADERS)
def test_broken_and_non_utf8_files_are_one_line(tmp_path, kind):
    load, error, expected = LOADERS[kind]
    cases = {
        "broken.yaml": (b"name: x\nstages: [unclosed\n",
                        r"\(YAML\) line 3, column 1: got text that is not valid YAML \(.+\)"),
        "latin1.yaml": (b"name: caf\xe9\n", r"\(file\): got bytes that are not UTF-8 text \(byte 9\)"),
    }
    for name, (content, where) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(error) as caught:
            load(str(path))
        message = str(caught.value)
        assert re.fullmatch(rf"{re.escape(str(path))}: {where}, expected {expected}.*", message), message
