"""Word-level language modelling on PTB (Zaremba et al. 2014 setups), structured or ordinary dropout.

    onmt-structdrop-lm -config recipes/ptb_medium.yaml
    onmt-structdrop-lm -config recipes/ptb_small.yaml -epochs 3 -seed 2 -save_dir runs/ptb_small_s2

Dropout sits on the embedding output, between the LSTM layers, on h(t-1) if ``recurrent_dropout`` > 0, and
before the softmax projection. ``dropout_impl: structured`` draws masks shared by the batch and redrawn at every
step (``mask_mode``) and skips the dropped units' work, the 10k-way projection included; ``standard`` is the
user's alternative: ``nn.Dropout`` + ``nn.LSTM`` (cuDNN on GPU). Truncated BPTT carries the state across
batches. ``save_dir`` receives ``train.log``, ``history.json`` (per epoch: lr, train/valid perplexity, words/s),
``last.pt`` (resume with ``-resume true``) and ``curves.png``; the test perplexity is computed at the end.
"""
from __future__ import annotations

import functools
import itertools
import math
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from .. import StructDropLSTM
from ..linear import StructuredDropoutLinear
from . import training
from .config import DROPOUT_OPTIONS, RUN_OPTIONS, Option, compacts_output, parse_command, run_command
from .corpus import batchify, load_corpus

OPTIONS = [
    Option("data", Path, Path("data/ptb"), "directory with ptb.{train,valid,test}.txt"),
    Option("save_dir", Path, Path("runs/ptb"), "run directory: log, history, checkpoint, plot"),
    Option("hidden_size", int, 200, "LSTM and embedding size"),
    Option("num_layers", int, 2, "LSTM layers"),
    Option("batch_size", int, 20, "training sequences per batch"),
    Option("bptt", int, 20, "truncated back-propagation length"),
    Option("epochs", int, 13, "training epochs"),
    Option("lr", float, 1.0, "SGD learning rate"),
    Option("lr_decay", float, 0.5, "learning-rate factor per epoch after decay_after epochs"),
    Option("decay_after", int, 4, "epochs at the full learning rate"),
    Option("init_range", float, 0.1, "parameters start uniform in [-init_range, init_range]"),
    Option("eval_batch_size", int, 10, "sequences per batch in evaluation"),
] + DROPOUT_OPTIONS + RUN_OPTIONS
PROG = "onmt-structdrop-lm"
MODEL_KEYS = ("dropout_impl", "mask_mode", "hidden_size", "num_layers", "dropout", "recurrent_dropout")


class LanguageModel(nn.Module):
    """Embedding -> dropout -> LSTM (dropout between layers, optionally on h(t-1)) -> dropout -> projection.

    Both implementations name their parameters alike, so a state dict moves between them.
    """

    def __init__(self, vocab, hidden, layers, dropout, recurrent_dropout=0.0, impl="structured", mask_mode="time",
                 compact_output=True):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.structured = impl == "structured"
        if self.structured:
            self.rnn = StructDropLSTM(hidden, hidden, layers, dropout=dropout, input_dropout=dropout,
                                      recurrent_dropout=recurrent_dropout, mask_mode=mask_mode)
            self.out = StructuredDropoutLinear(hidden, vocab, dropout=dropout, mask_mode=mask_mode,
                                               compact=compact_output)
        else:
            self.drop = nn.Dropout(dropout)
            # nn.LSTM has no dropout on h(t-1): then ordinary (per-sequence Bernoulli) masks, applied densely
            between = dropout if layers > 1 else 0.0  # nn.LSTM warns about dropout it would not apply
            self.rnn = (nn.LSTM(hidden, hidden, layers, dropout=between) if recurrent_dropout == 0 else
                        StructDropLSTM(hidden, hidden, layers, dropout=dropout, recurrent_dropout=recurrent_dropout,
                                       mask_mode="bernoulli", compact=False))
            self.out = nn.Linear(hidden, vocab)

    def forward(self, x, state=None):
        """``x``: ``[T, B]`` token ids -> logits ``[T, B, vocab]`` and the final state."""
        e = self.embed(x)
        if self.structured:
            y, state = self.rnn(e, state)
            return self.out(y), state
        y, state = self.rnn(self.drop(e), state)
        return self.out(self.drop(y)), state


