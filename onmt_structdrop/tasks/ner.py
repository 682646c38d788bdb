"""CoNLL-2003 named entity recognition: a BiLSTM(-CRF) tagger, structured or ordinary dropout.

    onmt-structdrop-ner -config recipes/conll2003.yaml
    onmt-structdrop-ner -config recipes/conll2003_baseline.yaml -epochs 5

Words (lowercased, digits as 0) and optionally a character CNN of each word (case kept) feed a bidirectional
LSTM, then a linear layer and a CRF (pytorch-crf) or a softmax. Dropout sits on the embeddings, between layers,
on h(t-1) if ``recurrent_dropout`` > 0, and before the linear layer; ``dropout_impl`` chooses structured masks
(shared by the batch, redrawn per step, dropped work skipped) or ``nn.Dropout`` + ``nn.LSTM``. Tags are read as
IOB1 (the original files) and trained as IOB2; scores are span-level precision, recall and F1 by seqeval in its
default, conlleval-compatible mode, on ``dev`` (eng.testa) and ``test`` (eng.testb) after every epoch.
``save_dir`` receives ``train.log``, ``history.json``, ``last.pt`` (resume with ``-resume true``), ``best.pt``
(the parameters of the best dev epoch) and ``curves.png``.
"""
from __future__ import annotations

import functools
import itertools
import random
import re
import time
from collections import Counter
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from tqdm import tqdm

from .. import StructDropLSTM
from ..linear import StructuredDropoutLinear
from ..textfile import atomic_file
from . import training
from .config import DROPOUT_OPTIONS, RUN_OPTIONS, Option, boolean, compacts_output, parse_command, run_command
from .conll import iob1_to_iob2, read_conll
from ..textfile import numbered_lines

PAD, UNK = "<pad>", "<unk>"
OPTIONS = [
    Option("train", Path, Path("data/conll2003/eng.train"), "training file (CoNLL format)"),
    Option("dev", Path, Path("data/conll2003/eng.testa"), "development file, scored every epoch"),
    Option("test", Path, Path("data/conll2003/eng.testb"), "test file, scored every epoch"),
    Option("save_dir", Path, Path("runs/conll2003"), "run directory: log, history, checkpoints, plot"),
    Option("word_dim", int, 100, "word embedding size"),
    Option("pretrained_embeddings", Path, None, "GloVe-format text file (word v1 v2 ...) to start words from"),
    Option("min_word_count", int, 2, "rarer training words are <unk>"),
    Option("char_filters", int, 30, "character CNN filters (0: no character features)"),
    Option("char_dim", int, 30, "character embedding size"),
    Option("hidden_size", int, 200, "LSTM size per direction"),
    Option("num_layers", int, 1, "LSTM layers"),
    Option("crf", boolean, True, "CRF output layer (pytorch-crf); false: per-token softmax"),
    Option("batch_size", int, 32, "sentences per batch"),
    Option("epochs", int, 30, "training epochs"),
    Option("optimizer", str, "adam", "optimizer", ("adam", "sgd")),
    Option("lr", float, 0.001, "learning rate"),
    Option("lr_decay", float, 0.0, "lr / (1 + lr_decay * epochs done), as in Ma and Hovy (2016)"),
    Option("momentum", float, 0.9, "SGD momentum"),
] + DROPOUT_OPTIONS + RUN_OPTIONS
PROG = "onmt-structdrop-ner"
MODEL_KEYS = ("dropout_impl", "mask_mode", "word_dim", "char_filters", "char_dim", "hidden_size", "num_layers",
              "crf", "dropout", "recurrent_dropout")
DIGITS = re.compile(r"\d")


def normalise_word(word):
    return DIGITS.sub("0", word.lower())


class Index:
    """Strings to ids: ``<pad>`` is 0, ``<unk>`` 1 (unless ``specials`` is false, as for tags)."""

    def __init__(self, items, specials=True):
        self.items = ([PAD, UNK] if specials else []) + [i for i in items if i not in (PAD, UNK)]
        self.ids = {s: i for i, s in enumerate(self.items)}

    def __len__(self):
        return len(self.items)

    def __call__(self, item):
        return self.ids.get(item, 1)


