"""`needle` as a new user meets it: help, flag checks, bounded runs, resume, logging, and the
faults found by attacking it (NaN flags, --out a file, interrupts, dataset mismatches).

Every rejected invocation must exit 2 with one stderr line and leave the files of an earlier
run byte-for-byte (and mtime) untouched."""
import csv
import json
import math
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

import needle
from needle import train
from needle.data import MNISTDataset, NDArrayDataset, shipped_mnist_test
from needle.train import cli, progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--dataset", "tiny-mnist-tc", "--batch-size", "64", "--hidden-dim", "16",
        "--no-progress", "--no-summary"]


def _tiny_data(num_classes):
    ds = MNISTDataset(*shipped_mnist_test())
    X, y = ds.images.reshape(len(ds), -1), ds.labels % num_classes
    return NDArrayDataset(X[:256], y[:256]), NDArrayDataset(X[256:384], y[256:384])


@train.register_dataset("tiny-mnist-tc")
def _tiny(args):
    tr, ev = _tiny_data(10)
    return train.DatasetInfo("tiny-mnist-tc", tr, ev, input_shape=(784,), num_classes=10)


@train.register_dataset("tiny-mnist-5")
def _tiny5(args):
    tr, ev = _tiny_data(5)
    return train.DatasetInfo("tiny-mnist-5", tr, ev, input_shape=(784,), num_classes=5)


def _needle(*argv, pre=""):
    """`python -m needle ARGV` in a fresh process; `pre` runs first (e.g. to hide packages)."""
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
    code = f"{pre}\nimport sys, runpy\nsys.argv = ['needle', *{list(argv)!r}]\n" \
           f"runpy.run_module('needle', run_name='__main__')"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


def _one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def _snapshot(folder):
    return {name: (p.read_bytes(), p.stat().st_mtime_ns)
            for name in sorted(os.listdir(folder)) if (p := folder / name).is_file()}


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("good") / "run"
    assert cli.main(["train", *TINY, "--epochs", "2", "--out", str(out)]) == 0
    return out


