"""The trainer's structure: recipes declare their own flags, and the course's hw4 loops run on
the one Trainer loop with the numbers of a hand-written course loop."""
import os

import numpy as np
import pytest

import needle as ndl
from needle import nn, train
from needle.train import cli, engine, run_config
from needle.train.conv import epoch_general_cifar10, evaluate_cifar10
from needle.train.lm import epoch_general_ptb, evaluate_ptb

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN_DIR = os.path.join(HERE, "..", "python", "needle", "train")

RECIPE_FLAGS = {"mnist.py": ["--augment"], "conv.py": ["--growth-rate", "--dense-blocks"],
                "lm.py": ["--bptt", "--clip", "--num-layers", "--embedding-dim"],
                "segmentation.py": ["--width"]}


def _source(name):
    with open(os.path.join(TRAIN_DIR, name)) as f:
        return f.read()


def _options(command):
    return {o for a in cli._subparser(cli.build_parser(), command)._actions
            for o in a.option_strings}


def test_each_recipe_declares_its_own_flags():
    engine_src, cli_src = _source("engine.py"), _source("cli.py")
    train_flags = _options("train")
    for module, flags in RECIPE_FLAGS.items():
        src = _source(module)
        for flag in flags:
            assert f'"{flag}"' in src, (module, flag)
            assert f'"{flag}"' not in cli_src and f'"{flag}"' not in engine_src, flag
            assert flag in train_flags, flag
            assert flag.lstrip("-").replace("-", "_") in run_config.CONFIG_KEYS, flag
    # the engine names no dataset or model of a recipe
    for name in ("mnist", "fashion", "shakespeare", "cifar", "densenet", "lstm", "fcn"):
        assert name not in engine_src.lower(), name
    assert "--clip" not in _options("summary") and "--bptt" in _options("summary")


