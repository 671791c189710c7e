"""Text corpora for language models: Dictionary, Corpus, batchify, get_batch."""
import os

import numpy as np

from ..autograd import Tensor
from ..errors import DataFormatError, DataNotFoundError
from .paths import shipped_path

EOS = "<eos>"
_LEVELS = ("word", "char")


class Dictionary:
    """A two-way map between tokens and ids, in order of first appearance.

    >>> d = Dictionary(); d.add_word("a"), d.add_word("b"), d.add_word("a")
    (0, 1, 0)
    """

    def __init__(self):
        self.word2idx: dict[str, int] = {}
        self.idx2word: list[str] = []

    def add_word(self, word: str) -> int:
        """Id of `word`, adding it first if it is new."""
        idx = self.word2idx.get(word)
        if idx is None:
            idx = len(self.idx2word)
            self.word2idx[word] = idx
            self.idx2word.append(word)
        return idx

    def __len__(self) -> int:
        return len(self.idx2word)


def _tokens(line: str, level: str) -> list[str]:
    if level == "word":
        return line.split() + [EOS]
    return list(line.rstrip("\n")) + ["\n"]  # char level: the newline ends each line


def _read_lines(path: str, max_lines: int | None) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = []
            for line in f:
                if max_lines is not None and len(lines) >= max_lines:
                    break
                lines.append(line)
    except FileNotFoundError:
        raise DataNotFoundError(f"Corpus: text file {path!r} does not exist") from None
    except UnicodeDecodeError as e:
        raise DataFormatError(f"Corpus: text file {path!r} is not UTF-8 text ({e})") from None
    return lines


class Corpus:
    """A tokenized text corpus with a shared Dictionary.

    `Corpus(base_dir, max_lines=None, level="word")` reads `base_dir/train.txt` and
    `base_dir/test.txt` (and `valid.txt` when present), at most `max_lines` lines of each.
    Word level: whitespace-split words plus `<eos>` at the end of every line. Char level: every
    character, with "\\n" ending every line. Attributes: `dictionary`, and `train`, `valid`,
    `test` as lists of ids (`None` for a split that does not exist).

    `Corpus.shakespeare(level="char")` builds the shipped tiny-Shakespeare corpus, its lines
    split 90/10 into `train` and `valid` (`test` is None).
    """

    def __init__(self, base_dir: str | None = None, max_lines: int | None = None,
                 level: str = "word"):
        if level not in _LEVELS:
            raise ValueError(f"Corpus: level must be one of {_LEVELS}, got {level!r}")
        self.level = level
        self.dictionary = Dictionary()
        self.train = self.valid = self.test = None
        if base_dir is None:
            return
        if not os.path.isdir(base_dir):
            raise DataNotFoundError(f"Corpus: directory {base_dir!r} does not exist")
        self.train = self.tokenize(os.path.join(base_dir, "train.txt"), max_lines)
        valid_path = os.path.join(base_dir, "valid.txt")
        test_path = os.path.join(base_dir, "test.txt")
        if not os.path.isfile(valid_path) and not os.path.isfile(test_path):
            raise DataNotFoundError(f"Corpus: {base_dir!r} holds neither valid.txt nor "
                                    f"test.txt (one of them is needed besides train.txt)")
        if os.path.isfile(valid_path):
            self.valid = self.tokenize(valid_path, max_lines)
        if os.path.isfile(test_path):
            self.test = self.tokenize(test_path, max_lines)

    def tokenize(self, path: str, max_lines: int | None = None) -> list[int]:
        """Ids of the tokens of the first `max_lines` lines of `path`, growing the dictionary."""
        return self.tokenize_lines(_read_lines(path, max_lines))

    def tokenize_lines(self, lines) -> list[int]:
        """Ids of the tokens of `lines` (strings), growing the dictionary."""
        add = self.dictionary.add_word
        return [add(token) for line in lines for token in _tokens(line, self.level)]

    @classmethod
    def shakespeare(cls, level: str = "char", max_lines: int | None = None,
                    train_fraction: float = 0.9) -> "Corpus":
        """The shipped tiny-Shakespeare text: first 90% of lines train, the rest valid."""
        if not 0.0 < train_fraction < 1.0:
            raise ValueError(f"Corpus.shakespeare: train_fraction must be in (0, 1), "
                             f"got {train_fraction}")
        lines = _read_lines(shipped_path("tinyshakespeare.txt"), max_lines)
        n_train = int(len(lines) * train_fraction)
        corpus = cls(None, level=level)
        corpus.train = corpus.tokenize_lines(lines[:n_train])
        corpus.valid = corpus.tokenize_lines(lines[n_train:])
        return corpus


def batchify(data, batch_size: int, device=None, dtype="float32") -> np.ndarray:
    """Arrange a token id sequence into `batch_size` columns.

    Returns a NumPy array (nbatch, batch_size), nbatch = len(data) // batch_size, where column
    j is the j-th contiguous run of nbatch tokens; leftover tokens at the end are dropped.
    `device` is accepted for the course signature (the result stays NumPy until `get_batch`).
    """
    if batch_size < 1:
        raise ValueError(f"batchify: batch_size must be >= 1, got {batch_size}")
    data = np.asarray(data)
    nbatch = data.shape[0] // batch_size
    out = data[:nbatch * batch_size].reshape(batch_size, nbatch).T
    return np.ascontiguousarray(out, dtype=dtype if dtype is not None else data.dtype)


def get_batch(batches, i: int, bptt: int, device=None, dtype="float32"):
    """Slice a bptt window out of batchified data.

    batches: (nbatch, B) from `batchify`. Returns (data Tensor (L, B), target Tensor (L·B,))
    with L = min(bptt, nbatch - 1 - i) and target = rows i+1 .. i+L flattened, i.e. each
    token's successor. Both are `dtype` (default float32) on `device`.
    """
    batches = np.asarray(batches)
    seq_len = min(bptt, batches.shape[0] - 1 - i)
    if seq_len < 1:
        raise ValueError(f"get_batch: no target rows after row {i} of {batches.shape[0]}")
    dtype = dtype if dtype is not None else "float32"
    data = np.ascontiguousarray(batches[i:i + seq_len], dtype=dtype)
    target = np.ascontiguousarray(batches[i + 1:i + 1 + seq_len].reshape(-1), dtype=dtype)
    return (Tensor(data, device=device, requires_grad=False),
            Tensor(target, device=device, requires_grad=False))
