"""Where the harness keeps its data files: one place, so nothing hard-codes a relative path."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SCENARIOS_DIR = REPO_ROOT / "scenarios"
TARGET_PROFILES_DIR = REPO_ROOT / "target_profiles"
SLO_DIR = REPO_ROOT / "slo"
RESULTS_DIR = REPO_ROOT / "results"
LOCUSTFILE = REPO_ROOT / "locustfiles" / "medianest.py"


def resolve_named_file(name_or_path: str, folder: Path, suffix: str = ".yaml") -> Path:
    """Accept either a path or a bare name looked up in the harness's own folder."""
    candidate = Path(name_or_path)
    if candidate.exists():
        return candidate
    named = folder / f"{name_or_path}{suffix}"
    if named.exists():
        return named
    return candidate