@pytest.fixture
def toy_recipe(monkeypatch):
    """A recipe registered from outside needle: a dataset, a model and one flag of its own."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((96, 6)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.float32)

    def dataset(args):
        ds = ndl.data.NDArrayDataset(X, y)
        return engine.DatasetInfo("toy", ds, ds, input_shape=(6,), num_classes=2)

    def model(info, args):
        return nn.Sequential(nn.Linear(6, args.toy_width), nn.ReLU(),
                             nn.Linear(args.toy_width, info.num_classes))

    def flags(parser, command):
        parser.add_argument("--toy-width", type=int, default=5, help="toy: hidden width")

    monkeypatch.setitem(train.DATASETS, "toy", dataset)
    monkeypatch.setitem(train.MODELS, "toy-mlp", model)
    monkeypatch.setattr(engine, "RECIPE_FLAGS", list(engine.RECIPE_FLAGS))
    monkeypatch.setattr(run_config, "CONFIG_KEYS", list(run_config.CONFIG_KEYS))
    engine.register_flags("toy_width")(flags)
    return "toy"


def test_a_recipe_from_outside_registers_its_flag_and_resumes_with_it(toy_recipe, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "toy", "--model", "toy-mlp", "--toy-width", "7",
            "--epochs", "1", "--batch-size", "32", "--out", str(out), "--no-progress",
            "--no-summary"]
    assert cli.main(argv) == 0
    ckpt = ndl.serialization.load_checkpoint(str(out / "last.safetensors"))
    assert ckpt.meta["config"]["toy_width"] == 7
    assert tuple(ckpt.model_state["modules.0.weight"].shape) == (6, 7)
    # resumed without repeating the flag: the stored width rebuilds the model
    assert cli.main(["train", "--resume", str(out / "last.safetensors"), "--epochs", "2",
                     "--no-progress", "--no-summary"]) == 0
    ckpt = ndl.serialization.load_checkpoint(str(out / "last.safetensors"))
    assert ckpt.meta["epoch"] == 2 and ckpt.meta["config"]["toy_width"] == 7


def _assert_same_numbers(results, weights):
    """The (accuracy, loss) pairs and final weights of the Trainer run and the course loop."""
    for (a_acc, a_loss), (b_acc, b_loss) in zip(*results):
        assert a_acc == b_acc
        np.testing.assert_allclose(a_loss, b_loss, rtol=1e-5)
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _course_cifar_epoch(loader, model, opt):
    """The hw4 loop as the course writes it, for reference."""
    model.train() if opt is not None else model.eval()
    loss_fn = nn.SoftmaxLoss()
    correct = total = 0
    loss_sum = 0.0
    for X, y in loader:
        out = model(X)
        loss = loss_fn(out, y)
        if opt is not None:
            opt.reset_grad()
            loss.backward()
            opt.step()
        labels = y.numpy().astype(np.int64)
        correct += int((out.numpy().argmax(axis=1) == labels).sum())
        loss_sum += float(loss.numpy()) * labels.shape[0]
        total += labels.shape[0]
    return correct / total, loss_sum / total


def _conv_net():
    return nn.Sequential(nn.Conv(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 3))


def test_hw4_cifar_loop_is_the_trainer_with_the_course_numbers():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 40).astype(np.float32)
    results, weights = [], []
    for loop in ("trainer", "course"):
        ndl.init.manual_seed(3)
        model = _conv_net()
        opt = ndl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        loader = ndl.data.DataLoader(ndl.data.NDArrayDataset(X, y), batch_size=16)
        if loop == "trainer":
            results.append((epoch_general_cifar10(loader, model, opt=opt),
                            evaluate_cifar10(model, loader)))
        else:
            results.append((_course_cifar_epoch(loader, model, opt),
                            _course_cifar_epoch(loader, model, None)))
        weights.append([p.numpy() for p in model.parameters()])
    _assert_same_numbers(results, weights)


def _course_ptb_epoch(data, model, seq_len, opt, clip):
    from needle.data.text import get_batch
    from needle.models.language import detach_state

    model.train(opt is not None)
    loss_fn = nn.SoftmaxLoss()
    h, total, correct, loss_sum = None, 0, 0, 0.0
    for i in range(0, data.shape[0] - 1, seq_len):
        X, y = get_batch(data, i, seq_len)
        logits, h = model(X, h)
        loss = loss_fn(logits, y)
        if opt is not None:
            opt.reset_grad()
            loss.backward()
            opt.clip_grad_norm(clip)
            opt.step()
        h = detach_state(h)
        n = y.shape[0]
        loss_sum += float(loss.numpy()) * n
        correct += int((logits.numpy().argmax(axis=1) == y.numpy()).sum())
        total += n
    return correct / total, loss_sum / total


def test_hw4_ptb_loop_is_the_trainer_with_the_course_numbers():
    from needle.models import LanguageModel

    rng = np.random.default_rng(2)
    data = rng.integers(0, 11, (30, 4)).astype(np.float32)
    results, weights = [], []
    for loop in ("trainer", "course"):
        ndl.init.manual_seed(5)
        model = LanguageModel(6, 11, 8, 2, seq_model="lstm")
        opt = ndl.optim.SGD(model.parameters(), lr=0.5)
        if loop == "trainer":
            results.append((epoch_general_ptb(data, model, seq_len=7, opt=opt, clip=0.5),
                            evaluate_ptb(model, data, seq_len=7)))
        else:
            results.append((_course_ptb_epoch(data, model, 7, opt, 0.5),
                            _course_ptb_epoch(data, model, 7, None, None)))
        weights.append([p.numpy() for p in model.parameters()])
    _assert_same_numbers(results, weights)


def test_hw4_ptb_loop_rejects_data_without_targets():
    from needle.models import LanguageModel

    with pytest.raises(ValueError, match="no window of targets"):
        epoch_general_ptb(np.zeros((1, 4), np.float32), LanguageModel(4, 5, 4, 1))


def test_hw4_ptb_evaluation_reports_each_window():
    """on_batch during evaluation gets each window's own loss: their token-weighted mean is
    the epoch's loss."""
    from needle.models import LanguageModel

    rng = np.random.default_rng(4)
    data = rng.integers(0, 11, (30, 4)).astype(np.float32)
    ndl.init.manual_seed(5)
    model = LanguageModel(6, 11, 8, 1, seq_model="lstm")
    seen = []
    _, loss = epoch_general_ptb(data, model, seq_len=7,
                                on_batch=lambda i, n, value: seen.append((i, n, value)))
    assert [i for i, _, _ in seen] == list(range(5)) and all(n == 5 for _, n, _ in seen)
    tokens = [min(7, 29 - 7 * i) * 4 for i in range(5)]
    assert len({v for _, _, v in seen}) > 1
    np.testing.assert_allclose(np.dot(tokens, [v for _, _, v in seen]) / sum(tokens), loss,
                               rtol=1e-6)