def build_indexes(sentences, min_word_count):
    words = Counter(normalise_word(w) for s in sentences for w in s.words)
    chars = Counter(c for s in sentences for w in s.words for c in w)
    tags = sorted({t for s in sentences for t in s.tags})
    return (Index(sorted(w for w, n in words.items() if n >= min_word_count)), Index(sorted(chars)),
            Index(tags, specials=False))


class CharCNN(nn.Module):
    """Each word's characters -> embedding -> convolution of width 3 -> max over the word (Ma and Hovy 2016)."""

    def __init__(self, n_chars, dim, filters):
        super().__init__()
        self.embed = nn.Embedding(n_chars, dim, padding_idx=0)
        self.conv = nn.Conv1d(dim, filters, kernel_size=3, padding=1)

    def forward(self, chars):  # [T, B, L] -> [T, B, filters]
        T, B, L = chars.shape
        x = self.conv(self.embed(chars.view(T * B, L)).transpose(1, 2))  # [T*B, filters, L]
        x = x.masked_fill((chars.view(T * B, 1, L) == 0), float("-inf")).amax(dim=2)
        return torch.nan_to_num(x, neginf=0.0).view(T, B, -1)  # all-padding positions: 0


class Tagger(nn.Module):
    """Embeddings -> dropout -> BiLSTM -> dropout -> linear -> CRF or softmax. Both implementations name their
    parameters alike, so a state dict moves between them."""

    def __init__(self, n_words, n_chars, n_tags, word_dim=100, char_dim=30, char_filters=30, hidden=200,
                 layers=1, dropout=0.5, recurrent_dropout=0.0, impl="structured", mask_mode="time", crf=True,
                 compact_output=True):
        super().__init__()
        self.words = nn.Embedding(n_words, word_dim, padding_idx=0)
        self.chars = CharCNN(n_chars, char_dim, char_filters) if char_filters else None
        n_in = word_dim + char_filters
        self.structured = impl == "structured"
        if self.structured:
            self.rnn = StructDropLSTM(n_in, hidden, layers, bidirectional=True, dropout=dropout,
                                      input_dropout=dropout, recurrent_dropout=recurrent_dropout, mask_mode=mask_mode)
            self.out = StructuredDropoutLinear(2 * hidden, n_tags, dropout=dropout, mask_mode=mask_mode,
                                               compact=compact_output)
        else:
            self.drop = nn.Dropout(dropout)
            between = dropout if layers > 1 else 0.0  # nn.LSTM warns about dropout it would not apply
            self.rnn = (nn.LSTM(n_in, hidden, layers, bidirectional=True, dropout=between) if recurrent_dropout == 0
                        else StructDropLSTM(n_in, hidden, layers, bidirectional=True, dropout=dropout,
                                            recurrent_dropout=recurrent_dropout, mask_mode="bernoulli", compact=False))
            self.out = nn.Linear(2 * hidden, n_tags)
        if crf:
            from torchcrf import CRF
            self.crf = CRF(n_tags)
        else:
            self.crf = None

    def emissions(self, words, chars, lengths):
        """``words`` ``[T, B]``, ``chars`` ``[T, B, L]``, ``lengths`` ``[B]`` -> tag scores ``[T, B, tags]``."""
        x = self.words(words)
        if self.chars is not None:
            x = torch.cat([x, self.chars(chars)], dim=2)
        if not self.structured:
            x = self.drop(x)
        packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
        y, _ = pad_packed_sequence(self.rnn(packed)[0], total_length=words.shape[0])
        return self.out(y if self.structured else self.drop(y))

    def loss(self, batch):
        """Negative log-likelihood summed over the batch's tokens (softmax) or sentences (CRF), per sentence."""
        scores = self.emissions(batch["words"], batch["chars"], batch["lengths"])
        mask, tags = batch["mask"], batch["tags"]
        if self.crf is not None:
            return -self.crf(scores, tags, mask, reduction="sum") / tags.shape[1]
        return nn.functional.cross_entropy(scores[mask], tags[mask], reduction="sum") / tags.shape[1]

    def predict(self, batch):
        scores = self.emissions(batch["words"], batch["chars"], batch["lengths"])
        if self.crf is not None:
            return self.crf.decode(scores, batch["mask"])
        best = scores.argmax(dim=2).t().tolist()
        return [row[:n] for row, n in zip(best, batch["lengths"].tolist())]


