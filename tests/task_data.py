"""Tiny generated task data: a PTB-format corpus and CoNLL-2003-format files (IOB1, -DOCSTART- lines)."""
import random

WORDS = "the a stock market rose fell N <unk> said bank share price year company new investors".split()


def write_ptb(directory, lines=(150, 30, 30), seed=0):
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "valid", "test"), lines):
        text = "".join(" " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + " \n"
                       for _ in range(n))
        (directory / f"ptb.{split}.txt").write_text(text)
    return directory


ENTITIES = {"PER": ["John", "Mary Smith", "Blair"], "LOC": ["Germany", "New York", "Paris"],
            "ORG": ["EU", "Reuters", "Bank of Japan"], "MISC": ["German", "British", "World Cup"]}
FILLER = ["said", "on", "the", "in", "1996", "visited", "talks", "with", "."]


def conll_sentence(rng):
    """Token lines of one sentence in the original IOB1 tagging."""
    lines, previous = [], None
    for _ in range(rng.randint(3, 9)):
        if rng.random() < 0.35:
            kind = rng.choice(sorted(ENTITIES))
            words = rng.choice(ENTITIES[kind]).split()
            first = "B" if previous == kind else "I"  # IOB1: B- only between two entities of one type
            lines += [f"{w} NNP I-NP {first if i == 0 else 'I'}-{kind}" for i, w in enumerate(words)]
            previous = kind
        else:
            lines.append(f"{rng.choice(FILLER)} NN I-NP O")
            previous = None
    return lines


def write_conll(directory, sentences=(120, 30, 30), seed=0):
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, n in zip(("eng.train", "eng.testa", "eng.testb"), sentences):
        docstart = "-DOCSTART- -X- -X- O" if name == "eng.testb" else "-DOCSTART- -X- O O"
        out = []
        for i in range(n):
            if i % 10 == 0:
                out += [docstart, ""]
            out += conll_sentence(rng) + [""]
        (directory / name).write_text("\n".join(out) + "\n")
        paths[name] = directory / name
    return paths
