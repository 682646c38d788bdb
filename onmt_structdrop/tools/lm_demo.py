"""Demo: train a small word-level LSTM language model with ordinary and with structured dropout, side by side.

    python -m onmt_structdrop.tools.lm_demo                  # embedded synthetic corpus, about four minutes on 2 CPU cores
    python -m onmt_structdrop.tools.lm_demo --data ../shared/data/ptb --steps 300

Every variant starts from the same weights and sees the same batches. Prints training tokens/s and validation
perplexity per variant; writes ``log.txt``, ``results.json`` and ``perplexity.png`` to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..masks import STRUCTURED_MODES, check_rate
from ..plotting import save_line_plot
from ..tasks.corpus import Vocabulary, batchify, read_words
from ..tasks.lm import LanguageModel, evaluate
from ..textfile import write_text

log = logging.getLogger("onmt_structdrop.tools.lm_demo")


def synthetic_corpus(n_tokens, vocab=400, seed=0):
    """Text from a fixed random Markov chain: each word has a few likely successors, so there is something to learn."""
    g = torch.Generator().manual_seed(seed)
    successors = torch.randint(vocab, (vocab, 4), generator=g)
    probs = torch.tensor([0.7, 0.2, 0.06, 0.04])
    words = torch.empty(n_tokens, dtype=torch.long)
    w = 0
    choice = torch.multinomial(probs, n_tokens, replacement=True, generator=g)
    noise = torch.rand(n_tokens, generator=g) < 0.05
    random_words = torch.randint(vocab, (n_tokens,), generator=g)
    for i in range(n_tokens):
        w = int(random_words[i]) if noise[i] else int(successors[w, choice[i]])
        words[i] = w
    return words, vocab


def train(model, train_data, valid_data, args, name):
    opt = (torch.optim.Adam(model.parameters(), lr=args.lr) if args.optimizer == "adam" else
           torch.optim.SGD(model.parameters(), lr=args.lr))
    curve, state, seconds, tokens, i = [], None, 0.0, 0, 0
    for step in tqdm(range(1, args.steps + 1), desc=name, leave=False, disable=None):
        if i + args.bptt + 1 > train_data.shape[0]:
            i, state = 0, None
        x, y = train_data[i:i + args.bptt], train_data[i + 1:i + 1 + args.bptt]
        i += args.bptt
        start = time.perf_counter()
        state = None if state is None else tuple(s.detach() for s in state)
        logits, state = model(x, state)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        seconds += time.perf_counter() - start
        tokens += y.numel()
        if step % args.eval_every == 0 or step == args.steps:
            curve.append((step, evaluate(model, valid_data, args.bptt)))
            log.info("%s step %d loss %.3f valid ppl %.2f", name, step, loss.item(), curve[-1][1])
    return {"variant": name, "tokens_per_s": tokens / seconds, "valid_ppl": curve[-1][1], "curve": curve}


def plot(results, path):
    try:
        save_line_plot(path, [(f"{r['variant']} ({r['tokens_per_s']:.0f} tok/s)", *zip(*r["curve"]), {})
                              for r in results], "training step", "validation perplexity", log_y=True)
    except ImportError:
        log.warning("matplotlib is not installed: no plot")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="directory with ptb.train.txt and ptb.valid.txt")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--eval-every", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=650)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--bptt", type=int, default=35)
    parser.add_argument("--dropout", type=float, default=0.5)
    parser.add_argument("--recurrent-dropout", type=float, default=0.5)
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--modes", nargs="+", default=["batch", "pool", "time"], choices=STRUCTURED_MODES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    args = parser.parse_args(argv)
    for name in ("steps", "eval_every", "hidden", "layers", "batch", "bptt"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    check_rate(args.dropout, "--dropout")
    check_rate(args.recurrent_dropout, "--recurrent-dropout")
    if not args.lr > 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    args.out.mkdir(parents=True, exist_ok=True)
    handlers = [logging.FileHandler(args.out / "log.txt", mode="w"), logging.StreamHandler()]
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        return _run(args)
    finally:
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()


def _run(args):
    if args.data:
        words = [read_words(args.data / f"ptb.{s}.txt") for s in ("train", "valid")]
        vocab = Vocabulary(words[0] + words[1])
        train_ids, valid_ids = (vocab.encode(w, args.data) for w in words)
        n_vocab = len(vocab)
    else:
        ids, n_vocab = synthetic_corpus(110_000, seed=args.seed)
        train_ids, valid_ids = ids[:100_000], ids[100_000:]
    train_data, valid_data = batchify(train_ids, args.batch), batchify(valid_ids, 10)
    def source(split):
        return args.data / f"ptb.{split}.txt" if args.data else "the synthetic corpus"

    if train_data.shape[0] < args.bptt + 1:
        raise ValueError(f"{source('train')} has {train_ids.numel()} tokens: too few for batch {args.batch} x "
                         f"bptt {args.bptt} (needs {args.batch * (args.bptt + 1)})")
    if valid_data.shape[0] < 2:
        raise ValueError(f"{source('valid')} has {valid_ids.numel()} tokens: needs at least 20")
    log.info("corpus: %s, vocabulary %d, %d training tokens", args.data or "synthetic", n_vocab, train_ids.numel())

    variants = [("nn.LSTM + dropout", None)] + [(f"structured {m}", m) for m in args.modes]
    torch.manual_seed(args.seed)
    base = LanguageModel(n_vocab, args.hidden, args.layers, args.dropout, impl="standard")
    results = []
    for name, mode in variants:
        torch.manual_seed(args.seed)
        model = (LanguageModel(n_vocab, args.hidden, args.layers, args.dropout, args.recurrent_dropout,
                               mask_mode=mode) if mode else
                 LanguageModel(n_vocab, args.hidden, args.layers, args.dropout, impl="standard"))
        model.load_state_dict(base.state_dict())  # identical parameter names: the same start
        results.append(train(model, train_data, valid_data, args, name))

    base_speed = results[0]["tokens_per_s"]
    print(f"\n{'variant':<22} {'train tok/s':>11} {'speed-up':>8} {'valid ppl':>9}")
    for r in results:
        r["speedup"] = r["tokens_per_s"] / base_speed
        print(f"{r['variant']:<22} {r['tokens_per_s']:>11.0f} {r['speedup']:>7.2f}x {r['valid_ppl']:>9.2f}")
    write_text(args.out / "results.json", json.dumps({"config": {k: str(v) for k, v in vars(args).items()},
                                                     "results": results}, indent=2))
    plot(results, args.out / "perplexity.png")
    print(f"log, results.json and perplexity.png in {args.out}")
    return results


if __name__ == "__main__":
    main()
