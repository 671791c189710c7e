"""The four training workloads of issue 12: needle models, their PyTorch twins, data, optimizers.

Used by bench_workloads.py (which sets the BLAS thread variables before NumPy is imported; do
the same when importing this module elsewhere). Each `Workload` builds a fresh needle model from
seed 0, its torch twin from that model's weights (needle's Linear weights are (in, out), torch's
(out, in); needle's conv weights are (K, K, C_in, C_out), torch's (C_out, C_in, K, K)), both
optimizers, and the k-th batch as NumPy arrays.
"""
import math

import numpy as np
import torch

import _common  # noqa: F401  (puts ./python on sys.path)

import needle as ndl
from needle import nn, ops
from needle.models import LanguageModel, MLPResNet


# ---- shared helpers ---------------------------------------------------------------------------
def _t(a) -> torch.Tensor:
    """A torch tensor holding a copy of a needle Tensor's (or NumPy array's) values."""
    a = a.numpy() if isinstance(a, ndl.Tensor) else a
    return torch.tensor(np.ascontiguousarray(a))


def _torch_linear(layer: nn.Linear) -> torch.nn.Linear:
    """torch.nn.Linear with the weights of a needle Linear (weight (in, out) -> (out, in))."""
    m = torch.nn.Linear(layer.in_features, layer.out_features)
    with torch.no_grad():
        m.weight.copy_(_t(layer.weight.numpy().T))
        m.bias.copy_(_t(layer.bias.numpy().reshape(-1)))
    return m


def _torch_norm(norm, cls):
    """A torch BatchNorm1d/2d or LayerNorm with a needle norm's weight and bias."""
    m = cls(norm.dim, eps=norm.eps)
    with torch.no_grad():
        m.weight.copy_(_t(norm.weight))
        m.bias.copy_(_t(norm.bias))
    return m


def _torch_embedding(emb: nn.Embedding) -> torch.nn.Embedding:
    m = torch.nn.Embedding(emb.num_embeddings, emb.embedding_dim)
    with torch.no_grad():
        m.weight.copy_(_t(emb.weight))
    return m


class _BatchOrder:
    """Index batches of a data set in shuffled epochs (seed 0), cycling when one epoch is short."""

    def __init__(self, n: int, batch: int):
        self.n, self.batch = n, batch
        self.rng = np.random.RandomState(0)
        self.order = np.empty(0, dtype=np.int64)

    def __getitem__(self, k: int) -> np.ndarray:
        end = (k + 1) * self.batch
        while len(self.order) < end:
            self.order = np.concatenate([self.order, self.rng.permutation(self.n)])
        return self.order[k * self.batch:end]


_DATA = {}


def fashion_mnist(data_dir):
    """(X float32 (N, 784) in [0, 1], y uint8 (N,)): Fashion-MNIST's training split, or the MNIST
    test split shipped with needle when Fashion-MNIST is not installed."""
    if "mnist" not in _DATA:
        try:
            paths = ndl.data.find_fashion_mnist(data_dir)
            X, y = ndl.data.parse_mnist(paths["train_images"], paths["train_labels"])
            print(f"data: Fashion-MNIST training split, {len(X)} images")
        except FileNotFoundError as e:
            X, y = ndl.data.parse_mnist(*ndl.data.shipped_mnist_test())
            print(f"note: {e}\nnote: using the MNIST test split shipped with needle instead "
                  f"({len(X)} images, same shapes; batches cycle through reshuffled epochs)")
        _DATA["mnist"] = (X, y)
    return _DATA["mnist"]


# ---- the workloads ----------------------------------------------------------------------------
class Workload:
    """One training workload: models for both frameworks, their optimizers, batches, losses.

    Subclasses set name, unit, items (samples or tokens per step), steps (default timed steps)
    and warmup (untimed steps per run), and write the methods below.
    """

    name = unit = ""
    items = steps = warmup = 0

    def __init__(self, args):
        self.args = args

    def needle_model(self, check: bool = False):
        """A fresh needle model from seed 0 (`check`: dropout off, for the loss check)."""
        raise NotImplementedError

    def torch_model(self, model):
        """The PyTorch twin holding `model`'s current weights."""
        raise NotImplementedError

    def needle_optimizer(self, model):
        raise NotImplementedError

    def torch_optimizer(self, model):
        raise NotImplementedError

    def batch(self, k: int):
        """The k-th batch as NumPy arrays (inputs, targets), in the dtypes needle is fed."""
        raise NotImplementedError

    def needle_loss(self, model, x, y):
        return nn.SoftmaxLoss()(model(x), y)

    def torch_loss(self, model, x, y):
        return torch.nn.functional.cross_entropy(model(x), y)

    def torch_inputs(self, x, y):
        return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))


