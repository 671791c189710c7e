"""PyTorch habits on needle's Tensor and Module, each checked against PyTorch on the same
inputs; the places where the course's API wins are checked too."""
import numpy as np
import pytest

import needle as ndl
import needle.nn as nn
from needle.tensor_api import TensorValueError

torch = pytest.importorskip("torch")


def _pair(shape=(3, 4), seed=0):
    a = np.random.default_rng(seed).standard_normal(shape).astype("float32")
    return ndl.Tensor(a), torch.tensor(a)


def test_scalar_conversions_match_torch():
    for v in (2.5, -3.75, 0.0):
        x, t = ndl.Tensor([[v]]), torch.tensor([[v]])
        assert float(x) == float(t) and int(x) == int(t) and bool(x) == bool(t)
    i = ndl.Tensor(np.array([3], dtype=np.int64))
    assert [10, 20, 30, 40][i] == [10, 20, 30, 40][torch.tensor([3])]


def test_scalar_conversion_of_many_elements_is_a_clear_error():
    x, t = _pair((2, 3))
    with pytest.raises(ValueError):  # torch's error kind; needle's is a ValueError too
        float(t)
    with pytest.raises(TensorValueError, match=r"6 elements .*\(2, 3\)"):
        float(x)
    with pytest.raises(TensorValueError):
        bool(x)


def test_comparisons_return_tensors_of_masks():
    x, t = _pair()
    y, u = _pair(seed=1)
    for mine, ref in [(x > y, t > u), (x >= 0.1, t >= 0.1), (x < y, t < u), (x <= y, t <= u),
                      (x.eq(y), t.eq(u)), (x.ne(0.0), t.ne(0.0)), (x.gt(y), t.gt(u)),
                      (x.lt(0.0), t.lt(0.0)), (x.ge(y), t.ge(u)), (x.le(y), t.le(u))]:
        assert isinstance(mine, ndl.Tensor)
        # the course's NDArray comparisons give 0/1 of the input dtype; torch gives bool
        np.testing.assert_array_equal(mine.numpy(), ref.numpy().astype("float32"))
    assert (x == x) is True and (x == y) is False  # course: identity semantics for ==


@pytest.mark.parametrize("dim", [None, 0, 1, -1])
@pytest.mark.parametrize("keepdim", [False, True])
def test_argmax_argmin(dim, keepdim):
    x, t = _pair((4, 5))
    for name in ("argmax", "argmin"):
        mine = getattr(x, name)(dim=dim, keepdim=keepdim)
        ref = getattr(t, name)(dim=dim, keepdim=keepdim)
        assert mine.shape == tuple(ref.shape)
        np.testing.assert_array_equal(mine.numpy(), ref.numpy())


def test_shape_helpers_match_torch():
    x, t = _pair((2, 1, 3, 1))
    for mine, ref in [(x.squeeze(), t.squeeze()), (x.squeeze(1), t.squeeze(1)),
                      (x.squeeze(0), t.squeeze(0)), (x.squeeze(-1), t.squeeze(-1)),
                      (x.unsqueeze(0), t.unsqueeze(0)), (x.unsqueeze(-1), t.unsqueeze(-1)),
                      (x.unsqueeze(2), t.unsqueeze(2)), (x.view(3, 2), t.view(3, 2)),
                      (x.view((6,)), t.view((6,))), (x.view(-1, 3), t.view(-1, 3)),
                      (x.flatten(), t.flatten()), (x.flatten(1), t.flatten(1)),
                      (x.flatten(1, 2), t.flatten(1, 2)), (x.flatten(0, -2), t.flatten(0, -2))]:
        assert mine.shape == tuple(ref.shape)
        np.testing.assert_array_equal(mine.numpy(), ref.numpy())
    assert x.numel() == t.numel() and x.dim() == t.dim()
    assert x.tolist() == t.tolist()
    assert ndl.Tensor(np.float32(1.5)).tolist() == torch.tensor(1.5).tolist()


def test_view_is_differentiable_and_clone_copies():
    x, t = _pair((2, 3))
    t.requires_grad_(True)
    (x.view(3, 2) * ndl.Tensor(np.arange(6.0, dtype="float32").reshape(3, 2))).sum().backward()
    (t.view(3, 2) * torch.arange(6.0).reshape(3, 2)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy())
    c = x.clone()
    np.testing.assert_array_equal(c.numpy(), x.numpy())
    other = x.clone()
    other.realize_cached_data()[0, 0] = 100.0  # its own storage: x is untouched
    assert x.numpy()[0, 0] != 100.0
    (c * c).sum().backward()
    tc = t.clone()
    t.grad = None
    (tc * tc).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-6)


@pytest.mark.parametrize("dim", [0, 1, (0, 1), None])
@pytest.mark.parametrize("keepdim", [False, True])
def test_reductions_take_dim_and_keepdim(dim, keepdim):
    x, t = _pair((3, 4))
    for name in ("sum", "mean"):
        mine = getattr(x, name)(dim=dim, keepdim=keepdim)
        ref = getattr(t, name)(dim=dim, keepdim=keepdim) if dim is not None else (
            getattr(t, name)().reshape((1, 1) if keepdim else ()))
        assert mine.shape == tuple(ref.shape)
        np.testing.assert_allclose(mine.numpy(), ref.numpy(), rtol=1e-6, atol=1e-6)
    if isinstance(dim, int):
        mine = x.max(dim=dim, keepdim=keepdim)
        ref = t.max(dim=dim, keepdim=keepdim).values
        np.testing.assert_array_equal(mine.numpy(), ref.numpy())
    # the course's axes= spelling still works and means the same
    np.testing.assert_allclose(x.sum(axes=(1,)).numpy(), t.sum(dim=1).numpy(), rtol=1e-6)
    with pytest.raises(TypeError, match="axes= or dim="):
        x.sum(axes=0, dim=0)


