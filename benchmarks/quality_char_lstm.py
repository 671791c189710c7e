"""Quality check: char-level 2-layer LSTM (hidden 256) on the shipped tiny Shakespeare, needle vs
PyTorch from identical initial weights, identical data order and hyperparameters (Adam 2e-3,
clip 1.0, B=32, bptt 64, hidden state carried and detached). Prints both validation-loss
curves (nats/char) and a needle sample.
Run: python benchmarks/quality_char_lstm.py [steps] [threads]
"""
import os
import sys

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 200
THREADS = int(sys.argv[2]) if len(sys.argv) > 2 else 1
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(THREADS)

import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import _common  # noqa: E402,F401  (puts ./python on sys.path)
import needle as ndl  # noqa: E402
from needle.data import Corpus, batchify, get_batch  # noqa: E402
from needle.models.language import LanguageModel, detach_state, generate  # noqa: E402

torch.set_num_threads(THREADS)
E, H, L, B, BPTT, LR, CLIP, EVAL_EVERY, EVAL_WINDOWS = 64, 256, 2, 32, 64, 2e-3, 1.0, 50, 20


class TorchLM(torch.nn.Module):
    def __init__(self, V):
        super().__init__()
        self.emb, self.rnn = torch.nn.Embedding(V, E), torch.nn.LSTM(E, H, L)
        self.lin = torch.nn.Linear(H, V)

    def forward(self, x, h=None):
        out, h = self.rnn(self.emb(x), h)
        return self.lin(out.reshape(-1, H)), h


def copy_weights(ours, theirs):
    theirs.emb.weight.data = torch.tensor(ours.embedding.weight.numpy())
    for k, cell in enumerate(ours.seq_model.lstm_cells):
        getattr(theirs.rnn, f"weight_ih_l{k}").data = torch.tensor(cell.W_ih.numpy().T.copy())
        getattr(theirs.rnn, f"weight_hh_l{k}").data = torch.tensor(cell.W_hh.numpy().T.copy())
        getattr(theirs.rnn, f"bias_ih_l{k}").data = torch.tensor(cell.bias_ih.numpy())
        getattr(theirs.rnn, f"bias_hh_l{k}").data = torch.tensor(cell.bias_hh.numpy())
    theirs.lin.weight.data = torch.tensor(ours.linear.weight.numpy().T.copy())
    theirs.lin.bias.data = torch.tensor(ours.linear.bias.numpy().reshape(-1))


def val_loss_needle(model, valid):
    h, total = None, 0.0
    with ndl.no_grad():
        for w in range(EVAL_WINDOWS):
            X, y = get_batch(valid, w * BPTT, BPTT)
            logits, h = model(X, h)
            total += float(ndl.nn.SoftmaxLoss()(logits, y).numpy())
    return total / EVAL_WINDOWS


def val_loss_torch(model, valid):
    h, total = None, 0.0
    with torch.no_grad():
        for w in range(EVAL_WINDOWS):
            x = torch.tensor(valid[w * BPTT:(w + 1) * BPTT].astype(np.int64))
            y = torch.tensor(valid[w * BPTT + 1:(w + 1) * BPTT + 1].reshape(-1).astype(np.int64))
            logits, h = model(x, h)
            total += float(torch.nn.functional.cross_entropy(logits, y))
    return total / EVAL_WINDOWS


def main():
    corpus = Corpus.shakespeare(level="char")
    V = len(corpus.dictionary)
    train, valid = batchify(corpus.train, B), batchify(corpus.valid, B)
    np.random.seed(0)
    ours = LanguageModel(E, V, H, L, seq_model="lstm")
    theirs = TorchLM(V)
    copy_weights(ours, theirs)
    opt = ndl.optim.Adam(ours.parameters(), lr=LR)
    topt = torch.optim.Adam(theirs.parameters(), lr=LR)
    h = th = None
    curve, t_ours, t_theirs = [], 0.0, 0.0
    n_windows = (train.shape[0] - 1) // BPTT
    for step in range(1, STEPS + 1):
        i = ((step - 1) % n_windows) * BPTT
        X, y = get_batch(train, i, BPTT)
        t0 = time.perf_counter()
        logits, h = ours(X, h)
        h = detach_state(h)
        loss = ndl.nn.SoftmaxLoss()(logits, y)
        opt.reset_grad()
        loss.backward(create_graph=False)
        opt.clip_grad_norm(CLIP)
        opt.step()
        t1 = time.perf_counter()
        x = torch.tensor(train[i:i + BPTT].astype(np.int64))
        ty = torch.tensor(train[i + 1:i + 1 + BPTT].reshape(-1).astype(np.int64))
        tlogits, th = theirs(x, th)
        th = tuple(s.detach() for s in th)
        tloss = torch.nn.functional.cross_entropy(tlogits, ty)
        topt.zero_grad()
        tloss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), CLIP)
        topt.step()
        t_ours += t1 - t0
        t_theirs += time.perf_counter() - t1
        if step % EVAL_EVERY == 0 or step == STEPS:
            row = (step, float(loss.numpy()), tloss.item(), val_loss_needle(ours, valid),
                   val_loss_torch(theirs, valid))
            curve.append(row)
            print("step %4d  train needle %.4f torch %.4f  valid needle %.4f torch %.4f" % row,
                  flush=True)
    print(f"wall: needle {t_ours:.1f}s, torch {t_theirs:.1f}s for {STEPS} steps "
          f"({THREADS} thread(s)); final valid gap {curve[-1][3] - curve[-1][4]:+.4f} nats/char")
    prompt = [corpus.dictionary.word2idx[c] for c in "ROMEO:\n"]
    ids = generate(ours, prompt, 200, temperature=0.8, rng=np.random.default_rng(0))
    print("sample:\nROMEO:\n" + "".join(corpus.dictionary.idx2word[i] for i in ids))


if __name__ == "__main__":
    main()
