"""The driver-side Tune callbacks of pipeline/students.py, without Ray (their end-to-end test, a node lost
under a trial, is tests/cluster/test_multinode.py)."""

import pickle
from types import SimpleNamespace

from helpers.console import said

from asc_ray.pipeline.students import FROM_CHECKPOINT, FROM_START, RETRY, TrialRetried


class ActorDiedError(Exception):
    pass


def _trial(checkpoint, error_file):
    return SimpleNamespace(
        config={"trial": {"job": {"system": "bcbl24", "split": 5}}},
        checkpoint=checkpoint,
        num_failures=1,
        max_failures=2,
        pickled_error_file=error_file,  # Tune's pickle of the error, None when it wrote none
    )


def test_a_retried_trial_is_one_line_naming_the_error_and_where_it_restarts(capsys, tmp_path):
    (tmp_path / "error.pkl").write_bytes(pickle.dumps(ActorDiedError()))
    TrialRetried().on_trial_recover(0, [], _trial(object(), str(tmp_path / "error.pkl")))
    TrialRetried().on_trial_recover(0, [], _trial(None, None))
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2  # one line per retry, no traceback
    # the unit, the error's type, where it restarts, the setting that bounds the retries
    first, second = said(RETRY, out[0], logged=True), said(RETRY, out[1], logged=True)
    assert (first["unit"], first["cause"], first["start"], first["max"]) == (
        "bcbl24 split5",
        "ActorDiedError",
        FROM_CHECKPOINT,
        "2",
    ), out[0]
    assert (second["unit"], second["start"]) == ("bcbl24 split5", FROM_START) and second["cause"] == "error"
