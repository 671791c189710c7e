"""ONNX export: every shipped model traced in eval mode, checked by onnx.checker, run with
onnxruntime and compared with needle's own forward (within 1e-5); and `needle export`."""
import importlib.util
import json

import numpy as np
import pytest

import needle as ndl
import needle.nn as nn
from needle import train
from needle.models import LanguageModel, MLPResNet, ResNet9, SmallResNet

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from needle.onnx import ExportError, export  # noqa: E402


def _run(path, feeds):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _check(model, x, tmp_path, name="m"):
    model.eval()
    out = model(ndl.Tensor(x))
    want = [t.numpy() for t in _flat(out)]
    path = tmp_path / f"{name}.onnx"
    export(model, ndl.Tensor(x), path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    got = _run(path, {"input": x})
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    return path


def _flat(out):
    if out is None:
        return []
    if isinstance(out, tuple):
        return [t for o in out for t in _flat(o)]
    return [out]


def _x(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def test_mlp_resnet(tmp_path):
    model = MLPResNet(12, hidden_dim=8, num_blocks=2, num_classes=5)
    model.train()
    model(ndl.Tensor(_x(16, 12)))  # move BatchNorm's running statistics off their start
    _check(model, _x(4, 12, seed=1), tmp_path)


def test_small_resnet(tmp_path):
    _check(SmallResNet(width=4), _x(2, 1, 28, 28), tmp_path)


@pytest.mark.slow
def test_resnet9(tmp_path):
    _check(ResNet9(), _x(2, 3, 32, 32), tmp_path)


@pytest.mark.parametrize("seq_model", ["rnn", "lstm", "gru", "transformer"])
def test_language_models(tmp_path, seq_model):
    model = LanguageModel(8, 11, 6, num_layers=2, seq_model=seq_model, seq_len=5)
    ids = np.random.default_rng(0).integers(0, 11, (5, 3)).astype("float32")
    _check(model, ids, tmp_path, seq_model)


@pytest.mark.parametrize("module", ["densenet", "fcn"])
def test_models_written_elsewhere(tmp_path, module):
    if importlib.util.find_spec(f"needle.models.{module}") is None:
        pytest.skip(f"needle.models.{module} does not exist in this tree")
    mod = importlib.import_module(f"needle.models.{module}")
    cls = getattr(mod, "DenseNet" if module == "densenet" else "FCN")
    try:
        model = cls()
    except TypeError:
        pytest.skip(f"{cls.__name__} needs arguments this test does not know")
    _check(model, _x(2, 1, 28, 28), tmp_path, module)


def test_layers_beside_the_models(tmp_path):
    model = nn.Sequential(nn.Linear(6, 8), nn.Sigmoid(), nn.LayerNorm1d(8), nn.Tanh(),
                          nn.Linear(8, 3))
    _check(model, _x(4, 6), tmp_path)


def test_training_mode_is_restored_and_weights_untouched(tmp_path):
    model = MLPResNet(6, hidden_dim=4, num_blocks=1, num_classes=2)
    model.train()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    export(model, ndl.Tensor(_x(3, 6)), tmp_path / "m.onnx")
    assert model.training and all(p.requires_grad for p in model.parameters())
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_unsupported_op_names_it(tmp_path):
    class Odd(nn.Module):
        def forward(self, x):
            return ndl.ops.flip(x, (0,))

    with pytest.raises(ExportError, match="op Flip .*Odd"):
        export(Odd(), ndl.Tensor(_x(2, 3)), tmp_path / "odd.onnx")


@train.register_dataset("tiny-mnist-onnx")
def _tiny(args):
    from needle.data import MNISTDataset, NDArrayDataset, shipped_mnist_test

    ds = MNISTDataset(*shipped_mnist_test())
    X, y = ds.images.reshape(len(ds), -1), ds.labels
    return train.DatasetInfo("tiny-mnist-onnx", NDArrayDataset(X[:128], y[:128]),
                             NDArrayDataset(X[128:192], y[128:192]), input_shape=(784,),
                             num_classes=10)


def test_needle_export_command(tmp_path, capsys):
    from needle.serialization import load_checkpoint
    from needle.train import cli

    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "tiny-mnist-onnx", "--epochs", "1", "--batch-size",
                     "64", "--hidden-dim", "8", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    ckpt = out / "last.safetensors"
    assert cli.main(["export", str(ckpt), "--format", "onnx", "--batch-size", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["output"] == str(out / "last.onnx") and report["input_shape"] == [4, 784]
    # the ONNX model computes what the checkpoint's needle model does
    state = load_checkpoint(str(ckpt)).model_state
    model = MLPResNet(784, hidden_dim=8, num_classes=10)
    model.load_state_dict(state)
    model.eval()
    x = _x(4, 784)
    np.testing.assert_allclose(_run(out / "last.onnx", {"input": x})[0],
                               model(ndl.Tensor(x)).numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(SystemExit) as e:  # argparse: unknown format, exit code 2
        cli.main(["export", str(ckpt), "--format", "tflite"])
    assert e.value.code == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path / "none.safetensors")]) == 2
    assert "none.safetensors" in capsys.readouterr().err


def test_the_worked_examples_in_docs_interop_md_run(tmp_path, monkeypatch):
    """The python blocks of docs/interop.md, run as written (in a scratch folder)."""
    import os
    import re

    torch = pytest.importorskip("torch")
    del torch
    doc = os.path.join(os.path.dirname(__file__), "..", "docs", "interop.md")
    blocks = re.findall(r"```python\n(.*?)```", open(doc, encoding="utf-8").read(), re.S)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    scope = {}
    for block in blocks:
        exec(compile(block, "docs/interop.md", "exec"), scope)  # noqa: S102
    assert os.path.exists(tmp_path / "toy.onnx") and os.path.exists(tmp_path / "toy.safetensors")
