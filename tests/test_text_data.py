"""needle.data text: Dictionary, Corpus (word and char level, shipped Shakespeare),
batchify and get_batch."""
import numpy as np
import pytest

from needle import backend_ndarray as nd
from needle import data as ndata
from needle.autograd import Tensor


def write_corpus(tmp_path, valid=True):
    (tmp_path / "train.txt").write_text(" the cat sat \n the dog\n a b c\n")
    (tmp_path / "test.txt").write_text("the bird\nsat\n")
    if valid:
        (tmp_path / "valid.txt").write_text("dog cat\n")
    return str(tmp_path)


def test_dictionary():
    d = ndata.Dictionary()
    assert [d.add_word(w) for w in ["a", "b", "a", "c"]] == [0, 1, 0, 2]
    assert len(d) == 3 and d.idx2word == ["a", "b", "c"] and d.word2idx["c"] == 2


def test_word_corpus(tmp_path):
    c = ndata.Corpus(write_corpus(tmp_path))
    words = c.dictionary.idx2word
    assert [words[i] for i in c.train] == ["the", "cat", "sat", "<eos>", "the", "dog", "<eos>",
                                           "a", "b", "c", "<eos>"]
    assert [words[i] for i in c.valid] == ["dog", "cat", "<eos>"]
    assert [words[i] for i in c.test] == ["the", "bird", "<eos>", "sat", "<eos>"]
    assert len(c.dictionary) == 9
    short = ndata.Corpus(str(tmp_path), max_lines=1)
    assert len(short.train) == 4 and len(short.test) == 3


def test_char_corpus_and_missing_files(tmp_path):
    c = ndata.Corpus(write_corpus(tmp_path, valid=False), level="char")
    text = "".join(c.dictionary.idx2word[i] for i in c.train)
    assert text == " the cat sat \n the dog\n a b c\n"
    assert c.valid is None
    with pytest.raises(FileNotFoundError, match="test.txt"):
        (tmp_path / "test.txt").unlink()
        ndata.Corpus(str(tmp_path))
    with pytest.raises(ValueError, match="level"):
        ndata.Corpus(str(tmp_path), level="byte")


def test_shakespeare_corpus():
    c = ndata.Corpus.shakespeare(level="char")
    with open(ndata.shipped_path("tinyshakespeare.txt"), encoding="utf-8") as f:
        lines = f.readlines()
    n_train = int(len(lines) * 0.9)
    words = c.dictionary.idx2word
    assert "".join(words[i] for i in c.train[:200]) == "".join(lines)[:200]
    assert len(c.train) == sum(len(line.rstrip("\n")) + 1 for line in lines[:n_train])
    assert len(c.valid) == sum(len(line.rstrip("\n")) + 1 for line in lines[n_train:])
    assert c.test is None and 50 < len(c.dictionary) < 100
    w = ndata.Corpus.shakespeare(level="word", max_lines=100)
    assert w.dictionary.idx2word[:3] == ["First", "Citizen:", "<eos>"]


def test_batchify_columns_are_contiguous_runs():
    data = list(range(23))
    b = ndata.batchify(data, batch_size=4, device=None, dtype="float32")
    assert b.shape == (5, 4) and b.dtype == np.float32
    for j in range(4):
        np.testing.assert_array_equal(b[:, j], np.arange(5 * j, 5 * j + 5))


def test_get_batch_shapes_and_shift():
    b = ndata.batchify(list(range(40)), batch_size=4, device=None, dtype="float32")  # (10, 4)
    data, target = ndata.get_batch(b, 2, bptt=3)
    assert isinstance(data, Tensor) and isinstance(data.cached_data, nd.NDArray)
    assert data.shape == (3, 4) and target.shape == (12,)
    assert data.dtype == "float32" and target.dtype == "float32"
    np.testing.assert_array_equal(data.numpy(), b[2:5])
    np.testing.assert_array_equal(target.numpy(), b[3:6].reshape(-1))
    data, target = ndata.get_batch(b, 7, bptt=5)  # the tail is shorter: 10 - 1 - 7 = 2 rows
    assert data.shape == (2, 4) and target.shape == (8,)
    with pytest.raises(ValueError, match="get_batch"):
        ndata.get_batch(b, 9, bptt=3)
