"""The `needle` command: a real run on tiny data, eval, and one-line errors with exit code 2."""
import json
import os
import subprocess
import sys

import pytest

from needle import train
from needle.train import cli
from needle.data import MNISTDataset, NDArrayDataset, shipped_mnist_test

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@train.register_dataset("tiny-mnist-cli")
def _tiny(args):
    ds = MNISTDataset(*shipped_mnist_test())
    X, y = ds.images.reshape(len(ds), -1), ds.labels
    return train.DatasetInfo("tiny-mnist-cli", NDArrayDataset(X[:256], y[:256]),
                             NDArrayDataset(X[256:384], y[256:384]), input_shape=(784,),
                             num_classes=10)


def _needle(*argv):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
    return subprocess.run([sys.executable, "-m", "needle", *argv], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)


def test_train_then_eval(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["train", "--dataset", "tiny-mnist-cli", "--epochs", "2", "--batch-size",
                     "64", "--hidden-dim", "16", "--out", str(out), "--no-progress"])
    assert code == 0
    assert sorted(os.listdir(out)) == ["best.safetensors", "curves.png", "last.safetensors",
                                       "metrics.csv", "metrics.jsonl"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "done: best epoch 2 of 2: validation accuracy" in capsys.readouterr().out
    assert cli.main(["eval", str(out / "last.safetensors")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["epoch"] == 2
    assert result["eval_accuracy"] == pytest.approx(records[-1]["eval_accuracy"])
    assert result["eval_loss"] == pytest.approx(records[-1]["eval_loss"], rel=1e-6)


def _one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_flags():
    _one_line_error(_needle("train", "--epochs", "many"), "--epochs", "invalid int")
    _one_line_error(_needle("train", "--optimizer", "lbfgs"), "--optimizer")
    _one_line_error(_needle("train", "--epochs", "0"), "--epochs", "must be >= 1, got 0")
    _one_line_error(_needle("fly"), "invalid choice")
    _one_line_error(_needle("train", "--dataset", "imagenet"), "--dataset", "'imagenet'",
                    "neither a dataset name", "mnist-small")


def test_cosine_schedule_and_resume(tmp_path, capsys):
    """--schedule cosine anneals the per-epoch lr to 0 over --epochs (each record holds the lr
    its epoch trained at), and a resumed run continues the schedule where it stopped."""
    import math

    common = ["train", "--dataset", "tiny-mnist-cli", "--batch-size", "64", "--hidden-dim",
              "16", "--lr", "0.01", "--schedule", "cosine", "--no-progress"]
    out = tmp_path / "full"
    assert cli.main(common + ["--epochs", "4", "--out", str(out)]) == 0
    full = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    expect = [0.01 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(4)]
    assert [r["lr"] for r in full] == pytest.approx(expect, rel=1e-12)
    part = tmp_path / "part"
    assert cli.main(common + ["--epochs", "2", "--out", str(part)]) == 0
    # the schedule's length is --epochs, so resume a 2-epoch run's checkpoint as a 4-epoch one
    resumed = tmp_path / "resumed"
    assert cli.main(common + ["--epochs", "4", "--out", str(resumed), "--resume",
                              str(part / "last.safetensors")]) == 0
    again = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in again[2:]] == pytest.approx(expect[2:], rel=1e-12)
    capsys.readouterr()


@pytest.mark.skipif(os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="the Debian Fashion-MNIST package is installed here")
def test_missing_data_dir(tmp_path):
    _one_line_error(_needle("train", "--dataset", "fashion-mnist", "--data-dir",
                            str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")),
                    "Fashion-MNIST not found", "nowhere")


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 40)
    _one_line_error(_needle("eval", str(bad)), "bad.safetensors")
    _one_line_error(_needle("train", "--resume", str(tmp_path / "none.safetensors"), "--out",
                            str(tmp_path / "o")), "none.safetensors")


def test_augment_choices():
    from needle.data.data_transforms import RandomCrop, RandomFlipHorizontal

    assert train.mnist.augmentation("none") is None
    assert [type(t) for t in train.mnist.augmentation("flip")] == [RandomFlipHorizontal]
    kinds = [type(t) for t in train.mnist.augmentation("flip-shift")]
    assert kinds == [RandomFlipHorizontal, RandomCrop]
    with pytest.raises(ValueError, match="bogus"):
        train.mnist.augmentation("bogus")
    _one_line_error(_needle("train", "--augment", "spin"), "--augment", "invalid choice")


def test_user_errors_share_one_class(tmp_path):
    """Everything the CLI reports in one line derives from needle.errors.UserError."""
    from needle.data import find_fashion_mnist
    from needle.errors import CheckpointError, DataNotFoundError, UserError
    from needle.serialization import load_checkpoint

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 4)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(str(bad))
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)
    if not os.path.isdir("/usr/share/datasets/fashion-mnist"):
        with pytest.raises(DataNotFoundError) as info:
            find_fashion_mnist(str(tmp_path / "nowhere"))
        assert isinstance(info.value, UserError) and isinstance(info.value, FileNotFoundError)
    with pytest.raises(UserError, match="bogus"):
        train.mnist.augmentation("bogus")


def test_a_bug_keeps_its_traceback(monkeypatch, capsys):
    """An exception that is not a UserError is not turned into a one-line exit 2."""
    def broken(*args, **kwargs):
        raise KeyError("not a user error")

    monkeypatch.setattr(train.engine, "run_training", broken)
    with pytest.raises(KeyError):
        cli.main(["train", "--dataset", "tiny-mnist-cli", "--epochs", "1", "--no-progress"])
