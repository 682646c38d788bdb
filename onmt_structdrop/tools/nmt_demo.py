"""End-to-end translation demo on the embedded Multi30k sample: prepare (a joint SentencePiece model, applied by
OpenNMT-py's ``sentencepiece`` transform), ``onmt_build_vocab``, ``onmt_train`` with
structured dropout (``sd_brnn`` + ``sd_ifrnn``) and with the stock LSTM (``brnn`` + input-feed ``rnn``), then
``onmt_translate`` and sacreBLEU, side by side. A few minutes on two CPU cores.

    python -m onmt_structdrop.tools.nmt_demo [--steps 300] [--out runs/nmt_demo]

The sample (2,000 training sentences) is far too small for a useful model: the point is the pipeline and the
speed ratio, not the BLEU score. ``recipes/multi30k_deen.yaml`` is the full-size run.

The speed ratio comes from short training runs of the two models that alternate (A B A B, ``--speed-rounds`` of
``--speed-steps`` steps, ``--threads`` threads each), so that a load that comes and goes on the machine hits
both alike; the two long runs that give the BLEU scores run one after the other and are not compared for speed.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..resources import data_path
from ..textfile import write_text
from . import nmt_evaluate as evaluate, nmt_prepare as prepare
from .onmt_runs import alternating_speed, onmt

SAMPLE = data_path("recipes/sample_multi30k_deen")
MODELS = {
    "structdrop": "encoder_type: sd_brnn\ndecoder_type: sd_ifrnn\nsd_recurrent_dropout: [{recurrent}]\n"
                  "sd_mask_mode: {mode}\nsd_seed: 1\n",
    "baseline": "encoder_type: brnn\ndecoder_type: rnn\ninput_feed: 1\n",
}


def write_config(work: Path, name: str, model: str, steps: int, hidden: int = 128, report_every: int = 25) -> Path:
    """A small training config in ``work`` (paths relative to it) for the data prepared in ``work/data``."""
    config = work / f"{name}.yaml"
    write_text(config, f"""save_data: runs/{name}/data
src_vocab: runs/vocab.src
tgt_vocab: runs/vocab.tgt
overwrite: true
data:
  corpus_1:
    path_src: data/train.src
    path_tgt: data/train.tgt
  valid:
    path_src: data/valid.src
    path_tgt: data/valid.tgt
transforms: [sentencepiece]
src_subword_model: data/spm.model
tgt_subword_model: data/spm.model
bucket_size: 4000
num_workers: 0
{model}layers: 2
hidden_size: {hidden}
word_vec_size: {hidden}
dropout: [0.3]
seed: 1
batch_type: sents
batch_size: 32
valid_batch_size: 32
optim: adam
learning_rate: 0.002
max_grad_norm: 5
train_steps: {steps}
valid_steps: {max(steps // 3, 1)}
save_checkpoint_steps: {steps}
report_every: {report_every}
save_model: runs/{name}/model
log_file: runs/{name}/train.log
""")
    return config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/nmt_demo"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--mode", default="time", help="sd_mask_mode of the structured model")
    parser.add_argument("--recurrent-dropout", type=float, default=0.0, help="sd_recurrent_dropout (on h(t-1))")
    parser.add_argument("--speed-rounds", type=int, default=2, help="alternating rounds timed for the speed ratio")
    parser.add_argument("--speed-steps", type=int, default=60, help="training steps of each model per round")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads of every run, trained, timed or translating (OMP_NUM_THREADS)")
    args = parser.parse_args(argv)
    for name in ("steps", "speed_rounds", "speed_steps", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    # every command below runs in a child process: one thread each unless asked, so that a loaded machine is not
    # oversubscribed (torch's default of a thread per core, spinning, slows both models several-fold there)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    work = args.out.resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"preparing the sample from {SAMPLE} in {work / 'data'}", flush=True)
    prepare.prepare("multi30k_deen", work / "data", source=SAMPLE, vocab_size=2000)
    configs = {}
    for name, template in MODELS.items():
        model = template.format(recurrent=args.recurrent_dropout, mode=args.mode)
        configs[name] = write_config(work, name, model, args.steps)
    onmt("build_vocab", "-config", configs["structdrop"], "-n_sample", "-1", cwd=work, quiet=True)
    results = []
    for name in ("structdrop", "baseline"):
        print(f"training {name} for {args.steps} steps", flush=True)
        onmt("train", "-config", configs[name], cwd=work)
    cwd = Path.cwd()
    os.chdir(work)
    try:
        results = [evaluate.evaluate(configs[name], beam=5) for name in ("structdrop", "baseline")]
    finally:
        os.chdir(cwd)
    speed = alternating_speed(work, configs, args.speed_rounds, args.speed_steps, args.threads)
    table = (f"{evaluate.comparison_table(results, speed=False)}\n\nTraining speed (target tokens/s): "
             f"{args.speed_rounds} alternating rounds of {args.speed_steps} steps per model, {args.threads} "
             f"thread(s) each; the ratio is the structured model's to the stock one's in the same round.\n\n"
             f"{speed}")
    print(table)
    write_text(work / "results.md", table + "\n")
    write_text(work / "results.json", json.dumps(results, indent=1))
    print(f"results in {work / 'results.md'} and results.json; logs in {work / 'runs'}")


if __name__ == "__main__":
    main()