def test_tensor_repr_shows_shape_dtype_device_and_grad():
    x = ndl.Tensor(np.zeros((2, 3), dtype="float32"))
    r = repr(x)
    assert "shape=(2, 3)" in r and "dtype=float32" in r and "device=cpu()" in r
    assert "requires_grad=True" in r
    assert "requires_grad=False" in repr(x.detach())


def _models():
    rng = np.random.default_rng(0)
    mine = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Sequential(nn.Linear(5, 3), nn.Tanh()))
    ref = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(),
                              torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Tanh()))
    x = rng.standard_normal((2, 4)).astype("float32")
    return mine, ref, x


def test_module_traversal_and_apply_match_torch():
    mine, ref, _ = _models()
    mine_names = [type(m).__name__ for m in mine.modules_list()]
    ref_names = [type(m).__name__ for m in ref.modules()]
    assert mine_names == ref_names
    # the course's Sequential keeps its layers in `modules`, so its names carry that prefix
    assert [n for n, _ in mine.named_modules()] == [
        "modules." + n.replace(".", ".modules.") if n else n for n, _ in ref.named_modules()]
    seen_mine, seen_ref = [], []
    mine.apply(lambda m: seen_mine.append(type(m).__name__))
    ref.apply(lambda m: seen_ref.append(type(m).__name__))
    assert seen_mine == seen_ref  # children first, then the module itself
    lin = nn.Linear(2, 3)
    assert lin.modules() == [lin]  # PyTorch's method on any non-Sequential module


def test_zero_grad_clears_gradients():
    mine, ref, x = _models()
    mine(ndl.Tensor(x)).sum().backward()
    assert all(p.grad is not None for p in mine.parameters())
    mine.zero_grad()
    ref(torch.tensor(x)).sum().backward()
    ref.zero_grad()
    assert all(p.grad is None for p in mine.parameters())
    assert all(p.grad is None for p in ref.parameters())


def test_module_repr_is_a_tree_with_parameter_counts():
    mine, ref, _ = _models()
    text = repr(mine)
    total = sum(p.numel() for p in ref.parameters())
    assert f"{total:,} parameters" in text.splitlines()[0]
    assert "Linear(in_features=4, out_features=5)  # 25 parameters" in text
    assert text.count("\n") == str(ref).count("\n")  # one line per module, as PyTorch prints


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_loss_matches_torch(reduction, smoothing):
    rng = np.random.default_rng(1)
    z = rng.standard_normal((6, 5)).astype("float32")
    y = rng.integers(0, 5, 6)
    mine = ndl.Tensor(z)
    loss = nn.CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing)(
        mine, ndl.Tensor(y.astype("float32")))
    tz = torch.tensor(z, requires_grad=True)
    ref = torch.nn.CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing)(
        tz, torch.tensor(y))
    np.testing.assert_allclose(loss.numpy(), ref.detach().numpy(), rtol=1e-5, atol=1e-6)
    loss.sum().backward()
    ref.sum().backward()
    np.testing.assert_allclose(mine.grad.numpy(), tz.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_cross_entropy_loss_with_probabilities_and_bad_input():
    rng = np.random.default_rng(2)
    z = rng.standard_normal((4, 3)).astype("float32")
    p = rng.dirichlet(np.ones(3), 4).astype("float32")
    loss = nn.CrossEntropyLoss()(ndl.Tensor(z), ndl.Tensor(p))
    ref = torch.nn.CrossEntropyLoss()(torch.tensor(z), torch.tensor(p))
    np.testing.assert_allclose(loss.numpy(), ref.numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        nn.CrossEntropyLoss(reduction="avg")
    with pytest.raises(ValueError, match=r"target of shape \(5,\)"):
        nn.CrossEntropyLoss()(ndl.Tensor(z), ndl.Tensor(np.zeros(5, dtype="float32")))


def test_save_and_load_state_dicts(tmp_path):
    mine, _, x = _models()
    path = str(tmp_path / "w.safetensors")
    ndl.save({"model": mine.state_dict(), "epoch": 3, "note": "best", "t": ndl.Tensor(x)},
             path)
    back = ndl.load(path)
    assert back["epoch"] == 3 and back["note"] == "best"
    np.testing.assert_array_equal(back["t"], x)
    fresh, _, _ = _models()
    fresh.load_state_dict(back["model"])
    np.testing.assert_array_equal(fresh(ndl.Tensor(x)).numpy(), mine(ndl.Tensor(x)).numpy())
    # a file torch wrote through safetensors reads back with the same values
    st = pytest.importorskip("safetensors.torch")
    tpath = str(tmp_path / "t.safetensors")
    st.save_file({"w": torch.arange(6.0).reshape(2, 3)}, tpath)
    np.testing.assert_array_equal(ndl.load(tpath)["w"], np.arange(6.0).reshape(2, 3))


def test_save_refuses_what_it_cannot_store(tmp_path):
    mine, _, _ = _models()
    with pytest.raises(ValueError, match="state_dict"):
        ndl.save(mine, str(tmp_path / "m.safetensors"))
    with pytest.raises(ValueError, match="object"):
        ndl.save({"x": object()}, str(tmp_path / "o.safetensors"))
    with pytest.raises(ValueError, match="cannot read"):
        ndl.load(str(tmp_path / "missing.safetensors"))
