"""The stage gate: the one interface the runner uses to judge a stage while the run goes on.

After each stage the runner (medianest_load/run.py) asks whether the run may go on. It hands over plain data:
the recorder's LiveSnapshot (summary rows and encoded histograms, medianest_load/recorder.py), the path of the
1-second series when a `for:` criterion needs it, and why the load generator limited the stage, if it did. The
answer is a one-line stop reason, or None to go on. The runner imports nothing else of this package, and only
inside the function that builds the gate: a run never pays for pandas before it has a stage to judge.

Judging itself is analysis/judging.py's judge_stage and abort_reason, the same rules as the verdict after the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd

from analysis.criteria import SloSet
from analysis.judging import abort_reason, judge_stage
from analysis.load import read_series, series_chunks
from analysis.slo import SLO
from medianest_load.inputs import load_named
from medianest_load.recorder import LiveSnapshot
from medianest_load.results_format import ALL_ENDPOINTS
from medianest_load.vocabulary import Status


@dataclass(frozen=True, kw_only=True)
class LiveGate:
    """An SLO set applied stage by stage: a failed criterion marked `abort` stops the run; with
    `stop_on_failed_stage` any failed criterion does (an audit moves on only after a pass)."""

    slo: SloSet
    stop_on_failed_stage: bool = False

    @classmethod
    def load(cls, slo: str | Path, stop_on_failed_stage: bool = False) -> LiveGate:
        """The gate of an SLO set by name (slo/<name>.yaml) or path; a mistake in it raises SloError (one line)."""
        return cls(slo=load_named(SLO, slo), stop_on_failed_stage=stop_on_failed_stage)

    @property
    def needs_series(self) -> bool:
        """Whether a criterion judges sustained windows (`for:`): then decide() needs the flushed timeseries.csv."""
        return any(criterion.window_s is not None for criterion in self.slo.criteria)

    def decide(self, stage: int, snapshot: LiveSnapshot, timeseries: Path | None = None,
               generator_limited: str | None = None, generator_lag_ms: float | None = None) -> str | None:
        """Why the run must stop after `stage` (one line), or None to go on. `timeseries`: the series flushed now,
        for `for:` criteria; `generator_limited`: why the load generator limited the stage, which makes its
        latency and throughput INCONCLUSIVE (never a reason to stop); `generator_lag_ms`: its loop-lag p95, within
        which a latency failure is INCONCLUSIVE too."""
        summary = pd.DataFrame(snapshot.summary_rows)
        if summary.empty:
            return None
        series, chunks = None, None
        if timeseries is not None:  # its ALL rows in memory; the windows read the whole series chunk by chunk
            series = read_series(timeseries, lambda chunk: chunk["endpoint"] == ALL_ENDPOINTS)
            chunks = partial(series_chunks, timeseries)
        results = judge_stage(summary, self.slo, stage, snapshot.histograms, series, chunks,
                              corrected=snapshot.corrected,
                              generator_limited={stage: generator_limited} if generator_limited else None,
                              ok_histograms=snapshot.ok_histograms,
                              generator_lag_ms={stage: generator_lag_ms} if generator_lag_ms else None)
        if self.stop_on_failed_stage:
            failed = [result.criterion.name for result in results if result.status == Status.FAIL]
            if failed:
                return f"stage {stage} failed {', '.join(failed)} (stop_on_failed_stage)"
        return abort_reason(results)
