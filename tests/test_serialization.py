"""Checkpoints: round trip, atomic writes, clear errors on bad files, exact resume."""
import argparse
import json
import os

import numpy as np
import pytest

import needle as ndl
import needle.nn as nn
from needle import optim, train
from needle.data import MNISTDataset, NDArrayDataset, shipped_mnist_test
from needle.models import MLPResNet
from needle.serialization import CheckpointError, load_checkpoint, save_checkpoint


@train.register_dataset("tiny-mnist")
def _tiny(args):
    ds = MNISTDataset(*shipped_mnist_test())
    X, y = ds.images.reshape(len(ds), -1), ds.labels
    return train.DatasetInfo("tiny-mnist", NDArrayDataset(X[:384], y[:384]),
                             NDArrayDataset(X[384:512], y[384:512]), input_shape=(784,),
                             num_classes=10)


def _args(out, **kw):
    base = dict(model="mlp-resnet", dataset="tiny-mnist", data_dir=None, epochs=2,
                batch_size=64, optimizer="adam", lr=0.002, weight_decay=0.001, hidden_dim=32,
                seed=3, out=str(out), resume=None)
    base.update(kw)
    return argparse.Namespace(**base)


def _trained():
    np.random.seed(0)
    model = MLPResNet(20, 16, num_blocks=1, num_classes=4)
    opt = optim.Adam(model.parameters(), lr=0.01)
    x = ndl.Tensor(np.random.randn(32, 20).astype(np.float32), requires_grad=False)
    y = ndl.Tensor(np.random.randint(0, 4, 32), requires_grad=False)
    for _ in range(3):
        opt.reset_grad()
        nn.SoftmaxLoss()(model(x), y).backward(create_graph=False)
        opt.step()
    return model, opt


def test_round_trip(tmp_path):
    model, opt = _trained()
    path = str(tmp_path / "ckpt.safetensors")
    np.random.seed(123)
    save_checkpoint(path, model, opt, meta={"epoch": 7})
    expected_draw = np.random.rand(3)
    np.random.seed(0)
    ck = load_checkpoint(path)
    assert ck.meta["epoch"] == 7
    state = model.state_dict()
    assert set(ck.model_state) == set(state)
    assert any("running_var" in k for k in state)  # BatchNorm buffers are saved
    for k, v in state.items():
        np.testing.assert_array_equal(ck.model_state[k], v)
    np.random.seed(1)
    model2 = MLPResNet(20, 16, num_blocks=1, num_classes=4)
    model2.load_state_dict(ck.model_state)
    opt2 = optim.Adam(model2.parameters(), lr=0.5)
    opt2.load_state_dict(ck.optimizer_state)
    assert opt2.t == 3 and opt2.lr == 0.01
    for p, q in zip(opt.params, opt2.params):
        for key in ("m", "v"):
            np.testing.assert_array_equal(opt.state[p][key], opt2.state[q][key])
    ndl.init.set_rng_state(ck.rng_state)
    np.testing.assert_array_equal(np.random.rand(3), expected_draw)


def test_atomic_write_leaves_no_temp_files(tmp_path):
    model, opt = _trained()
    path = tmp_path / "c.safetensors"
    path.write_bytes(b"old")
    save_checkpoint(str(path), model, opt)
    assert os.listdir(tmp_path) == ["c.safetensors"]
    assert load_checkpoint(str(path)).optimizer_state["name"] == "Adam"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "missing"])
def test_bad_checkpoint_names_the_file(tmp_path, damage):
    model, opt = _trained()
    path = tmp_path / "c.safetensors"
    save_checkpoint(str(path), model, opt)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + data[24:])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
    with pytest.raises(CheckpointError, match="c.safetensors"):
        load_checkpoint(str(path))


def _losses(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_exact_resume(tmp_path):
    full = tmp_path / "full"
    train.run_training(_args(full, epochs=2))
    part = tmp_path / "part"
    train.run_training(_args(part, epochs=1))
    np.random.seed(999)  # resuming must not depend on the RNG state of the new process
    train.run_training(_args(part, epochs=2, resume=str(part / "last.safetensors")))
    a, b = _losses(full), _losses(part)
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b):
        for key in ("train_loss", "train_accuracy", "eval_loss", "eval_accuracy"):
            assert ra[key] == rb[key], (key, ra, rb)
    ck_full = load_checkpoint(str(full / "last.safetensors"))
    ck_part = load_checkpoint(str(part / "last.safetensors"))
    for k, v in ck_full.model_state.items():
        np.testing.assert_array_equal(v, ck_part.model_state[k])
