"""model.py: the three input modes, the GRU formulas, dropout as stored state, init, sample store (spec B3-B5, B8)."""
import math

import numpy as np
import pytest
import torch

from model import GRU4Rec, lookup

N = 30


def sig(x):
    return 1 / (1 + torch.exp(-x))


def test_initialisation_per_gate_bounds_zero_biases_and_seed():
    model = GRU4Rec(N, layers=[8, 6], constrained_embedding=True, seed=42)
    again = GRU4Rec(N, layers=[8, 6], constrained_embedding=True, seed=42)
    other = GRU4Rec(N, layers=[8, 6], constrained_embedding=True, seed=7)
    for (name, p), q, r in zip(model.state_dict().items(), again.state_dict().values(), other.state_dict().values()):
        assert torch.equal(p, q), name
        if 'weight' in name or name == 'Y':
            assert not torch.equal(p, r), name
    assert torch.all(model.By == 0)
    assert torch.all(model.Wy.abs() <= math.sqrt(6 / (N + 6)))
    assert model.Wy.abs().max() > 0.9 * math.sqrt(6 / (N + 6))
    first, second = model.cells
    assert first.weight_ih.shape == (24, 6)          # shared mode: the first layer reads W_y rows (width 6)
    for cell, fan_in, size in ((first, 6, 8), (second, 8, 6)):
        for block in cell.weight_ih.split(size):       # each gate block has its own bound (spec B8.2)
            bound = math.sqrt(6 / (fan_in + size))
            assert block.abs().max() <= bound and block.abs().max() > 0.8 * bound
        for block in cell.weight_hh.split(size):
            assert block.abs().max() <= math.sqrt(6 / (2 * size))
        assert torch.all(cell.bias_ih == 0) and torch.all(cell.bias_hh == 0)


def test_modes_have_the_right_tables():
    shared = GRU4Rec(N, layers=[5], constrained_embedding=True, embedding=7)
    separate = GRU4Rec(N, layers=[5], constrained_embedding=False, embedding=7)
    none = GRU4Rec(N, layers=[5, 4], constrained_embedding=False, embedding=0)
    assert shared.mode == 'shared' and not hasattr(shared, 'E')
    assert separate.mode == 'separate' and separate.E.shape == (N, 7) and separate.cells[0].weight_ih.shape == (15, 7)
    assert none.mode == 'none' and none.Wx0.shape == (N, 15) and len(none.cells) == 1
    assert none.Y.shape == (N, 5)                       # last layer 4 + the bias column


def test_shared_mode_step_is_a_grucell_on_the_output_row():
    model = GRU4Rec(N, layers=[6], constrained_embedding=True).eval()
    inputs = torch.tensor([3, 3, 17])
    h = torch.randn(3, 6)
    new = model.hidden_step(inputs, [h])
    expected = model.cells[0](model.Wy[inputs], h)
    assert torch.allclose(new[0], expected)


def test_onehot_first_layer_follows_the_single_bias_gru_formula():
    model = GRU4Rec(N, layers=[4], constrained_embedding=False, embedding=0).eval()
    with torch.no_grad():
        model.Bx0.uniform_(-0.5, 0.5)
    inputs = torch.tensor([0, 29])
    h = torch.randn(2, 4)
    got = model.hidden_step(inputs, [h])[0]
    for row, item in enumerate(inputs):
        x = torch.zeros(N)
        x[item] = 1.0                                   # the one-hot vector, materialised only here
        a = x @ model.Wx0 + model.Bx0
        U = model.U0
        r = sig(a[:4] + h[row] @ U[:, :4])
        z = sig(a[4:8] + h[row] @ U[:, 4:8])
        cand = torch.tanh((r * h[row]) @ U[:, 8:] + a[8:])
        assert torch.allclose(got[row], (1 - z) * h[row] + z * cand, atol=1e-6)


def test_scores_of_candidates_and_of_all_items():
    model = GRU4Rec(N, layers=[6]).eval()
    with torch.no_grad():
        model.Y[:, -1].uniform_(-1, 1)                  # non-zero biases
    inputs, candidates = torch.tensor([1, 2]), torch.tensor([5, 9, 5, 0])
    h = [torch.randn(2, 6)]
    scores, new = model(inputs, h, candidates)
    top = new[-1]
    assert torch.allclose(scores, top @ model.Wy[candidates].T + model.By[candidates], atol=1e-6)
    assert torch.allclose(model.score_all(top)[:, candidates], scores, atol=1e-6)


def test_hidden_dropout_is_the_stored_state_and_off_in_eval():
    torch.manual_seed(0)
    model = GRU4Rec(N, layers=[200], dropout_p_hidden=0.5, dropout_p_embed=0.0)
    inputs = torch.arange(20)
    h = [torch.zeros(20, 200)]
    _, new = model(inputs, h, torch.arange(N))
    zero_share = (new[0] == 0).float().mean().item()
    assert 0.4 < zero_share < 0.6                       # the state itself carries the dropout mask
    model.eval()
    undropped = model.hidden_step(inputs, h)[0]
    kept = new[0] != 0
    assert torch.allclose(new[0][kept], undropped[kept] / 0.5, atol=1e-6)   # inverted dropout scaling
    assert torch.equal(model.hidden_step(inputs, h)[0], undropped)          # eval: deterministic