class MLPWorkload(Workload):
    name, unit, items, steps, warmup = "mlp", "samples/s", 128, 463, 5  # 468 steps = one epoch

    def __init__(self, args):
        super().__init__(args)
        self.X, self.y = fashion_mnist(args.data_dir)
        self.order = _BatchOrder(len(self.X), self.items)

    def needle_model(self, check=False):
        np.random.seed(0)
        return MLPResNet(784, 100, num_blocks=3, norm=nn.BatchNorm1d,
                         drop_prob=0.0 if check else 0.1)

    def torch_model(self, model):
        t = torch.nn

        class Block(t.Module):
            def __init__(self, block):
                super().__init__()
                lin1, bn1, _, drop, lin2, bn2 = block.modules[0].fn.modules
                self.f = t.Sequential(_torch_linear(lin1), _torch_norm(bn1, t.BatchNorm1d),
                                      t.ReLU(), t.Dropout(drop.p), _torch_linear(lin2),
                                      _torch_norm(bn2, t.BatchNorm1d))

            def forward(self, x):
                return torch.relu(self.f(x) + x)

        mods = model.modules
        return t.Sequential(_torch_linear(mods[0]), t.ReLU(), *[Block(b) for b in mods[2:-1]],
                            _torch_linear(mods[-1]))

    def needle_optimizer(self, model):
        return ndl.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-3)

    def torch_optimizer(self, model):
        return torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-3)

    def batch(self, k):
        idx = self.order[k]
        return self.X[idx], self.y[idx]