def _records(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


# ---- help, version, usage, typos ------------------------------------------------------------

def test_every_flag_has_help_with_its_default(monkeypatch):
    monkeypatch.setenv("COLUMNS", "2000")  # no line wrapping inside "(default: ...)"
    parser = cli.build_parser()
    sub = cli._subparser(parser, "train")
    assert set(cli._subparser(parser, c) is not None
               for c in ("train", "eval", "generate", "summary")) == {True}
    for command in ("train", "eval", "generate", "summary"):
        sp = cli._subparser(parser, command)
        assert sp.description, command
        text = sp.format_help()
        assert "default: None" not in text
        for action in sp._actions:
            if action.dest == "help":
                continue
            assert action.help, (command, action.dest)
            if action.default is not None and not isinstance(action.default, bool) and \
                    "(default:" not in action.help:
                assert f"(default: {action.default})" in text, (command, action.dest)
    assert sub is not None


def test_version_bare_usage_and_typo_suggestion():
    proc = _needle("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"needle {needle.__version__}"
    proc = _needle()
    assert proc.returncode == 2 and proc.stdout.startswith("usage: needle")
    for command in ("train", "eval", "generate", "summary"):
        assert command in proc.stdout
    _one_line_error(_needle("train", "--epoch", "3"), "'--epoch'", "did you mean --epochs?")
    _one_line_error(_needle("train", "--lerning-rate", "0.1"), "unrecognized")
    _one_line_error(_needle("generate", "x.safetensors", "--temprature", "1"),
                    "did you mean --temperature?")


# ---- bug 3: NaN, inf and out-of-range values ----------------------------------------------

BAD_TRAIN = [("--lr", "nan"), ("--lr", "inf"), ("--lr", "-0.1"), ("--lr", "0"),
             ("--weight-decay", "nan"), ("--weight-decay", "-1"), ("--epochs", "0"),
             ("--batch-size", "-3"), ("--max-steps", "0"), ("--max-time", "nan"),
             ("--clip", "inf"), ("--clip", "-1"), ("--bptt", "0"), ("--hidden-dim", "0"),
             ("--seed", "-1")]


@pytest.mark.parametrize("flag,value", BAD_TRAIN)
def test_bad_numbers_are_rejected_and_the_run_is_untouched(good_run, flag, value):
    before = _snapshot(good_run)
    _one_line_error(_needle("train", "--out", str(good_run), flag, value), flag, value)
    assert _snapshot(good_run) == before


@pytest.mark.parametrize("flag,value", [("--temperature", "-1"), ("--temperature", "nan"),
                                        ("--tokens", "-5"), ("--tokens", "0"),
                                        ("--seed", "-2")])
def test_generate_rejects_bad_numbers(good_run, flag, value):
    before = _snapshot(good_run)
    _one_line_error(_needle("generate", str(good_run / "last.safetensors"), flag, value),
                    flag, value)
    assert _snapshot(good_run) == before


def test_a_diverging_run_never_replaces_a_checkpoint(good_run, capsys):
    """--lr 1e30 makes the first epoch's loss nan: exit 2, one line, old files kept."""
    before = _snapshot(good_run)
    with np.errstate(all="ignore"):
        code = cli.main(["train", *TINY, "--optimizer", "sgd", "--lr", "1e30", "--epochs",
                         "1", "--out", str(good_run)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "nan" in err[0] and "--lr" in err[0], err
    assert _snapshot(good_run) == before


def test_detect_anomaly_names_the_op_in_one_line(tmp_path, capsys):
    with np.errstate(all="ignore"):
        code = cli.main(["train", *TINY, "--optimizer", "sgd", "--lr", "1e30", "--epochs",
                         "1", "--detect-anomaly", "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--detect-anomaly" in err[0], err
    assert "non-finite" in err[0] and ":" in err[0].split("--detect-anomaly: ")[1]
    assert not (tmp_path / "a" / "last.safetensors").exists()


# ---- bug 4: --out an existing file ---------------------------------------------------------

def test_out_naming_a_file(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    _one_line_error(_needle("train", "--out", str(f), "--epochs", "1"), str(f), "not a folder")
    assert f.read_text() == "keep me"


# ---- bug 5: atomic artifacts, temp files, permissions --------------------------------------

def test_interrupt_while_plotting_leaves_no_temp_and_old_files(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    before = _snapshot(out)
    import matplotlib.figure

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", interrupted)
    code = cli.main(["train", *TINY, "--epochs", "2", "--out", str(out), "--resume",
                     str(out / "last.safetensors")])
    assert code == 130 and "interrupted" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == sorted(before)  # nothing stray (no .curves.png.*)
    assert (out / "curves.png").read_bytes() == before["curves.png"][0]


def test_stale_temps_are_removed_and_files_have_ordinary_modes(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = [out / ".last.safetensors.k1ll3d", out / ".metrics.csv.x9", out / ".curves.png.y"]
    for p in stale:
        p.write_bytes(b"half")
    assert cli.main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    assert not any(p.exists() for p in stale)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("last.safetensors", "best.safetensors", "metrics.csv", "metrics.jsonl",
                 "curves.png"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


# ---- bounded runs, the done line, CSV ------------------------------------------------------

def test_max_steps_and_done_line(tmp_path, capsys):
    out = tmp_path / "run"
    # 256 samples / 64 = 4 steps an epoch: 6 steps end inside epoch 2
    assert cli.main(["train", *TINY, "--epochs", "5", "--max-steps", "6",
                     "--out", str(out)]) == 0
    text = capsys.readouterr().out
    recs = _records(out)
    assert [r["epoch"] for r in recs] == [1, 2] and recs[-1]["step"] == 6
    assert recs[-1]["stopped"] == "--max-steps 6 reached"
    assert "stopped: --max-steps 6 reached" in text
    best = max(recs, key=lambda r: r["eval_accuracy"])
    assert (f"done: best epoch {best['epoch']} of 2: validation accuracy "
            f"{best['eval_accuracy']:.4f}") in text
    assert cli.main(["train", *TINY, "--epochs", "5", "--max-time", "1e-9",
                     "--out", str(tmp_path / "t")]) == 0
    assert [r["step"] for r in _records(tmp_path / "t")] == [1]


def test_csv_matches_jsonl(good_run):
    recs = _records(good_run)
    with open(good_run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(recs)
    for row, rec in zip(rows, recs):
        assert set(row) == set(rec)
        for k, v in rec.items():
            assert float(row[k]) == pytest.approx(v, rel=1e-12), k


# ---- bug 6, 7: a folder of text with valid.txt only; resume from the stored config ----------

LM = ["--model", "rnn-lm", "--hidden-dim", "8", "--embedding-dim", "8", "--num-layers", "1",
      "--bptt", "8", "--batch-size", "4", "--no-progress", "--no-summary"]


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(12)]
    for name, n in (("train.txt", 60), ("valid.txt", 20)):
        lines = [" ".join(rng.choice(words, 6)) for _ in range(n)]
        (d / name).write_text("\n".join(lines) + "\n")
    return d


def test_text_folder_with_valid_only_and_perplexity(text_dir, tmp_path, capsys):
    out = tmp_path / "lm"
    assert cli.main(["train", *LM, "--dataset", str(text_dir), "--epochs", "1",
                     "--out", str(out)]) == 0
    text = capsys.readouterr().out
    rec = _records(out)[-1]
    assert rec["eval_perplexity"] == pytest.approx(math.exp(rec["eval_loss"]), rel=1e-9)
    assert (f"done: best epoch 1 of 1: validation perplexity {rec['eval_perplexity']:.3f}"
            in text)
    assert "ppl" in text and "acc" not in text.split("done:")[0]


def test_resume_uses_the_stored_configuration(text_dir, tmp_path, capsys):
    out = tmp_path / "lm"
    assert cli.main(["train", *LM, "--dataset", str(text_dir), "--epochs", "1",
                     "--out", str(out)]) == 0
    ckpt = str(out / "last.safetensors")
    capsys.readouterr()
    before = _snapshot(out)
    # a flag that changes the model: one line, exit 2, nothing written
    assert cli.main(["train", "--resume", ckpt, "--hidden-dim", "16", "--out",
                     str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--hidden-dim 16" in err[0] and "8" in err[0], err
    assert _snapshot(out) == before
    # no flags repeated (not even --out): the stored LM configuration is rebuilt in the
    # checkpoint's folder, --epochs extends
    assert cli.main(["train", "--resume", ckpt, "--epochs", "2",
                     "--no-progress", "--no-summary"]) == 0
    text = capsys.readouterr().out
    assert "extended from 1 epochs" in text
    assert [r["epoch"] for r in _records(out)] == [1, 2]


def test_resume_matches_an_uninterrupted_run(tmp_path, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli.main(["train", *TINY, "--epochs", "2", "--out", str(full)]) == 0
    assert cli.main(["train", *TINY, "--epochs", "2", "--max-steps", "4",
                     "--out", str(part)]) == 0
    assert cli.main(["train", "--resume", str(part / "last.safetensors"), "--out", str(part),
                     "--no-progress", "--no-summary"]) == 0
    a, b = _records(full), _records(part)
    assert [r["eval_loss"] for r in a] == pytest.approx([r["eval_loss"] for r in b],
                                                        rel=1e-6)


# ---- bug 8: a plain install (no tqdm, no matplotlib) ---------------------------------------

def test_plain_install_runs_without_tqdm_and_matplotlib(tmp_path):
    out = tmp_path / "plain"
    hide = "import sys\nsys.modules['tqdm'] = None\nsys.modules['matplotlib'] = None"
    proc = _needle("train", "--epochs", "1", "--max-steps", "2", "--out", str(out), pre=hide)
    assert proc.returncode == 0, proc.stderr
    assert "note: curves.png not written: matplotlib is not installed" in proc.stdout
    assert sorted(os.listdir(out)) == ["best.safetensors", "last.safetensors", "metrics.csv",
                                       "metrics.jsonl"]


# ---- bug 9: eval on a dataset that does not fit ------------------------------------------

def test_eval_on_a_mismatched_dataset(good_run, capsys):
    before = _snapshot(good_run)
    for dataset in ("tiny-mnist-5", "shakespeare"):
        assert cli.main(["eval", str(good_run / "last.safetensors"), "--dataset",
                         dataset]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "does not match the checkpoint" in err[0], err
        assert "tiny-mnist-tc" in err[0] and dataset in err[0]
    assert _snapshot(good_run) == before


# ---- model summary, progress bar, TensorBoard --------------------------------------------

def test_summary_command_counts_parameters(capsys):
    from needle.models import MLPResNet

    assert cli.main(["summary", "--model", "mlp-resnet", "--hidden-dim", "32"]) == 0
    text = capsys.readouterr().out
    ref = MLPResNet(784, 32, num_classes=10)
    total = sum(int(np.prod(p.shape)) for p in ref.parameters())
    assert f"total parameters {total:,}" in text
    lines = text.splitlines()
    first = lines[lines.index(next(x for x in lines if x.startswith("---"))) + 1]
    assert "(1000, 10)" in first and f"{total:,}" in first  # the model on one eval batch
    assert any(x.strip().startswith("modules.0 Linear") and "(1000, 32)" in x
               and f"{784 * 32 + 32:,}" in x for x in lines)
    assert cli.main(["summary", "--model", "lstm-lm", "--hidden-dim", "16",
                     "--embedding-dim", "8", "--num-layers", "1"]) == 0
    assert "LanguageModel" in capsys.readouterr().out


def test_progress_bar_throughput_and_eta(monkeypatch):
    import io

    clock = iter([0.0, 1.0, 2.0, 2.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    buf = io.StringIO()
    bar = progress.ProgressBar(10, "epoch 1/3", file=buf, min_interval=0.0)
    bar.update(64, 2.0, 32)  # t=1
    bar.update(64, 1.0, 48)  # t=2
    line = buf.getvalue().split("\r")[-1]
    # 128 samples in 2 s; 2 of 10 batches in 2 s leaves 8 s
    assert "2/10  20%" in line and "64 samples/s" in line and "ETA 00:08" in line
    assert "loss 1.5000" in line and "acc 0.6250" in line
    lm = progress.ProgressBar(4, "epoch 1/1", unit="tok", file=buf, perplexity=True,
                              start=0.0)
    clock2 = iter([4.0, 4.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock2))
    lm.update(100, 2.0, 10)  # 100 tokens in 4 s since the epoch's start
    line = buf.getvalue().split("\r")[-1]
    assert f"ppl {math.exp(2.0):.2f}" in line and "25 tok/s" in line and "ETA 00:12" in line
    bar.close()
    assert buf.getvalue().endswith("\r")


def _events(folder):
    from tensorboardX.proto import event_pb2

    scalars = {}
    for name in sorted(os.listdir(folder)):
        data = (folder / name).read_bytes()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            ev = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in ev.summary.value:
                scalars.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return scalars


def test_tensorboard_log(tmp_path, capsys):
    pytest.importorskip("tensorboardX")
    out = tmp_path / "tb"
    assert cli.main(["train", *TINY, "--epochs", "2", "--log", "tensorboard",
                     "--out", str(out)]) == 0
    scalars = _events(out / "tensorboard")
    recs = _records(out)
    assert [s for s, _ in scalars["eval/accuracy"]] == [1, 2]
    assert [v for _, v in scalars["eval/loss"]] == pytest.approx(
        [r["eval_loss"] for r in recs], rel=1e-6)
    assert [s for s, _ in scalars["train/step_loss"]] == list(range(1, 9))


# ---- issue 14's trainer items: warm-up, early stopping, --init-from, --freeze ---------------

def test_warmup_in_front_of_cosine_matches_torch(tmp_path):
    import torch

    out = tmp_path / "w"
    assert cli.main(["train", *TINY, "--epochs", "5", "--lr", "0.01", "--warmup-epochs", "2",
                     "--schedule", "cosine", "--out", str(out)]) == 0
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.01)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / 3, total_iters=2),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3)], milestones=[2])
    expect = []
    for _ in range(5):
        expect.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert [r["lr"] for r in _records(out)] == pytest.approx(expect, rel=1e-9)
    _one_line_error(_needle("train", "--epochs", "3", "--warmup-epochs", "3", "--out",
                            str(tmp_path / "x")), "--warmup-epochs 3", "fewer than --epochs")


def test_early_stopping_stops_by_its_definition_and_restores_the_best(tmp_path, capsys):
    from needle.serialization import load_checkpoint

    out = tmp_path / "es"
    # Adam at lr 0.2 on 256 images: the validation accuracy stops improving within 8 epochs
    args = cli.build_parser().parse_args(["train", *TINY, "--epochs", "8", "--lr", "0.2",
                                          "--early-stopping", "2", "--out", str(out)])
    cli._resolve_dataset(cli.build_parser(), args)
    args.explicit_flags = set()
    train.run_training(args)
    recs = _records(out)
    best_epoch, best_acc, expect_stop = None, None, None
    for r in recs:  # the definition: stop once PATIENCE epochs pass without a better value
        if best_acc is None or r["eval_accuracy"] > best_acc:
            best_epoch, best_acc = r["epoch"], r["eval_accuracy"]
        elif r["epoch"] - best_epoch >= 2:
            expect_stop = r["epoch"]
            break
    assert expect_stop is not None, "the run kept improving; pick a noisier setting"
    assert recs[-1]["epoch"] == expect_stop and "--early-stopping 2" in recs[-1]["stopped"]
    summary = args.run_summary
    assert summary["restored"] == best_epoch
    model = summary["trainer"].model
    best = load_checkpoint(str(out / "best.safetensors"))
    assert best.meta["epoch"] == best_epoch
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, best.model_state[k])


def test_init_from_and_freeze(good_run, tmp_path, capsys):
    from needle.serialization import load_checkpoint

    src = load_checkpoint(str(good_run / "last.safetensors")).model_state
    out = tmp_path / "ft"
    assert cli.main(["train", *TINY, "--dataset", "tiny-mnist-5", "--epochs", "1",
                     "--init-from", str(good_run / "last.safetensors"),
                     "--freeze", "modules.0", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    head = [k for k in src if k.startswith("modules.5")]  # the 10-class output layer
    line = [x for x in text.splitlines() if x.startswith("init-from")][0]
    assert f"loaded {len(src) - len(head)} tensors; skipped {len(head)}" in line
    assert "modules.5.weight: (16, 10) there, (16, 5) here" in line
    assert "frozen: 2 parameters (modules.0*)" in text
    after = load_checkpoint(str(out / "last.safetensors")).model_state
    for k in ("modules.0.weight", "modules.0.bias"):  # frozen: exactly the source weights
        np.testing.assert_array_equal(after[k], src[k])
    moved = [k for k in src if k not in head and not k.startswith("modules.0")
             and "running" not in k and not np.array_equal(after[k], src[k])]
    assert moved  # the rest trained
    _one_line_error(_needle("train", "--freeze", "nosuchlayer", "--epochs", "1", "--out",
                            str(tmp_path / "f")), "--freeze nosuchlayer", "modules")
    _one_line_error(_needle("train", "--resume", str(good_run / "last.safetensors"),
                            "--init-from", str(good_run / "last.safetensors"), "--out",
                            str(tmp_path / "g")), "--init-from and --resume")


def test_text_folder_needs_valid_or_test(tmp_path):
    (tmp_path / "train.txt").write_text("a b c\n")
    _one_line_error(_needle("train", "--model", "rnn-lm", "--dataset", str(tmp_path),
                            "--out", str(tmp_path / "o")), "neither valid.txt nor test.txt")
    assert not (tmp_path / "o").exists()


def test_compiled_training_gives_the_same_run(tmp_path):
    """`--compile` records the step once and replays it: the same losses, accuracies and
    weights as the eager run (MLPResNet: BatchNorm, dropout from the seeded RNG, Adam), over
    epochs whose last batch is short (256 samples, batch 48: a second signature)."""
    runs = {}
    for flag in ([], ["--compile"]):
        out = tmp_path / ("compiled" if flag else "eager")
        argv = ["train", *TINY, "--batch-size", "48", "--epochs", "3", "--out", str(out), *flag]
        assert cli.main(argv) == 0
        state = needle.serialization.load_checkpoint(str(out / "last.safetensors")).model_state
        runs[bool(flag)] = (_records(out), state)
    (eager, w_eager), (comp, w_comp) = runs[False], runs[True]
    for a, b in zip(eager, comp):
        for key in ("train_loss", "train_accuracy", "eval_loss", "eval_accuracy"):
            assert a[key] == b[key], (key, a[key], b[key])
    assert w_eager and set(w_eager) == set(w_comp)
    for name, value in w_eager.items():
        np.testing.assert_array_equal(np.asarray(w_comp[name]), np.asarray(value),
                                      err_msg=name)


@pytest.mark.parametrize("model", ["lstm-lm", "gru-lm", "transformer-lm"])
def test_compiled_language_model_gives_the_same_run(tmp_path, text_dir, model):
    """`--compile` on a language model: the hidden state goes into the compiled step and
    comes out of it (a separate plan for each epoch's first window, without a state, and for
    the short last window), gradients are clipped on the device, and evaluation replays a
    compiled forward: the same losses and weights as the eager run."""
    data = text_dir
    runs = {}
    for flag in ([], ["--compile"]):
        out = tmp_path / ("compiled" if flag else "eager")
        argv = ["train", "--model", model, "--dataset", str(data), "--epochs", "2",
                "--batch-size", "4", "--bptt", "7", "--hidden-dim", "12", "--embedding-dim",
                "8", "--num-layers", "2", "--clip", "0.5", "--optimizer", "sgd", "--lr", "1.0",
                "--no-progress", "--no-summary", "--out", str(out), *flag]
        assert cli.main(argv) == 0
        state = needle.serialization.load_checkpoint(str(out / "last.safetensors")).model_state
        runs[bool(flag)] = (_records(out), state)
    (eager, w_eager), (comp, w_comp) = runs[False], runs[True]
    assert len(eager) == len(comp) == 2
    for a, b in zip(eager, comp):
        for key in ("train_loss", "train_accuracy", "eval_loss", "eval_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (key, a[key], b[key])
    for name, value in w_eager.items():
        np.testing.assert_allclose(np.asarray(w_comp[name]), np.asarray(value), rtol=1e-4,
                                   atol=1e-6, err_msg=name)


def test_compile_is_refused_for_segmentation(tmp_path, capsys):
    out = tmp_path / "seg"
    assert cli.main(["train", "--model", "fcn", "--dataset", "mnist-seg", "--compile",
                     "--max-steps", "1", "--no-progress", "--no-summary",
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--compile" in err[0] and "fcn" in err[0], err
    assert not out.exists() or not any(out.iterdir())
