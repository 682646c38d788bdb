"""A task's run folder through the CLIs: owned by one run at a time, its files never left truncated, a history cut
short by a kill made whole by -resume."""
import json
import subprocess
import sys
import time

import pytest

from onmt_structdrop.tasks import lm, ner, training
from onmt_structdrop.textfile import atomic_file, write_text

from task_data import write_conll, write_ptb

LM_TINY = ["-hidden_size", "16", "-num_layers", "1", "-batch_size", "4", "-bptt", "5", "-epochs", "1",
           "-eval_batch_size", "4", "-threads", "1"]
NER_TINY = ["-word_dim", "8", "-char_dim", "4", "-char_filters", "5", "-hidden_size", "12", "-batch_size", "8",
            "-threads", "1", "-lr", "0.02"]


def lm_args(tmp_path, *extra):
    return ["-config", "recipes/ptb_small.yaml", "-data", str(write_ptb(tmp_path / "ptb")), "-save_dir",
            str(tmp_path / "run"), *LM_TINY, *extra]


def test_a_second_run_in_a_folder_in_use_stops_at_once(tmp_path, capsys):
    """Two runs started in one save_dir used to overwrite each other's checkpoints and history (exit 0)."""
    (tmp_path / "run").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from onmt_structdrop.tasks.training import folder_lock\n"
        "with folder_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)"), str(tmp_path / "run")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(SystemExit) as exit_info:
            lm.main(lm_args(tmp_path))
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1
        assert f"{tmp_path / 'run'} is in use by another run (pid {holder.pid} on " in err
        assert not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "train.log").exists()
    finally:
        holder.kill()
        holder.wait()
    lm.main(lm_args(tmp_path))  # the lock died with its process
    assert (tmp_path / "run" / "last.pt").is_file()


def test_a_history_cut_short_by_a_kill_is_made_whole_by_resume(tmp_path):
    files = write_conll(tmp_path / "conll")
    args = ["-config", "recipes/conll2003.yaml", "-train", str(files["eng.train"]), "-dev", str(files["eng.testa"]),
            "-test", str(files["eng.testb"]), "-save_dir", str(tmp_path / "run"), *NER_TINY, "-epochs", "2"]
    history = ner.main(args)
    path = tmp_path / "run" / training.HISTORY
    whole = path.read_text()
    path.write_text(whole[: len(whole) // 2])  # as a kill during the last epoch's write left it
    ner.main(args + ["-resume", "true"])  # nothing left to train: the history is written from the checkpoint
    assert json.loads(path.read_text())["epochs"] == history


def test_an_atomic_file_is_whole_or_absent(tmp_path):
    target = tmp_path / "out.json"
    write_text(target, "old\n")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_file(target, "w") as fh:
            fh.write("half of the new")
            raise RuntimeError("killed")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_kill_while_writing_leaves_the_previous_file(tmp_path):
    """A process killed in the middle of a large write: the file it replaces is untouched."""
    target = tmp_path / "history.json"
    write_text(target, "the previous history\n")
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from onmt_structdrop.textfile import atomic_file\n"
        "with atomic_file(sys.argv[1], 'w') as fh:\n"
        "    fh.write('x' * 100000); fh.flush(); print('writing', flush=True); time.sleep(60)"), str(target)],
        stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline() == "writing\n"
    writer.kill()
    writer.wait()
    time.sleep(0.1)
    assert target.read_text() == "the previous history\n"