class _NeedleConvBN(nn.Module):
    """3x3 conv with bias and padding 1 (NCHW), BatchNorm2d, ReLU."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv = nn.Conv(cin, cout, 3, stride=stride, bias=True, padding=1)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class NeedleSmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = _NeedleConvBN(1, 16)
        self.c2 = _NeedleConvBN(16, 32, stride=2)
        self.r1 = _NeedleConvBN(32, 32)
        self.r2 = _NeedleConvBN(32, 32)
        self.c3 = _NeedleConvBN(32, 64, stride=2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):  # (B, 1, 28, 28)
        x = self.c2(self.c1(x))  # (B, 32, 14, 14)
        x = x + self.r2(self.r1(x))
        x = self.c3(x)  # (B, 64, 7, 7)
        h, w = x.shape[2], x.shape[3]
        return self.fc(x.sum(axes=(2, 3)) / (h * w))  # (B, 10)


def _torch_conv_bn(block: _NeedleConvBN):
    conv = block.conv
    m = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                        conv.padding)
    with torch.no_grad():
        # needle weight (K, K, C_in, C_out) -> torch (C_out, C_in, K, K)
        m.weight.copy_(_t(conv.weight.numpy().transpose(3, 2, 0, 1)))
        m.bias.copy_(_t(conv.bias))
    return torch.nn.Sequential(m, _torch_norm(block.bn, torch.nn.BatchNorm2d), torch.nn.ReLU())


class TorchSmallCNN(torch.nn.Module):
    def __init__(self, model: NeedleSmallCNN):
        super().__init__()
        self.c1, self.c2 = _torch_conv_bn(model.c1), _torch_conv_bn(model.c2)
        self.r1, self.r2 = _torch_conv_bn(model.r1), _torch_conv_bn(model.r2)
        self.c3, self.fc = _torch_conv_bn(model.c3), _torch_linear(model.fc)

    def forward(self, x):
        x = self.c2(self.c1(x))
        x = x + self.r2(self.r1(x))
        return self.fc(self.c3(x).mean(dim=(2, 3)))


class CNNWorkload(Workload):
    name, unit, items, steps, warmup = "cnn", "samples/s", 64, 40, 3

    def __init__(self, args):
        super().__init__(args)
        self.X, self.y = fashion_mnist(args.data_dir)
        self.order = _BatchOrder(len(self.X), self.items)

    def needle_model(self, check=False):
        np.random.seed(0)
        return NeedleSmallCNN()

    def torch_model(self, model):
        return TorchSmallCNN(model)

    def needle_optimizer(self, model):
        return ndl.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def torch_optimizer(self, model):
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, dampening=0.9)

    def batch(self, k):
        idx = self.order[k]
        return self.X[idx].reshape(-1, 1, 28, 28), self.y[idx]


class _TokenWorkload(Workload):
    """Random token ids (seed 0): inputs float32 (as the course feeds ids), targets float32."""

    vocab = 10000
    batch_first = False
    T = B = 0

    def batch(self, k):
        rng = np.random.default_rng(k)
        shape = (self.B, self.T) if self.batch_first else (self.T, self.B)
        ids = rng.integers(0, self.vocab, shape).astype(np.float32)
        targets = rng.integers(0, self.vocab, self.T * self.B).astype(np.float32)
        return ids, targets

    def torch_inputs(self, x, y):
        return torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64))


class TorchLSTMLM(torch.nn.Module):
    def __init__(self, model: LanguageModel):
        super().__init__()
        lstm = model.seq_model
        self.emb = _torch_embedding(model.embedding)
        self.rnn = torch.nn.LSTM(lstm.input_size, lstm.hidden_size, lstm.num_layers)
        with torch.no_grad():
            for k, cell in enumerate(lstm.lstm_cells):  # needle (in, 4H) -> torch (4H, in)
                getattr(self.rnn, f"weight_ih_l{k}").copy_(_t(cell.W_ih.numpy().T))
                getattr(self.rnn, f"weight_hh_l{k}").copy_(_t(cell.W_hh.numpy().T))
                getattr(self.rnn, f"bias_ih_l{k}").copy_(_t(cell.bias_ih))
                getattr(self.rnn, f"bias_hh_l{k}").copy_(_t(cell.bias_hh))
        self.lin = _torch_linear(model.linear)

    def forward(self, x):  # (T, B) ids -> (T*B, V)
        out, _ = self.rnn(self.emb(x))  # zero initial state
        return self.lin(out.reshape(-1, out.shape[-1]))


class LSTMWorkload(_TokenWorkload):
    name, unit, steps, warmup = "lstm", "tokens/s", 12, 2
    T, B = 35, 32
    items = T * B

    def needle_model(self, check=False):
        np.random.seed(0)
        return LanguageModel(256, self.vocab, 256, num_layers=2, seq_model="lstm",
                             seq_len=self.T)

    def torch_model(self, model):
        return TorchLSTMLM(model)

    def needle_loss(self, model, x, y):
        logits, _ = model(x)  # h=None: zero initial state every step
        return nn.SoftmaxLoss()(logits, y)

    def needle_optimizer(self, model):
        return ndl.optim.SGD(model.parameters(), lr=1.0)

    def torch_optimizer(self, model):
        return torch.optim.SGD(model.parameters(), lr=1.0)


def _causal_mask(T: int) -> np.ndarray:
    """(T, T) additive mask: 0 where key <= query, -1e9 above the diagonal."""
    return np.triu(np.full((T, T), -1e9, dtype=np.float32), k=1)


class NeedleBlock(nn.Module):
    """Pre-LayerNorm block: x + attention(LN(x)), then x + MLP(LN(x)); (B, T, d) -> (B, T, d)."""

    def __init__(self, d, heads, ff):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm1d(d), nn.LayerNorm1d(d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.proj = nn.Linear(d, d)
        self.ff1, self.ff2 = nn.Linear(d, ff), nn.Linear(ff, d)

    def forward(self, x, mask):
        B, T, d = x.shape
        H = self.heads
        h = self.ln1(x)

        def heads(t):  # (B, T, d) -> (B, H, T, d/H)
            return ops.permute(ops.reshape(t, (B, T, H, d // H)), (0, 2, 1, 3))

        q, k, v = heads(self.q(h)), heads(self.k(h)), heads(self.v(h))
        scores = ops.matmul(q, ops.permute(k, (0, 1, 3, 2))) * (1.0 / math.sqrt(d // H))
        att = ops.matmul(ops.softmax(scores + mask, axes=-1), v)  # (B, H, T, d/H)
        att = ops.reshape(ops.permute(att, (0, 2, 1, 3)), (B, T, d))
        x = x + self.proj(att)
        return x + self.ff2(ops.relu(self.ff1(self.ln2(x))))


class NeedleTransformerLM(nn.Module):
    """ids (B, T) -> logits (B*T, V)."""

    def __init__(self, vocab, d, heads, ff, layers, T):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(T, d)
        self.blocks = [NeedleBlock(d, heads, ff) for _ in range(layers)]
        self.ln, self.head = nn.LayerNorm1d(d), nn.Linear(d, vocab)
        self.mask = ndl.Tensor(_causal_mask(T), requires_grad=False)
        self.positions = ndl.Tensor(np.arange(T, dtype=np.float32)[None, :],
                                    requires_grad=False)

    def forward(self, ids):
        B, T = ids.shape
        x = self.tok(ids) + self.pos(self.positions)  # (B, T, d) + (1, T, d)
        for block in self.blocks:
            x = block(x, self.mask)
        x = self.ln(x)
        return self.head(ops.reshape(x, (B * T, x.shape[2])))


class TorchBlock(torch.nn.Module):
    def __init__(self, block: NeedleBlock):
        super().__init__()
        self.heads = block.heads
        ln = torch.nn.LayerNorm
        self.ln1, self.ln2 = _torch_norm(block.ln1, ln), _torch_norm(block.ln2, ln)
        self.q, self.k, self.v = (_torch_linear(block.q), _torch_linear(block.k),
                                  _torch_linear(block.v))
        self.proj = _torch_linear(block.proj)
        self.ff1, self.ff2 = _torch_linear(block.ff1), _torch_linear(block.ff2)

    def forward(self, x, mask):
        B, T, d = x.shape
        H = self.heads
        h = self.ln1(x)

        def heads(t):
            return t.reshape(B, T, H, d // H).permute(0, 2, 1, 3)

        q, k, v = heads(self.q(h)), heads(self.k(h)), heads(self.v(h))
        scores = (q @ k.permute(0, 1, 3, 2)) * (1.0 / math.sqrt(d // H))
        att = torch.softmax(scores + mask, dim=-1) @ v
        att = att.permute(0, 2, 1, 3).reshape(B, T, d)
        x = x + self.proj(att)
        return x + self.ff2(torch.relu(self.ff1(self.ln2(x))))


class TorchTransformerLM(torch.nn.Module):
    def __init__(self, model: NeedleTransformerLM):
        super().__init__()
        self.tok, self.pos = _torch_embedding(model.tok), _torch_embedding(model.pos)
        self.blocks = torch.nn.ModuleList(TorchBlock(b) for b in model.blocks)
        self.ln = _torch_norm(model.ln, torch.nn.LayerNorm)
        self.head = _torch_linear(model.head)
        self.register_buffer("mask", _t(model.mask))
        self.register_buffer("positions", torch.arange(model.mask.shape[0])[None, :])

    def forward(self, ids):
        B, T = ids.shape
        x = self.tok(ids) + self.pos(self.positions)
        for block in self.blocks:
            x = block(x, self.mask)
        return self.head(self.ln(x).reshape(B * T, -1))


class TransformerWorkload(_TokenWorkload):
    name, unit, steps, warmup = "transformer", "tokens/s", 10, 2
    T, B = 128, 16
    items = T * B
    batch_first = True

    def needle_model(self, check=False):
        np.random.seed(0)
        return NeedleTransformerLM(self.vocab, 256, 4, 1024, 2, self.T)

    def torch_model(self, model):
        return TorchTransformerLM(model)

    def needle_optimizer(self, model):
        return ndl.optim.Adam(model.parameters(), lr=1e-3)

    def torch_optimizer(self, model):
        return torch.optim.Adam(model.parameters(), lr=1e-3)


WORKLOADS = {w.name: w for w in (MLPWorkload, CNNWorkload, LSTMWorkload, TransformerWorkload)}