def encode(sentence, words, chars, tags):
    """A sentence's word ids, tag ids (IOB2) and character ids (``[length, longest word]``) as tensors."""
    w_ids = torch.tensor([words(normalise_word(w)) for w in sentence.words])
    # a dev/test tag the training data lacks is scored as a string, never trained on: any id will do
    t_ids = torch.tensor([tags.ids.get(t, 0) for t in sentence.tags])
    c_ids = torch.zeros(len(sentence.words), max(len(w) for w in sentence.words), dtype=torch.long)
    for t, w in enumerate(sentence.words):
        c_ids[t, : len(w)] = torch.tensor([chars(c) for c in w])
    return w_ids, t_ids, c_ids


def make_batch(sentences, words, chars, tags, device, cache=None):
    """Padded time-major tensors of a list of sentences (tags in IOB2). With a ``cache`` dict, each sentence is
    encoded once per run rather than once per epoch (the cache keeps the sentence, so its id stays its own)."""
    encoded = []
    for s in sentences:
        hit = cache.get(id(s)) if cache is not None else None
        if hit is None:
            hit = (s, encode(s, words, chars, tags))
            if cache is not None:
                cache[id(s)] = hit
        encoded.append(hit[1])
    T, B = max(len(s.words) for s in sentences), len(sentences)
    L = max(c.shape[1] for _, _, c in encoded)
    w_ids = torch.zeros(T, B, dtype=torch.long)
    c_ids = torch.zeros(T, B, L, dtype=torch.long)
    t_ids = torch.zeros(T, B, dtype=torch.long)
    for b, (w, t, c) in enumerate(encoded):
        w_ids[: len(w), b], t_ids[: len(t), b], c_ids[: len(w), b, : c.shape[1]] = w, t, c
    lengths = torch.tensor([len(s.words) for s in sentences])
    mask = torch.arange(T).unsqueeze(1) < lengths.unsqueeze(0)
    return {"words": w_ids.to(device), "chars": c_ids.to(device), "tags": t_ids.to(device),
            "mask": mask.to(device), "lengths": lengths}


def batches(sentences, size, rng=None):
    """Batches of similar lengths (less padding, fewer steps); shuffled when ``rng`` is given."""
    order = list(range(len(sentences)))
    if rng is not None:
        rng.shuffle(order)
    chunk = size * 50
    groups = []
    for i in range(0, len(order), chunk):
        part = sorted(order[i:i + chunk], key=lambda j: len(sentences[j].words))
        groups.extend(part[k:k + size] for k in range(0, len(part), size))
    if rng is not None:
        rng.shuffle(groups)
    return [[sentences[j] for j in g] for g in groups]


def evaluate(model, sentences, indexes, args, cache=None):
    """Span-level scores (seqeval, conlleval rules) and the predicted tags."""
    from seqeval.metrics import f1_score, precision_score, recall_score
    words, chars, tags = indexes
    model.eval()
    gold, pred = [], []
    with torch.no_grad():
        for group in batches(sentences, 128):
            for s, best in zip(group, model.predict(make_batch(group, words, chars, tags, args.device, cache))):
                gold.append(s.tags)
                pred.append([tags.items[i] for i in best])
    model.train()
    return {name: 100 * float(score(gold, pred, zero_division=0))  # none predicted yet: 0, not a warning
            for name, score in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score))}


