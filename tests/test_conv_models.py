"""ResNet9 and SmallResNet against PyTorch models of the same layout (weights copied)."""
import numpy as np
import pytest
import torch

import needle as ndl
from needle import nn
from needle.models import ResNet9, SmallResNet


class _TorchResidual(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


def _to_torch(module):
    """A torch module with the same layout and parameters as a needle module."""
    if isinstance(module, nn.Sequential):
        return torch.nn.Sequential(*[_to_torch(m) for m in module.modules])
    if isinstance(module, nn.Residual):
        return _TorchResidual(_to_torch(module.fn))
    if isinstance(module, nn.Conv):
        t = torch.nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size,
                            module.stride, module.kernel_size // 2)
        t.weight.data = torch.tensor(module.weight.numpy().transpose(3, 2, 0, 1))
        t.bias.data = torch.tensor(module.bias.numpy())
        return t
    if isinstance(module, nn.BatchNorm2d):
        t = torch.nn.BatchNorm2d(module.dim)
        t.weight.data = torch.tensor(module.weight.numpy())
        t.bias.data = torch.tensor(module.bias.numpy())
        return t
    if isinstance(module, nn.Linear):
        t = torch.nn.Linear(module.in_features, module.out_features)
        t.weight.data = torch.tensor(module.weight.numpy().T)
        t.bias.data = torch.tensor(module.bias.numpy().reshape(-1))
        return t
    simple = {nn.ReLU: torch.nn.ReLU, nn.Flatten: torch.nn.Flatten}
    if isinstance(module, nn.MaxPool2d) and not isinstance(module, nn.AvgPool2d):
        return torch.nn.MaxPool2d(module.kernel_size, module.stride, module.padding)
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return torch.nn.AdaptiveAvgPool2d(1)
    if type(module) in simple:
        return simple[type(module)]()
    if hasattr(module, "model"):
        return _to_torch(module.model)
    return torch.nn.Sequential(*[_to_torch(m) for m in vars(module).values()
                                 if isinstance(m, nn.Module)])


def _param_pairs(ours, theirs):
    ps = ours.parameters()
    ts = list(theirs.parameters())
    assert len(ps) == len(ts)
    return list(zip(ps, ts))


def _as_ours(p, t):
    g = t.grad.numpy()
    return g.transpose(2, 3, 1, 0) if g.ndim == 4 else g.T if g.ndim == 2 else g


def test_resnet9_parameter_count_and_shape():
    np.random.seed(0)
    model = ResNet9()
    assert sum(int(np.prod(p.shape)) for p in model.parameters()) == 431946
    y = model(ndl.Tensor(np.random.randn(2, 3, 32, 32), dtype="float32"))
    assert y.shape == (2, 10)


@pytest.mark.parametrize("builder,shape", [(ResNet9, (4, 3, 32, 32)),
                                           (SmallResNet, (3, 1, 28, 28))])
@pytest.mark.parametrize("training", [True, False])
def test_model_matches_torch_logits_and_gradients(builder, shape, training):
    np.random.seed(0)
    model = builder()
    theirs = _to_torch(model)
    model.train() if training else model.eval()
    theirs.train(training)
    x = np.random.randn(*shape).astype("float32")
    y = np.array([1, 3, 0, 7][:shape[0]])
    tx = torch.tensor(x, requires_grad=True)
    tl = theirs(tx)
    torch.nn.functional.cross_entropy(tl, torch.tensor(y)).backward()
    X = ndl.Tensor(x)
    logits = model(X)
    np.testing.assert_allclose(logits.numpy(), tl.detach().numpy(), atol=2e-4, rtol=1e-4)
    nn.SoftmaxLoss()(logits, ndl.Tensor(y, dtype="float32")).backward(create_graph=False)
    np.testing.assert_allclose(X.grad.numpy(), tx.grad.numpy(), atol=1e-5, rtol=1e-3)
    for p, t in _param_pairs(model, theirs):
        np.testing.assert_allclose(p.grad.numpy().reshape(p.shape),
                                   _as_ours(p, t).reshape(p.shape), atol=1e-4, rtol=1e-3)


def test_small_resnet_accepts_flat_rows():
    np.random.seed(0)
    model = SmallResNet()
    model.eval()
    x = np.random.randn(2, 784).astype("float32")
    a = model(ndl.Tensor(x)).numpy()
    b = model(ndl.Tensor(x.reshape(2, 1, 28, 28))).numpy()
    np.testing.assert_allclose(a, b)


def _write_fake_cifar(folder, n_per_batch=8):
    """Tiny CIFAR-10 batches in the official pickle format (data uint8 (N, 3072), labels)."""
    import pickle

    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n_per_batch).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)


def test_hw4_cifar10_loops_on_tiny_files(tmp_path):
    import simple_ml

    _write_fake_cifar(tmp_path, n_per_batch=4)
    train = ndl.data.CIFAR10Dataset(str(tmp_path), train=True)
    loader = ndl.data.DataLoader(train, batch_size=10, shuffle=True)
    np.random.seed(0)
    model = ResNet9()
    acc, loss = simple_ml.train_cifar10(model, loader, n_epochs=2, lr=1e-3)
    assert 0 <= acc <= 1 and np.isfinite(loss) and loss > 0
    test = ndl.data.DataLoader(ndl.data.CIFAR10Dataset(str(tmp_path), train=False),
                               batch_size=5)
    acc2, loss2 = simple_ml.evaluate_cifar10(model, test)
    assert 0 <= acc2 <= 1 and np.isfinite(loss2)
    assert not model.training


def test_cli_trains_resnet9_on_cifar10_folder(tmp_path, capsys):
    from needle.train import cli

    data = tmp_path / "cifar"
    data.mkdir()
    _write_fake_cifar(data, n_per_batch=4)
    out = tmp_path / "run"
    rc = cli.main(["train", "--model", "resnet9", "--dataset", "cifar10", "--data-dir",
                   str(data), "--epochs", "1", "--batch-size", "10", "--out", str(out),
                   "--no-progress"])
    assert rc in (0, None)
    assert (out / "best.safetensors").exists()
    rc = cli.main(["train", "--model", "resnet9", "--dataset", "mnist-small", "--epochs", "1",
                   "--out", str(tmp_path / "bad"), "--no-progress"])
    assert rc == 2
    assert "resnet9: needs (3, 32, 32) images" in capsys.readouterr().err