def test_onehot_input_dropout_drops_whole_rows():
    torch.manual_seed(1)
    model = GRU4Rec(N, layers=[3], constrained_embedding=False, dropout_p_embed=0.5)
    with torch.no_grad():
        model.Bx0.zero_()
    h = [torch.zeros(400, 3)]
    out = model.hidden_step(torch.full((400,), 4), h)[0]
    dropped = (out == 0).all(dim=1)                     # zero input row and zero state -> zero output
    assert 0.4 < dropped.float().mean().item() < 0.6
    eval_out = model.eval().hidden_step(torch.full((1,), 4), [torch.zeros(1, 3)])[0]
    assert not torch.allclose(out[~dropped][0], eval_out[0])   # kept rows are scaled by 1/(1-p)


def test_lookup_gradient_is_coalesced_and_equals_the_dense_one():
    table = torch.nn.Parameter(torch.randn(N, 4))
    dense = table.detach().clone().requires_grad_()
    a, b = torch.tensor([3, 7, 3]), torch.tensor([7, 7, 0, 29])
    weights_a, weights_b = torch.randn(3, 4), torch.randn(4, 4)
    x = lookup(table, torch.cat([a, b]))
    ((x[:3] * weights_a).sum() + (x[3:] * weights_b).sum()).backward()
    ((dense[a] * weights_a).sum() + (dense[b] * weights_b).sum()).backward()
    grad = table.grad
    assert grad.is_sparse and grad.is_coalesced()
    assert grad.indices()[0].tolist() == [0, 3, 7, 29]          # each touched row once
    assert torch.allclose(grad.to_dense(), dense.grad, atol=1e-6)
    assert torch.equal(x, dense.detach()[torch.cat([a, b])])
    assert lookup(table, a, sparse=False).grad_fn.__class__.__name__ == 'IndexSelectBackward0'


def test_training_scores_read_each_item_once_and_repeat_duplicate_columns():
    model = GRU4Rec(N, layers=[6], dropout_p_hidden=0.0)
    inputs, candidates = torch.tensor([4, 9]), torch.tensor([9, 5, 5, 5, 21])
    scores, new = model(inputs, [torch.randn(2, 6)], candidates)
    assert torch.equal(scores[:, 1], scores[:, 2]) and torch.equal(scores[:, 1], scores[:, 3])
    scores.sum().backward()
    assert model.Y.grad.is_coalesced() and model.Y.grad.indices()[0].tolist() == [4, 5, 9, 21]
    top = new[-1].detach()
    expected = torch.zeros(N, 7)
    for c in candidates.tolist():                    # every column adds [h, 1] to its item's row
        expected[c] += torch.cat([top, torch.ones(2, 1)], 1).sum(0)
    assert torch.allclose(model.Y.grad.to_dense()[[5, 21]], expected[[5, 21]], atol=1e-5)


def test_rejects_bad_configuration():
    with pytest.raises(ValueError):
        GRU4Rec(N, layers=[0])
    with pytest.raises(ValueError):
        GRU4Rec(N, layers=[4], dropout_p_hidden=1.0)


# ---------------------------------------------------------------- negative samples (spec B5.3-B5.4)

from model import SampleStore  # noqa: E402


def test_sample_store_inverse_cdf_and_popularity_exponent():
    support = np.array([1, 0, 3, 6])
    store = SampleStore(support, n_sample=1000, alpha=1.0, store_size=200_000, seed=0)
    assert store.rows == 200 and store.store.shape == (200, 1000)
    counts = np.bincount(store.store.flatten().numpy(), minlength=4) / store.store.numel()
    assert counts[1] == 0                               # an item without support is never drawn
    assert np.allclose(counts, support / support.sum(), atol=0.005)
    uniform = SampleStore(support, n_sample=1000, alpha=0.0, store_size=200_000, seed=0)
    counts = np.bincount(uniform.store.flatten().numpy(), minlength=4) / uniform.store.numel()
    assert np.allclose(counts, 0.25, atol=0.005)        # alpha 0: 1^0 for every item, even unsupported
    half = SampleStore(support, n_sample=1000, alpha=0.5, store_size=200_000, seed=0)
    counts = np.bincount(half.store.flatten().numpy(), minlength=4) / half.store.numel()
    assert np.allclose(counts, np.sqrt(support) / np.sqrt(support).sum(), atol=0.005)


def test_sample_store_serves_rows_in_order_refills_and_resumes():
    store = SampleStore(np.arange(1, 50), n_sample=7, alpha=0.75, store_size=21, seed=5)
    assert store.rows == 3
    first = [store.next().clone() for _ in range(3)]
    assert torch.equal(torch.stack(first), store.store)
    state = store.state_dict()                          # store used up; the next call regenerates
    following = [store.next().clone() for _ in range(4)]
    assert not torch.equal(following[0], first[0])
    resumed = SampleStore(np.arange(1, 50), n_sample=7, alpha=0.75, store_size=21, seed=99)
    resumed.load_state_dict(state)
    assert all(torch.equal(resumed.next(), f) for f in following)