def load_pretrained(embedding, index, path, log):
    """Copy vectors of ``path`` (GloVe text: ``word v1 ... vd``) into the rows of the words they name."""
    if not path.is_file():
        raise FileNotFoundError(f"pretrained_embeddings not found: {path}")
    found = 0
    for number, line in numbered_lines(path):
        fields = line.rstrip().split(" ")
        if len(fields) != embedding.embedding_dim + 1:
            raise ValueError(f"{path}:{number}: expected a word and {embedding.embedding_dim} numbers "
                             f"(word_dim), got {len(fields) - 1}")
        i = index.ids.get(fields[0])
        if i is not None and i > 1:
            try:
                vector = torch.tensor([float(v) for v in fields[1:]])
            except ValueError as err:
                raise ValueError(f"{path}:{number}: the vector of {fields[0]!r} holds a value that is not a number "
                                 f"({err})") from None
            if not torch.isfinite(vector).all():
                raise ValueError(f"{path}:{number}: the vector of {fields[0]!r} holds nan or inf, which would make "
                                 f"training diverge; fix or drop the line")
            embedding.weight.data[i] = vector
            found += 1
    log.info("pretrained embeddings: %d of %d words found in %s", found, len(index) - 2, path)


def read_splits(args):
    splits = {}
    for name in ("train", "dev", "test"):
        sentences = read_conll(getattr(args, name))
        for s in sentences:
            s.tags = iob1_to_iob2(s.tags)
        splits[name] = sentences
    return splits


def learning_rate(args, epoch):
    return args.lr / (1 + args.lr_decay * (epoch - 1))


def train_epoch(model, opt, groups, indexes, args, epoch, log, cache=None):
    words_ix, chars_ix, tags_ix = indexes
    if args.max_steps_per_epoch:
        groups = groups[: args.max_steps_per_epoch]
    total, n_sent, n_words, seconds = 0.0, 0, 0, 0.0
    bar = tqdm(groups, desc=f"epoch {epoch}", unit="batch", mininterval=2, leave=False, disable=None)
    for group in bar:
        batch = make_batch(group, words_ix, chars_ix, tags_ix, args.device, cache)
        start = time.perf_counter()
        total += training.optimizer_step(model, opt, model.loss(batch), args.max_grad_norm) * len(group)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        n_sent += len(group)
        n_words += int(batch["lengths"].sum())
        bar.set_postfix(loss=f"{total / n_sent:.2f}", wps=f"{n_words / seconds:.0f}", refresh=False)
    log.info("epoch %d trained: loss %.3f per sentence, %.0f words/s", epoch, total / n_sent, n_words / seconds)
    return total / n_sent, n_words, seconds


def build(args, indexes, log):
    """The tagger (on ``args.device``) and its optimizer."""
    words_ix, chars_ix, tags_ix = indexes
    model = Tagger(len(words_ix), len(chars_ix), len(tags_ix), args.word_dim, args.char_dim, args.char_filters,
                   args.hidden_size, args.num_layers, args.dropout, args.recurrent_dropout, args.dropout_impl,
                   args.mask_mode, args.crf, compacts_output(args))
    if args.pretrained_embeddings:
        load_pretrained(model.words, words_ix, args.pretrained_embeddings, log)
    model.to(args.device)
    opt = (torch.optim.Adam(model.parameters(), lr=args.lr) if args.optimizer == "adam" else
           torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum))
    return model, opt


def training_steps(args):
    """The model ``run`` trains and the steps of its first epoch, for timing them: ``(model, steps)``, ``steps``
    yielding ``(words, step)`` for each batch of the first epoch in turn (and then again), ``step()`` training on
    it."""
    splits = read_splits(args)
    indexes = build_indexes(splits["train"], args.min_word_count)
    training.seed_everything(args.seed)
    model, opt = build(args, indexes, training.log)
    model.train()
    groups = batches(splits["train"], args.batch_size, random.Random(args.seed))
    cache = {}

    def step(batch):
        training.optimizer_step(model, opt, model.loss(batch), args.max_grad_norm)

    def steps():
        for n in itertools.count():
            batch = make_batch(groups[n % len(groups)], *indexes, args.device, cache)
            yield int(batch["lengths"].sum()), functools.partial(step, batch)

    return model, steps()


