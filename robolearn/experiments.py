"""Running a grid of independent experiment jobs in worker processes, with a launch deadline.

Shared by the study scripts (scripts/rl_reweighting.py, scripts/wsrl_finetune.py): jobs whose
results already exist are rerun cheaply by the job function itself (it returns the stored
result), so a study can be stopped and continued; `stop` only stops *launching* new work.
"""

from __future__ import annotations

import datetime as dt
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Callable, Sequence


def stop_time(hhmm: str | None) -> dt.datetime | None:
    """Today's UTC time HH:MM (a --stop-at flag), or None."""
    if not hhmm:
        return None
    try:
        hh, mm = map(int, hhmm.split(":"))
        return dt.datetime.now(dt.timezone.utc).replace(hour=hh, minute=mm, second=0, microsecond=0)
    except ValueError as e:
        raise SystemExit(f"--stop-at must be HH:MM (UTC), got {hhmm!r}") from e


def run_jobs(jobs: Sequence[Any], fn: Callable[[Any], dict], workers: int, already_done: Callable[[Any], bool],
             on_result: Callable[[list[dict]], None], stop: dt.datetime | None = None,
             label: Callable[[Any], Any] = lambda job: job) -> list[dict]:
    """Run fn(job) for every job in `workers` processes, in order; jobs not already done are not
    launched after `stop`. on_result(results so far) runs after each finished job (e.g. to save
    them). Returns the results of the jobs that ran."""
    t0 = time.time()
    results: list[dict] = []
    pending: set = set()
    todo, skipped = list(jobs), []
    with ProcessPoolExecutor(workers) as pool:
        while todo or pending:
            while todo and len(pending) < workers:
                job = todo.pop(0)
                if not already_done(job) and stop is not None and dt.datetime.now(dt.timezone.utc) >= stop:
                    skipped.append(job)
                    continue
                print(f"[{time.time() - t0:.0f}s] launch {label(job)} at {dt.datetime.now(dt.timezone.utc):%H:%M:%S} UTC",
                      flush=True)
                pending.add(pool.submit(fn, job))
            if not pending:
                break
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                results.append(f.result())
                print(f"[{len(results)}/{len(jobs)} {time.time() - t0:.0f}s] {results[-1]}", flush=True)
                on_result(results)
    if skipped:
        print(f"stop at {stop:%H:%M} UTC: {len(skipped)} runs not launched: {[label(j) for j in skipped]}", flush=True)
    print(f"done in {time.time() - t0:.0f}s: {len(results)} of {len(jobs)} runs", flush=True)
    return results
