"""Whatever the machine's load made of a real run (PASS, FAIL, or INCONCLUSIVE when the generator was the
bottleneck), `run` must exit with the code of the verdict it wrote: the check that holds on any machine."""

import json
from pathlib import Path


def assert_exit_is_the_verdicts(returncode: int, folder: Path, output: str = "") -> None:
    verdict = json.loads((folder / "verdict.json").read_text())
    assert returncode == verdict["exit_code"], (returncode, verdict["verdict"], output)
    assert verdict["verdict"] in ("PASS", "WARN", "FAIL", "INCONCLUSIVE", "NO_DATA"), verdict["verdict"]
