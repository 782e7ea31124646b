import datetime as dt

from robolearn.experiments import run_jobs, stop_time


def _square(x: int) -> dict:
    return {"x": x, "y": x * x}


def test_run_jobs_runs_all_and_saves_after_each():
    saved = []
    out = run_jobs([1, 2, 3], _square, 2, lambda j: False, lambda res: saved.append(len(res)))
    assert sorted(r["y"] for r in out) == [1, 4, 9]
    assert saved == [1, 2, 3]


def test_run_jobs_stop_launches_only_finished_jobs():
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    out = run_jobs([1, 2, 3], _square, 1, lambda j: j == 2, lambda res: None, stop=past)
    assert [r["x"] for r in out] == [2]  # a done job is still "run" (it returns its stored result)
    assert stop_time(None) is None and stop_time("10:30").minute == 30