def run(args):
    """Train (or resume) as ``args`` says; returns the history, one dict per epoch."""
    with training.run_directory(args) as (log, config):
        splits = read_splits(args)
        indexes = build_indexes(splits["train"], args.min_word_count)
        words_ix, chars_ix, tags_ix = indexes
        for name in ("dev", "test"):
            unknown = sorted({t for s in splits[name] for t in s.tags} - set(tags_ix.ids))
            if unknown:  # scored, never predicted
                log.warning("%s: tags %s never occur in %s", getattr(args, name), ", ".join(unknown), args.train)
        training.seed_everything(args.seed)
        model, opt = build(args, indexes, log)
        rng = random.Random(args.seed)
        vocabularies = {"words": words_ix.items, "chars": chars_ix.items, "tags": tags_ix.items}
        history, start_epoch, state = training.resume_or_start(args, model, opt, MODEL_KEYS, vocabularies, log)
        if state is not None:
            rng.setstate(state["batch_rng"])
        log.info("%s dropout (%s), BiLSTM %d x %d%s, %d words, %d chars, tags %s; %d training sentences; "
                 "epochs %d..%d", args.dropout_impl, args.mask_mode if model.structured else "nn.Dropout + nn.LSTM",
                 args.num_layers, args.hidden_size, " + CRF" if args.crf else "", len(words_ix), len(chars_ix),
                 " ".join(tags_ix.items), len(splits["train"]), start_epoch, args.epochs)
        cache = {}  # each sentence's tensors, encoded once
        for epoch in range(start_epoch, args.epochs + 1):
            lr = learning_rate(args, epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            loss, n_words, seconds = train_epoch(model, opt, batches(splits["train"], args.batch_size, rng),
                                                 indexes, args, epoch, log, cache)
            dev, test = (evaluate(model, splits[s], indexes, args, cache) for s in ("dev", "test"))
            history.append({"epoch": epoch, "lr": lr, "train_loss": loss, "dev_f1": dev["f1"],
                            "dev_precision": dev["precision"], "dev_recall": dev["recall"], "test_f1": test["f1"],
                            "test_precision": test["precision"], "test_recall": test["recall"],
                            "words_per_s": n_words / seconds, "train_seconds": seconds})
            best = max(history, key=lambda e: e["dev_f1"])
            log.info("epoch %d lr %.4g dev F1 %.2f (P %.2f R %.2f) test F1 %.2f, %.0f words/s; best dev F1 %.2f "
                     "(epoch %d, test %.2f)", epoch, lr, dev["f1"], dev["precision"], dev["recall"], test["f1"],
                     n_words / seconds, best["dev_f1"], best["epoch"], best["test_f1"])
            if best["epoch"] == epoch:
                with atomic_file(args.save_dir / "best.pt", "wb") as fh:
                    torch.save(model.state_dict(), fh)
            training.save_checkpoint(args.save_dir, model=model.state_dict(), optimizer=opt.state_dict(),
                                     epoch=epoch, history=history, config=config, rng=training.rng_state(),
                                     batch_rng=rng.getstate(), **vocabularies)
            training.write_history(args.save_dir, history, config)
            training.plot_curves(args.save_dir / "curves.png", [(args.dropout_impl, history, {})],
                                 ("dev_f1", "test_f1"), "span F1 (%)")
    return history


def parse(argv=None):
    """The command line's options over the recipe's over the defaults, checked."""
    return parse_command(PROG, __doc__.splitlines()[0], OPTIONS, argv,
                         at_least_one=("word_dim", "min_word_count", "hidden_size", "num_layers", "batch_size",
                                       "epochs"),
                         positive=("lr",), non_negative=("char_filters", "char_dim", "lr_decay", "momentum"))


def main(argv=None):
    """The command line, returning what ``run`` returns."""
    return run_command(PROG, parse, run, argv)


def cli(argv=None):
    """The console command: its entry point passes the return value to ``sys.exit``, so it returns nothing."""
    main(argv)


if __name__ == "__main__":
    main()
