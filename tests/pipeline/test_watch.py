"""The driver's one console line per fault that Ray gets over by itself (asc_ray.pipeline.watch), from the files
a run writes (fast: no Ray). Node losses and aggregator restarts need a cluster: the chaos test checks them."""

from __future__ import annotations

import re

from asc_ray.pipeline.watch import Watcher


def _lines(capsys) -> list[str]:
    return [re.sub(r"^\[asc-ray [\d:]+\] ", "", ln) for ln in capsys.readouterr().out.splitlines()]


def test_a_teachers_restarted_worker_is_one_line_with_where_it_resumed(tmp_path, capsys):
    unit = tmp_path / "bcbl32_fms"
    unit.mkdir()
    log = unit / "unit.log"
    log.write_text("10:00:00 [bcbl32_fms split25] rank 0 on node aaaa1111 (pid 1)\n")  # an earlier run's
    w = Watcher(None, None, max_failures=2)
    w.follow("bcbl32_fms split25", unit)
    with open(log, "a") as f:
        f.write("10:01:00 [bcbl32_fms split25] rank 0 on node bbbb2222 (pid 2)\n")  # this run's start
        f.write("10:01:01 [bcbl32_fms split25] resumed from epoch 3\n")  # (of the earlier run: not news)
        f.write("10:01:05 [bcbl32_fms split25] epoch 4/12 loss 1.0 (1s, 50 samples/s) checkpoint\n")
    w.check_teachers()
    assert _lines(capsys) == []
    with open(log, "a") as f:
        f.write("10:02:00 [bcbl32_fms split25] rank 0 on node cccc3333 (pid 3)\n")  # Ray Train restarted it
        f.write("10:02:01 [bcbl32_fms split25] resumed from epo")  # half a line: the rest comes later
    w.check_teachers()
    assert _lines(capsys) == []
    with open(log, "a") as f:
        f.write("ch 4\n")
    w.check_teachers()
    assert _lines(capsys) == [
        "bcbl32_fms split25: its Ray Train worker died; Ray Train restarted it on node cccc3333, resumed from "
        "epoch 4 (failure 1, teachers.max_failures=2)"
    ]
    with open(log, "a") as f:  # once more, before any checkpoint of the new worker: from the start
        f.write("10:03:00 [bcbl32_fms split25] rank 0 on node dddd4444 (pid 4)\n")
        f.write("10:03:09 [bcbl32_fms split25] epoch 1/12 loss 2.0 (1s, 50 samples/s) checkpoint\n")
    w.check_teachers()
    assert _lines(capsys) == [
        "bcbl32_fms split25: its Ray Train worker died; Ray Train restarted it on node dddd4444, started again "
        "from epoch 0 (failure 2, teachers.max_failures=2)"
    ]
    w.unfollow("bcbl32_fms split25")
    w.check_teachers()
    assert _lines(capsys) == []


def test_an_mlflow_outage_is_one_line_when_calls_start_to_be_spooled(tmp_path, capsys):
    spool = tmp_path / "mlflow_spool"
    spool.mkdir()
    (spool / "spool-host-1.jsonl").write_text("{}\n")  # left by an earlier run: replayed at the end
    w = Watcher(None, spool, max_failures=2)
    w.check_spool()
    assert _lines(capsys) == []
    (spool / "spool-host-1.jsonl").unlink()
    w.check_spool()
    (spool / "spool-host-2.jsonl").write_text("{}\n")
    (spool / "spool-host-3.jsonl").write_text("{}\n")
    w.check_spool()
    w.check_spool()
    out = _lines(capsys)
    assert len(out) == 1 and out[0].startswith("MLflow unreachable: 2 process(es) keep their calls in"), out


def test_an_mlflow_outage_is_news_even_while_a_killed_drivers_spool_is_still_there(tmp_path, capsys):
    spool = tmp_path / "mlflow_spool"
    spool.mkdir()
    (spool / "spool-host-1.jsonl").write_text("{}\n")  # a killed driver's: stays until this run's end
    w = Watcher(None, spool, max_failures=2)
    w.check_spool()
    assert _lines(capsys) == []
    (spool / "spool-host-2.jsonl").write_text("{}\n")  # a worker of this run starts spooling
    w.check_spool()
    out = _lines(capsys)
    assert len(out) == 1 and out[0].startswith("MLflow unreachable: 1 process(es) keep their calls in"), out
