"""DLPack exchange with NumPy and PyTorch, and PyTorch state dicts in and out of needle.

Every layer is checked by building the same architecture in both frameworks, moving the
weights across (both ways) and comparing the forward outputs."""
import numpy as np
import pytest

import needle as ndl
import needle.nn as nn
from needle.interop import (
    DLPackError, StateDictError, load_torch_state_dict, torch_state_dict,
)

torch = pytest.importorskip("torch")


# ---- DLPack ----------------------------------------------------------------------------
def test_torch_sees_needle_memory_and_writes_through():
    x = ndl.Tensor(np.arange(12, dtype="float32").reshape(3, 4))
    t = torch.from_dlpack(x)
    assert tuple(t.shape) == x.shape and t.dtype == torch.float32
    t[1, 2] = -5.0
    assert x.numpy()[1, 2] == -5.0
    x.realize_cached_data()[0, 0] = 42.0
    assert t[0, 0].item() == 42.0


def test_needle_sees_torch_memory_and_writes_through():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    x = ndl.from_dlpack(t)
    assert x.shape == (3, 4) and not x.requires_grad
    x.realize_cached_data()[2, 3] = 7.5
    assert t[2, 3].item() == 7.5
    t[0, 1] = -1.0
    assert x.numpy()[0, 1] == -1.0


def test_views_and_strides_survive_both_ways():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    view = base.t()[1:5:2]  # non-contiguous, offset, strided
    x = ndl.from_dlpack(view)
    np.testing.assert_array_equal(x.numpy(), view.numpy())
    assert x.realize_cached_data().strides == tuple(view.stride())
    x.realize_cached_data()[0, 0] = 100.0
    assert view[0, 0].item() == 100.0 and base[0, 1].item() == 100.0
    # a needle view goes to torch with its strides
    y = ndl.Tensor(np.arange(24, dtype="float32").reshape(4, 6))
    yv = y.transpose()
    t = torch.from_dlpack(yv)
    np.testing.assert_array_equal(t.numpy(), yv.numpy())
    assert tuple(t.stride()) == yv.realize_cached_data().strides
    t[0, 1] = -3.0
    assert y.numpy()[1, 0] == -3.0


def test_numpy_round_trip_shares_memory():
    a = np.arange(6, dtype=np.float64).reshape(2, 3)
    x = ndl.from_dlpack(a)
    assert x.dtype == np.float64
    b = np.from_dlpack(x)
    assert np.shares_memory(a, b)
    b[1, 1] = 9.0
    assert a[1, 1] == 9.0 and x.numpy()[1, 1] == 9.0
    i = ndl.from_dlpack(torch.tensor([1, 2, 3], dtype=torch.int64))
    np.testing.assert_array_equal(i.numpy(), [1, 2, 3])


def test_dlpack_errors_are_clear():
    with pytest.raises(DLPackError, match="list does not implement the DLPack"):
        ndl.from_dlpack([1.0, 2.0])
    with pytest.raises(DLPackError, match="complex"):
        ndl.from_dlpack(torch.zeros(2, dtype=torch.complex64))
    with pytest.raises(DLPackError, match="dtype"):
        ndl.from_dlpack(torch.zeros(2, dtype=torch.bfloat16))


@pytest.mark.cuda
@pytest.mark.skipif(not ndl.cuda().enabled(), reason="needs CuPy and a CUDA GPU")
def test_cupy_and_torch_cuda_share_memory_with_cuda_tensors():
    cp = pytest.importorskip("cupy")
    x = ndl.Tensor(np.arange(6, dtype="float32").reshape(2, 3), device=ndl.cuda())
    c = cp.from_dlpack(x)
    c[1, 1] = -2.0
    assert x.numpy()[1, 1] == -2.0
    y = ndl.from_dlpack(cp.arange(8, dtype=cp.float32).reshape(2, 4)[:, 1:3])
    assert y.device == ndl.cuda()
    np.testing.assert_array_equal(y.numpy(), np.arange(8).reshape(2, 4)[:, 1:3])
    if torch.cuda.is_available():
        t = torch.from_dlpack(x)
        t[0, 0] = 5.0
        assert x.numpy()[0, 0] == 5.0


def test_cuda_objects_without_cuda_are_a_clear_error():
    if ndl.cuda().enabled():
        pytest.skip("checks the behaviour without a GPU")

    class FakeCuda:
        def __dlpack__(self, **kw):
            raise AssertionError("not reached")

        def __dlpack_device__(self):
            return (2, 0)

    with pytest.raises(DLPackError, match=r"CUDA device 0.*cuda\(\) is not available"):
        ndl.from_dlpack(FakeCuda())


def test_tensors_from_dlpack_train_like_any_tensor():
    t = torch.randn(3, 2)
    w = ndl.from_dlpack(t, requires_grad=True)
    (w * w).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), 2 * t.numpy(), rtol=1e-6)


# ---- state dicts ---------------------------------------------------------------------------
def _fill_torch(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for name, b in module.named_buffers():
            if "running_var" in name:
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
            elif "running_mean" in name:
                b.copy_(torch.randn(b.shape, generator=g))
    return module


def _compare(mine, ref, x_np, pick=lambda out: out, atol=1e-5, eval_mode=True, **kw):
    """Load ref's weights into mine, compare; then send mine's back into a fresh ref."""
    if eval_mode:
        mine.eval(), ref.eval()
    load_torch_state_dict(mine, ref.state_dict(), **kw)
    with torch.no_grad():
        want = pick(ref(torch.tensor(x_np))).numpy()
    got = pick(mine(ndl.Tensor(x_np))).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol)
    # and back: needle's weights into a re-initialised torch model
    _fill_torch(ref, seed=123)
    ref.load_state_dict(torch_state_dict(mine, as_torch=True), strict=True)
    with torch.no_grad():
        np.testing.assert_allclose(pick(ref(torch.tensor(x_np))).numpy(), got, rtol=1e-5,
                                   atol=atol)


