"""LanguageModel, truncated BPTT training (the hw4 *_ptb functions) and generation."""
import gc
import json

import numpy as np
import pytest
import torch

import needle as ndl
from needle.data import Corpus, batchify
from needle.models.language import LanguageModel, generate
from needle.train.lm import epoch_general_ptb, evaluate_ptb, perplexity, train_ptb


@pytest.mark.parametrize("seq_model", ["rnn", "lstm", "gru", "transformer"])
def test_shapes_states_and_every_parameter_gets_a_grad(seq_model):
    np.random.seed(0)
    T, B, V, L, H = 5, 3, 20, 2, 12
    model = LanguageModel(8, V, H, num_layers=L, seq_model=seq_model)
    x = ndl.Tensor(np.random.randint(0, V, (T, B)).astype(np.float32))
    out, h = model(x)
    assert out.shape == (T * B, V)
    if seq_model == "lstm":
        assert isinstance(h, tuple) and h[0].shape == h[1].shape == (L, B, H)
    elif seq_model == "transformer":
        assert h is None
    else:
        assert h.shape == (L, B, H)
    out.backward()  # course: backward of a non-scalar output
    assert all(p.grad is not None for p in model.parameters())


def test_lstm_language_model_matches_torch():
    """Embedding -> 2-layer LSTM -> Linear with copied weights: logits and weight grads."""
    np.random.seed(1)
    T, B, V, E, H = 6, 2, 11, 5, 7
    model = LanguageModel(E, V, H, num_layers=2, seq_model="lstm")
    emb, lstm, lin = torch.nn.Embedding(V, E), torch.nn.LSTM(E, H, 2), torch.nn.Linear(H, V)
    emb.weight.data = torch.tensor(model.embedding.weight.numpy())
    for k, cell in enumerate(model.seq_model.lstm_cells):
        for ours, theirs in (("W_ih", "weight_ih"), ("W_hh", "weight_hh")):
            getattr(lstm, f"{theirs}_l{k}").data = torch.tensor(getattr(cell, ours).numpy().T)
        for name in ("bias_ih", "bias_hh"):
            getattr(lstm, f"{name}_l{k}").data = torch.tensor(getattr(cell, name).numpy())
    lin.weight.data = torch.tensor(model.linear.weight.numpy().T)
    lin.bias.data = torch.tensor(model.linear.bias.numpy().reshape(-1))
    ids = np.random.randint(0, V, (T, B))
    y = np.random.randint(0, V, T * B)
    out, _ = model(ndl.Tensor(ids.astype(np.float32)))
    loss = ndl.nn.SoftmaxLoss()(out, ndl.Tensor(y.astype(np.float32)))
    tout = lin(lstm(emb(torch.tensor(ids)))[0]).reshape(T * B, V)
    tloss = torch.nn.functional.cross_entropy(tout, torch.tensor(y))
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), atol=1e-4)
    loss.backward(create_graph=False)
    tloss.backward()
    np.testing.assert_allclose(model.embedding.weight.grad.numpy(), emb.weight.grad.numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(model.seq_model.lstm_cells[0].W_ih.grad.numpy(),
                               lstm.weight_ih_l0.grad.numpy().T, atol=1e-5)


def _corpus_batches(batch_size=4):
    corpus = Corpus.shakespeare(level="char", max_lines=80)
    return corpus, batchify(corpus.train, batch_size)


@pytest.mark.parametrize("seq_model", ["lstm", "gru", "transformer"])
def test_train_ptb_lowers_the_loss(seq_model):
    corpus, data = _corpus_batches()
    np.random.seed(0)
    model = LanguageModel(16, len(corpus.dictionary), 32, 1, seq_model=seq_model, seq_len=16)
    _, before = evaluate_ptb(model, data, seq_len=16)
    opt = ndl.optim.Adam if seq_model == "transformer" else ndl.optim.SGD
    lr = 3e-3 if seq_model == "transformer" else 4.0
    acc, loss = train_ptb(model, data, seq_len=16, n_epochs=2, optimizer=opt, lr=lr, clip=0.25)
    _, after = evaluate_ptb(model, data, seq_len=16)
    assert 0 <= acc <= 1
    assert after < before - 0.3, (before, after)
    assert perplexity(after) == pytest.approx(np.exp(after))


def test_truncated_bptt_keeps_no_graph_alive():
    """Live tensors stay flat from window to window: the state is detached in between."""
    corpus, data = _corpus_batches()
    np.random.seed(0)
    model = LanguageModel(8, len(corpus.dictionary), 16, 2, seq_model="lstm")
    opt = ndl.optim.SGD(model.parameters(), lr=1.0)
    counts = []

    def record(i, n, loss):
        counts.append(ndl.autograd.TENSOR_COUNTER)

    # Earlier tests' cyclic garbage is collected first; during the epoch the collector is
    # off, so the graphs must be freed by reference counting alone.
    gc.collect()
    gc.disable()
    try:
        epoch_general_ptb(data, model, seq_len=8, opt=opt, clip=0.25, on_batch=record)
    finally:
        gc.enable()
    assert len(counts) > 10
    assert max(counts[3:]) - min(counts[3:]) <= 4, counts


def test_generate_samples_from_the_vocabulary():
    corpus, _ = _corpus_batches()
    V = len(corpus.dictionary)
    for seq_model in ("lstm", "transformer"):
        np.random.seed(0)
        model = LanguageModel(8, V, 16, 1, seq_model=seq_model, seq_len=16)
        prompt = [corpus.dictionary.word2idx[c] for c in "the "]
        ids = generate(model, prompt, 20, temperature=0.8, rng=np.random.default_rng(0))
        assert len(ids) == 20 and all(0 <= i < V for i in ids)
        assert generate(model, prompt, 5, temperature=0) == generate(model, prompt, 5, 0)
    with pytest.raises(ValueError, match="prompt"):
        generate(model, [], 3)


@pytest.mark.parametrize("seq_model", ["lstm", "gru", "transformer"])
def test_compiled_generation_samples_the_same_text(seq_model):
    """generate(compiled=True): each step's forward replays a recorded plan (the Transformer
    records once its window reaches seq_len); the logits are the eager ones, so the samples
    from the same generator are too."""
    corpus, _ = _corpus_batches()
    V = len(corpus.dictionary)
    np.random.seed(0)
    model = LanguageModel(8, V, 16, 2, seq_model=seq_model, seq_len=6)
    prompt = [corpus.dictionary.word2idx[c] for c in "the "]
    eager = generate(model, prompt, 25, temperature=0.8, rng=np.random.default_rng(3))
    compiled = generate(model, prompt, 25, temperature=0.8, rng=np.random.default_rng(3),
                        compiled=True)
    assert compiled == eager and len(eager) == 25


def test_unknown_seq_model_is_an_error():
    with pytest.raises(ValueError, match="seq_model"):
        LanguageModel(4, 10, 4, seq_model="bogus")


def test_needle_train_and_generate_on_a_text_folder(tmp_path, capsys):
    """`needle train --model lstm-lm --dataset text --data-dir DIR`, then `needle generate`."""
    from needle.train import cli

    words = "the cat sat on the mat and the dog ate the cat food".split()
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("valid", 10), ("test", 10)):
        lines = [" ".join(rng.choice(words, 8)) for _ in range(n)]
        (tmp_path / f"{split}.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    argv = ["train", "--model", "lstm-lm", "--dataset", "text", "--data-dir", str(tmp_path),
            "--epochs", "2", "--batch-size", "4", "--bptt", "8", "--hidden-dim", "16",
            "--embedding-dim", "8", "--num-layers", "1", "--lr", "0.01", "--out", str(out),
            "--no-progress"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "perplexity" in text
    assert cli.main(["generate", str(out / "best.safetensors"), "--prompt", "the cat",
                     "--tokens", "5", "--temperature", "0.5"]) == 0
    sample = capsys.readouterr().out.split()
    assert sample[:2] == ["the", "cat"] and len(sample) == 7
    assert all(w in words + ["<eos>"] for w in sample)
    # `--dataset DIR` is the same as `--dataset text --data-dir DIR`
    argv2 = list(argv)
    k = argv2.index("text")
    argv2[k - 1:k + 3] = ["--dataset", str(tmp_path)]
    argv2[argv2.index("--out") + 1] = str(tmp_path / "run2")
    assert cli.main(argv2) == 0
    first = (out / "metrics.jsonl").read_text().splitlines()
    second = (tmp_path / "run2" / "metrics.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in first]
    assert strip == [{k: v for k, v in json.loads(x).items() if k != "seconds"}
                     for x in second]
    assert cli.main(["generate", str(out / "best.safetensors"), "--prompt", "zebra"]) == 2
