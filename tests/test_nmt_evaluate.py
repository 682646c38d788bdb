"""nmt_evaluate's choice of checkpoint and its reading of training logs, resumed runs included."""
import pytest

from onmt_structdrop.tools import nmt_evaluate, time_to_quality

LOG = """[2026-12-08 00:00:00,000 INFO] Step 500/ 6000; acc: 30.0; ppl: 50.0; xent: 3.9; lr: 0.001; sents: 3200; bsz: 900/1000/64; 2000/2200 tok/s; 100 sec;
[2026-12-08 00:00:00,000 INFO] Validation perplexity: 20.0
[2026-12-08 00:00:00,000 INFO] Step 1000/ 6000; acc: 40.0; ppl: 20.0; xent: 3.0; lr: 0.001; sents: 3200; bsz: 900/1000/64; 2000/2200 tok/s; 200 sec;
[2026-12-08 00:00:00,000 INFO] Validation perplexity: 12.0
[2026-12-08 00:00:00,000 INFO] Step 1500/ 6000; acc: 45.0; ppl: 15.0; xent: 2.7; lr: 0.001; sents: 3200; bsz: 900/1000/64; 2000/2200 tok/s; 300 sec;
[2026-12-08 00:00:00,000 INFO] Step 1000/ 6000; acc: 40.0; ppl: 20.0; xent: 3.0; lr: 0.001; sents: 3200; bsz: 900/1000/64; 2000/2200 tok/s; 200 sec;
[2026-12-08 00:00:00,000 INFO] Validation perplexity: 11.0
[2026-12-08 00:00:00,000 INFO] Step 1500/ 6000; acc: 45.0; ppl: 15.0; xent: 2.7; lr: 0.001; sents: 3200; bsz: 900/1000/64; 2000/2200 tok/s; 300 sec;
[2026-12-08 00:00:00,000 INFO] Validation perplexity: 9.0
[2026-12-08 00:00:00,000 INFO] Step 2000/ 6000; acc: 45.0; ppl: 15.0; xent: 2.7; lr: 0.001; sents: 3200; bsz: 900/1000/64; 2000/2200 tok/s; 300 sec;
[2026-12-08 00:00:00,000 INFO] Validation perplexity: 9.5
"""


@pytest.fixture
def run(tmp_path):
    (tmp_path / "train.log").write_text(LOG)
    for step in (500, 1000, 1500, 2000):
        (tmp_path / f"model_step_{step}.pt").write_bytes(b"")
    return tmp_path


def test_a_resumed_log_keeps_the_later_validation_of_a_step(run):
    # the run was killed after step 1500 and resumed from step 500: its steps 1000 and 1500 were run again
    assert nmt_evaluate.training_log(run / "train.log")["valid_ppl"] == [(500, 20.0), (1000, 11.0), (1500, 9.0),
                                                                         (2000, 9.5)]
    curve = time_to_quality.onmt_curve(run)
    assert curve.progress == [500, 1000, 1500, 2000] and curve.values == [20.0, 11.0, 9.0, 9.5]


def test_the_best_checkpoint_is_the_lowest_validation_perplexity_saved(run):
    valid = nmt_evaluate.training_log(run / "train.log")["valid_ppl"]
    assert nmt_evaluate.best_checkpoint(run / "model", valid).name == "model_step_1500.pt"
    assert nmt_evaluate.last_checkpoint(run / "model").name == "model_step_2000.pt"
    (run / "model_step_1500.pt").unlink()  # early stopping's best is gone: the best of what is saved
    assert nmt_evaluate.best_checkpoint(run / "model", valid).name == "model_step_2000.pt"