def _x(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def test_linear_and_sequential():
    mine = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3, bias=False))
    ref = _fill_torch(torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(),
                                          torch.nn.Linear(6, 3, bias=False)))
    _compare(mine, ref, _x(5, 4))
    assert mine.modules[0].weight.shape == (4, 6)  # needle keeps (in, out)


def test_conv2d():
    mine = nn.Sequential(nn.Conv(3, 4, 3, stride=1), nn.ReLU(), nn.Conv(4, 2, 3, stride=2))
    ref = _fill_torch(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                          torch.nn.Conv2d(4, 2, 3, stride=2, padding=1)))
    _compare(mine, ref, _x(2, 3, 8, 8))


def test_conv_transpose2d():
    mine = nn.ConvTranspose(3, 2, 3, stride=2, padding=1, output_padding=1)
    ref = _fill_torch(torch.nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1,
                                               output_padding=1))
    _compare(mine, ref, _x(2, 3, 5, 5))


@pytest.mark.parametrize("training", [False, True])
def test_batchnorm_with_running_stats(training):
    mine = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5))
    ref = _fill_torch(torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.BatchNorm1d(5)))
    _compare(mine, ref, _x(8, 4), eval_mode=not training)
    conv = nn.Sequential(nn.Conv(2, 3, 3), nn.BatchNorm2d(3))
    tconv = _fill_torch(torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1),
                                            torch.nn.BatchNorm2d(3)))
    _compare(conv, tconv, _x(2, 2, 6, 6))
    np.testing.assert_allclose(conv.modules[1].running_var.numpy(),
                               tconv[1].running_var.numpy(), rtol=1e-6)
    assert "1.num_batches_tracked" in torch_state_dict(conv)


def test_layernorm_and_embedding():
    class Mine(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 6)
            self.norm = nn.LayerNorm1d(6)

        def forward(self, ids):
            return self.norm(self.emb(ids))

    class Ref(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 6)
            self.norm = torch.nn.LayerNorm(6)

        def forward(self, ids):
            return self.norm(self.emb(ids.long()))

    ids = np.random.default_rng(0).integers(0, 10, (4, 3)).astype("float32")
    _compare(Mine(), _fill_torch(Ref()), ids)


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("bias", [True, False])
def test_recurrent_layers(kind, bias):
    mine = getattr(nn, kind)(4, 5, num_layers=2, bias=bias)
    ref = _fill_torch(getattr(torch.nn, kind)(4, 5, num_layers=2, bias=bias))
    _compare(mine, ref, _x(6, 3, 4), pick=lambda out: out[0])
    keys = set(torch_state_dict(mine))
    assert keys == set(ref.state_dict())


def test_multihead_attention():
    mine = nn.MultiheadAttention(8, 2)
    ref = _fill_torch(torch.nn.MultiheadAttention(8, 2))
    x = _x(5, 3, 8)

    class Self(torch.nn.Module):  # q = k = v, as the layers use it
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x, x, x)[0]

    class SelfN(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x, x, x)[0]

    _compare(SelfN(mine), Self(ref), x)


def test_safetensors_written_by_torch(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    ref = _fill_torch(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(),
                                          torch.nn.Linear(4, 2)))
    path = str(tmp_path / "ref.safetensors")
    st.save_file(ref.state_dict(), path)
    mine = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    load_torch_state_dict(mine, path)
    x = _x(5, 3)
    with torch.no_grad():
        want = ref(torch.tensor(x)).numpy()
    np.testing.assert_allclose(mine(ndl.Tensor(x)).numpy(), want, rtol=1e-5, atol=1e-6)


def test_rename_maps_other_module_names():
    class Ref(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x)

    ref = _fill_torch(Ref())
    mine = nn.Sequential(nn.Linear(3, 2))
    load_torch_state_dict(mine, ref.state_dict(), rename=lambda k: k.replace("fc.", "0."))
    x = _x(4, 3)
    with torch.no_grad():
        np.testing.assert_allclose(mine(ndl.Tensor(x)).numpy(), ref(torch.tensor(x)).numpy(),
                                   rtol=1e-5, atol=1e-6)


def test_errors_name_keys_and_shapes(tmp_path):
    mine = nn.Sequential(nn.Linear(3, 4))
    with pytest.raises(StateDictError, match=r"0\.weight has shape \(5, 3\).*0\.weight is "
                                             r"\(3, 4\)"):
        load_torch_state_dict(mine, torch.nn.Sequential(torch.nn.Linear(3, 5)).state_dict())
    sd = torch.nn.Sequential(torch.nn.Linear(3, 4)).state_dict()
    sd["extra.weight"] = torch.zeros(2, 2)
    with pytest.raises(StateDictError, match=r"extra\.weight \(shape \(2, 2\)\)"):
        load_torch_state_dict(mine, sd)
    del sd["extra.weight"], sd["0.bias"]
    with pytest.raises(StateDictError, match=r"missing \['0\.bias \(needle modules\.0\.bias, "
                                             r"shape \(1, 4\)\)'\]"):
        load_torch_state_dict(mine, sd)
    before = mine.modules[0].weight.numpy().copy()
    load_torch_state_dict(mine, sd, strict=False)  # what fits is loaded
    assert not np.array_equal(before, mine.modules[0].weight.numpy())
    with pytest.raises(StateDictError, match="no such file"):
        load_torch_state_dict(mine, str(tmp_path / "none.safetensors"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(StateDictError, match="bad.safetensors"):
        load_torch_state_dict(mine, str(bad))