def evaluate(model, data, bptt):
    """Perplexity of ``data`` (``[n, B]``), the state carried across windows as in training."""
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    with torch.no_grad():
        for i in range(0, data.shape[0] - 1, bptt):
            x, y = data[i:i + bptt], data[i + 1:i + 1 + bptt]
            logits, state = model(x[: y.shape[0]], state)
            total += nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
            count += y.numel()
    model.train(was_training)
    return math.exp(total / count)


def learning_rate(args, epoch):
    """Zaremba et al.'s schedule: ``lr`` for ``decay_after`` epochs, then times ``lr_decay`` per epoch."""
    return args.lr * args.lr_decay ** max(epoch - args.decay_after, 0)


def train_step(model, opt, x, y, state, max_grad_norm):
    """One step on the window ``x -> y`` from ``state`` (detached: truncated BPTT); returns the loss and the
    final state."""
    state = None if state is None else tuple(s.detach() for s in state)
    logits, state = model(x, state)
    # summed over time, averaged over sequences, as in Zaremba et al. (what lr 1 and clip 5 are tuned for)
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum") / y.shape[1]
    return training.optimizer_step(model, opt, loss, max_grad_norm), state


def train_epoch(model, opt, data, args, epoch, log):
    """One pass over ``data`` (``[n, B]``); returns (train perplexity, words, training seconds)."""
    model.train()
    steps = (data.shape[0] - 1) // args.bptt
    if args.max_steps_per_epoch:
        steps = min(steps, args.max_steps_per_epoch)
    state, total_loss, words, seconds = None, 0.0, 0, 0.0
    bar = tqdm(range(steps), desc=f"epoch {epoch}", unit="batch", mininterval=2, leave=False, disable=None)
    for step in bar:
        start = time.perf_counter()
        i = step * args.bptt
        x, y = data[i:i + args.bptt], data[i + 1:i + 1 + args.bptt]
        loss, state = train_step(model, opt, x, y, state, args.max_grad_norm)
        total_loss += loss * y.shape[1]
        if data.is_cuda:
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        words += y.numel()
        bar.set_postfix(ppl=f"{math.exp(total_loss / words):.1f}", wps=f"{words / seconds:.0f}", refresh=False)
        if (step + 1) % max(steps // 10, 1) == 0:
            log.info("epoch %d %5.1f%% train ppl %.2f, %.0f words/s", epoch, 100 * (step + 1) / steps,
                     math.exp(total_loss / words), words / seconds)
    return math.exp(total_loss / words), words, seconds


def training_steps(args):
    """The model ``run`` trains and the steps of its first epoch, for timing them: ``(model, steps)``, ``steps``
    yielding ``(words, step)`` for each window of the training data in turn (and then again), ``step()`` training
    on it."""
    vocab, ids = load_corpus(args.data)
    data = train_data(args, ids)
    training.seed_everything(args.seed)
    model, opt = build(args, len(vocab))
    model.train()
    windows, state = (data.shape[0] - 1) // args.bptt, None

    def step(x, y, first):
        nonlocal state
        _, state = train_step(model, opt, x, y, None if first else state, args.max_grad_norm)

    def steps():
        for n in itertools.count():
            i = n % windows * args.bptt
            x, y = data[i:i + args.bptt], data[i + 1:i + 1 + args.bptt]
            yield y.numel(), functools.partial(step, x, y, i == 0)  # each pass starts from no state, as run's epochs

    return model, steps()


def shrinkable_shapes(args, model):
    """The products that the structured model's dropout shrinks, as ``{rate: [(m, n, o, repeats), ...]}`` (an
    ``m x n`` activation times an ``n x o`` weight) shaped as the ordinary model runs them: every layer's input
    product over the window (``nn.LSTM`` runs it once for all steps), the projection, and where h(t-1) is dropped
    the recurrent products, a step at a time. ``tasks.speed`` times them for its ideal row."""
    T, B, H = args.bptt, args.batch_size, args.hidden_size
    shapes = {args.dropout: [(T * B, H, 4 * H, args.num_layers), (T * B, H, model.embed.num_embeddings, 1)]}
    if args.recurrent_dropout:
        shapes.setdefault(args.recurrent_dropout, []).append((B, H, 4 * H, T * args.num_layers))
    return shapes


def train_data(args, ids):
    """The training split as ``[n, batch_size]``, checked to hold one window at least."""
    data = batchify(ids["train"], args.batch_size).to(args.device)
    if data.shape[0] < args.bptt + 1:
        raise ValueError(f"{args.data}/ptb.train.txt has {ids['train'].numel()} tokens: too few for batch_size "
                         f"{args.batch_size} x bptt {args.bptt}")
    return data


def build(args, n_vocab):
    """The language model (on ``args.device``, parameters uniform in +-init_range) and its optimizer."""
    model = LanguageModel(n_vocab, args.hidden_size, args.num_layers, args.dropout, args.recurrent_dropout,
                          args.dropout_impl, args.mask_mode, compacts_output(args))
    for p in model.parameters():
        nn.init.uniform_(p, -args.init_range, args.init_range)
    model.to(args.device)
    return model, torch.optim.SGD(model.parameters(), lr=args.lr)


def run(args):
    """Train (or resume) as ``args`` says; returns the history, one dict per epoch, and the test perplexity."""
    with training.run_directory(args) as (log, config):
        vocab, ids = load_corpus(args.data)
        training_data = train_data(args, ids)
        valid_data, test_data = (batchify(ids[s], args.eval_batch_size).to(args.device) for s in ("valid", "test"))
        for split, data in (("valid", valid_data), ("test", test_data)):
            if data.shape[0] < 2:
                raise ValueError(f"{args.data}/ptb.{split}.txt has {ids[split].numel()} tokens: too few for "
                                 f"eval_batch_size {args.eval_batch_size}")
        training.seed_everything(args.seed)
        model, opt = build(args, len(vocab))
        history, start_epoch, _ = training.resume_or_start(args, model, opt, MODEL_KEYS, {"vocab": vocab.words},
                                                           log)
        log.info("%s dropout (%s), %d x %d, vocabulary %d, %d training words; epochs %d..%d",
                 args.dropout_impl, args.mask_mode if model.structured else "nn.Dropout + nn.LSTM",
                 args.num_layers, args.hidden_size, len(vocab), ids["train"].numel(), start_epoch, args.epochs)
        for epoch in range(start_epoch, args.epochs + 1):
            lr = learning_rate(args, epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            train_ppl, words, seconds = train_epoch(model, opt, training_data, args, epoch, log)
            valid_ppl = evaluate(model, valid_data, args.bptt)
            history.append({"epoch": epoch, "lr": lr, "train_ppl": train_ppl, "valid_ppl": valid_ppl,
                            "words_per_s": words / seconds, "train_seconds": seconds})
            log.info("epoch %d lr %.4g train ppl %.2f valid ppl %.2f, %.0f words/s", epoch, lr, train_ppl,
                     valid_ppl, words / seconds)
            training.save_checkpoint(args.save_dir, model=model.state_dict(), optimizer=opt.state_dict(),
                                     epoch=epoch, history=history, vocab=vocab.words, config=config,
                                     rng=training.rng_state())
            training.write_history(args.save_dir, history, config)
            training.plot_curves(args.save_dir / "curves.png", [(args.dropout_impl, history, {})],
                                 ("train_ppl", "valid_ppl"), "perplexity", log_y=True)
        test_ppl = evaluate(model, test_data, args.bptt)
        if history:
            history[-1]["test_ppl"] = test_ppl
            training.write_history(args.save_dir, history, config)
        log.info("test ppl %.2f (after epoch %d)", test_ppl, args.epochs)
    return history, test_ppl


def parse(argv=None):
    """The command line's options over the recipe's over the defaults, checked."""
    return parse_command(PROG, __doc__.splitlines()[0], OPTIONS, argv,
                         at_least_one=("hidden_size", "num_layers", "batch_size", "bptt", "epochs", "eval_batch_size"),
                         positive=("lr", "lr_decay", "init_range"))


def main(argv=None):
    """The command line, returning what ``run`` returns."""
    return run_command(PROG, parse, run, argv)


def cli(argv=None):
    """The console command: its entry point passes the return value to ``sys.exit``, so it returns nothing."""
    main(argv)


if __name__ == "__main__":
    main()
