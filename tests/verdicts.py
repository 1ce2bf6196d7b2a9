"""Whatever the machine's load made of a real run (PASS, FAIL, or INCONCLUSIVE when the generator was the
bottleneck), `run` must exit with the code its own results imply: the verdict's, at least 1 when the run was
aborted before its plan ended, 130 when interrupted. That check holds on any machine."""

import json
from pathlib import Path


def assert_exit_is_the_verdicts(returncode: int, folder: Path, output: str = "") -> None:
    verdict = json.loads((folder / "verdict.json").read_text())
    status = json.loads((folder / "run.json").read_text())["status"]
    expected = {"aborted": max(1, verdict["exit_code"]), "interrupted": 130}.get(status, verdict["exit_code"])
    assert returncode == expected, (returncode, status, verdict["verdict"], output)
    assert verdict["verdict"] in ("PASS", "WARN", "FAIL", "INCONCLUSIVE", "NO_DATA"), verdict["verdict"]
