"""model.py: the three input modes, the GRU formulas, dropout as stored state, init, sample store (spec B3-B5, B8)."""
import math

import numpy as np
import pytest
import torch

from model import GRU4Rec, dropout_noise, lookup

N = 30


def sig(x):
    return 1 / (1 + torch.exp(-x))


def near_bound(block, bound):
    """Drawn from U(+-bound): every value within it and the largest magnitude close to it (n draws fall short
    of (1 - 5/n) * bound with probability (1 - 5/n)^n < e^-5)."""
    top = block.abs().max().item()
    return top <= bound and top > (1 - 5 / block.numel()) * bound


def test_initialisation_per_gate_bounds_zero_biases_and_seed():
    model = GRU4Rec(N, layers=[8, 6], constrained_embedding=True, seed=42)
    again = GRU4Rec(N, layers=[8, 6], constrained_embedding=True, seed=42)
    other = GRU4Rec(N, layers=[8, 6], constrained_embedding=True, seed=7)
    for (name, p), q, r in zip(model.state_dict().items(), again.state_dict().values(), other.state_dict().values()):
        assert torch.equal(p, q), name
        if 'weight' in name or name == 'Wy':
            assert not torch.equal(p, r), name
    assert torch.all(model.By == 0)
    assert near_bound(model.Wy, math.sqrt(6 / (N + 6)))
    first, second = model.cells
    assert first.weight_ih.shape == (24, 6)          # shared mode: the first layer reads W_y rows (width 6)
    for cell, fan_in, size in ((first, 6, 8), (second, 8, 6)):
        for block in cell.weight_ih.split(size):       # each gate block has its own bound (spec B8.2)
            assert near_bound(block, math.sqrt(6 / (fan_in + size)))
        for block in cell.weight_hh.split(size):
            assert near_bound(block, math.sqrt(6 / (2 * size)))
        assert torch.all(cell.bias_ih == 0) and torch.all(cell.bias_hh == 0)


def test_initialisation_of_the_item_tables_and_the_onehot_layer():
    n = 400                                           # a bound that differs clearly from the GRU blocks' ones
    separate = GRU4Rec(n, layers=[20], constrained_embedding=False, embedding=12)
    assert near_bound(separate.E, math.sqrt(6 / (n + 12)))
    assert near_bound(separate.Wy, math.sqrt(6 / (n + 20)))
    for block in separate.cells[0].weight_ih.split(20):
        assert near_bound(block, math.sqrt(6 / (12 + 20)))
    none = GRU4Rec(n, layers=[20, 10], constrained_embedding=False, embedding=0)
    for block in none.Wx0.split(20, dim=1):         # reset, update, candidate: U(+-sqrt(6 / (N + L))) each
        assert near_bound(block, math.sqrt(6 / (n + 20)))
    for block in none.U0.split(20, dim=1):
        assert near_bound(block, math.sqrt(6 / (20 + 20)))
    assert torch.all(none.Bx0 == 0)
    for block in none.cells[0].weight_ih.split(10):
        assert near_bound(block, math.sqrt(6 / (20 + 10)))
    assert near_bound(none.Wy, math.sqrt(6 / (n + 10)))


def test_modes_have_the_right_tables():
    shared = GRU4Rec(N, layers=[5], constrained_embedding=True, embedding=7)
    separate = GRU4Rec(N, layers=[5], constrained_embedding=False, embedding=7)
    none = GRU4Rec(N, layers=[5, 4], constrained_embedding=False, embedding=0)
    assert shared.mode == 'shared' and not hasattr(shared, 'E')
    assert separate.mode == 'separate' and separate.E.shape == (N, 7) and separate.cells[0].weight_ih.shape == (15, 7)
    assert none.mode == 'none' and none.Wx0.shape == (N, 15) and len(none.cells) == 1
    assert none.Wy.shape == (N, 4) and none.By.shape == (N,)       # the last layer's width


def test_shared_mode_step_is_a_grucell_on_the_output_row():
    model = GRU4Rec(N, layers=[6], constrained_embedding=True).eval()
    inputs = torch.tensor([3, 3, 17])
    h = torch.randn(3, 6)
    new = model.hidden_step(inputs, [h])
    expected = model.cells[0](model.Wy[inputs], h)
    assert torch.allclose(new[0], expected)


def test_separate_mode_step_is_a_grucell_on_the_embedding_row():
    model = GRU4Rec(N, layers=[6, 5], constrained_embedding=False, embedding=7).eval()
    with torch.no_grad():
        for cell in model.cells:
            cell.bias_ih.uniform_(-0.5, 0.5)
            cell.bias_hh.uniform_(-0.5, 0.5)
    inputs = torch.tensor([3, 3, 17])
    h = [torch.randn(3, 6), torch.randn(3, 5)]
    new = model.hidden_step(inputs, h)
    first = model.cells[0](model.E[inputs], h[0])
    assert torch.allclose(new[0], first, atol=1e-6)
    assert torch.allclose(new[1], model.cells[1](first, h[1]), atol=1e-6)


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
        model.By.uniform_(-1, 1)                        # non-zero biases
    inputs, candidates = torch.tensor([1, 2]), torch.tensor([5, 9, 5, 0])
    h = [torch.randn(2, 6)]
    scores, new = model(inputs, h, candidates)
    top = new[-1]
    assert torch.allclose(scores, top @ model.Wy[candidates].T + model.By[candidates], atol=1e-6)
    assert torch.allclose(model.score_all(top)[:, candidates], scores, atol=1e-6)


P = 0.2     # not 0.5, where 1/(1-p) = 1/p and the kept share equals the dropped one


def test_dropout_noise_keeps_1_minus_p_scaled_by_1_over_1_minus_p():
    torch.manual_seed(0)
    noise = dropout_noise(torch.zeros(200, 500), P)
    assert abs((noise == 0).float().mean().item() - P) < 0.01
    assert torch.all((noise == 0) | (noise == 1 / (1 - P)))
    assert dropout_noise(torch.zeros(3), 0.0) is None


def test_hidden_dropout_is_the_stored_state_and_off_in_eval():
    torch.manual_seed(0)
    model = GRU4Rec(N, layers=[200], dropout_p_hidden=P, dropout_p_embed=0.0)
    inputs = torch.arange(20)
    h = [torch.randn(20, 200)]
    _, new = model(inputs, h, torch.arange(N))
    zero_share = (new[0] == 0).float().mean().item()
    assert abs(zero_share - P) < 0.03                  # the state itself carries the dropout mask
    model.eval()
    undropped = model.hidden_step(inputs, h)[0]
    kept = new[0] != 0
    assert torch.allclose(new[0][kept], undropped[kept] / (1 - P), atol=1e-6)   # inverted dropout scaling
    assert torch.equal(model.hidden_step(inputs, h)[0], undropped)              # eval: deterministic


def test_input_dropout_of_the_embedding_modes(monkeypatch):
    import model as model_module
    seen = []
    real_cell = model_module.gru_cell
    monkeypatch.setattr(model_module, 'gru_cell', lambda cell, x, h: seen.append(x) or real_cell(cell, x, h))
    torch.manual_seed(2)
    for shared in (True, False):
        seen.clear()
        model = GRU4Rec(N, layers=[50], constrained_embedding=shared, embedding=50, dropout_p_embed=P)
        inputs = torch.randint(0, N, (400,))
        model.hidden_step(inputs, model.init_hidden(400))
        clean = (model.Wy if shared else model.E)[inputs].detach()
        dropped = seen[0].detach()                      # what the first GRU layer reads
        zero = dropped == 0
        assert abs(zero.float().mean().item() - P) < 0.02
        assert torch.allclose(dropped[~zero], clean[~zero] / (1 - P), atol=1e-6)


def test_onehot_input_dropout_drops_whole_rows():
    torch.manual_seed(1)
    model = GRU4Rec(N, layers=[3], constrained_embedding=False, dropout_p_embed=P)
    with torch.no_grad():
        model.Bx0.zero_()
    h = [torch.zeros(2000, 3)]
    out = model.hidden_step(torch.full((2000,), 4), h)[0]
    dropped = (out == 0).all(dim=1)                     # zero input row and zero state -> zero output
    assert abs(dropped.float().mean().item() - P) < 0.03
    a = model.Wx0[4].detach() / (1 - P)                 # a kept row is scaled by 1/(1-p): h = z * tanh(a_h)
    z = torch.sigmoid(a[3:6])
    expected = z * torch.tanh(a[6:])
    assert torch.allclose(out[~dropped], expected.expand(int((~dropped).sum()), 3), atol=1e-6)


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
    assert model.Wy.grad.is_coalesced() and model.Wy.grad.indices()[0].tolist() == [4, 5, 9, 21]
    top = new[-1].detach()
    expected = torch.zeros(N, 6)
    for c in candidates.tolist():                    # every column adds h to its item's row
        expected[c] += top.sum(0)
    assert torch.allclose(model.Wy.grad.to_dense()[[5, 21]], expected[[5, 21]], atol=1e-5)
    # b_y: only the candidates' rows, each column adding 1 per row of the batch; item 4 is an input only
    assert model.By.grad.is_coalesced() and model.By.grad.indices()[0].tolist() == [5, 9, 21]
    assert model.By.grad.to_dense()[[5, 9, 21]].tolist() == [6.0, 2.0, 2.0]


@pytest.mark.parametrize('fast', [True, False])
def test_an_input_only_item_keeps_its_bias_under_momentum(fast):
    """The official code's b_y is its own table, touched by candidates only: an item that is only an
    input of a step moves its W_y row (its input vector) but its bias, accumulator and velocity stay
    as they were, although its velocity is non-zero from an earlier step."""
    from loss import loss_function
    from optimizer import AdagradM
    torch.manual_seed(0)
    model = GRU4Rec(N, layers=[6], dropout_p_hidden=0.0)
    optimizer = AdagradM(model.parameters(), lr=0.1, momentum=0.5)
    xe = loss_function('cross-entropy', 'softmax', 2)

    def step(inputs, candidates):
        inputs, candidates = torch.tensor(inputs), torch.tensor(candidates)
        hidden = [torch.randn(2, 6)]
        if fast:
            model.train_step(inputs, hidden, candidates, xe)
        else:
            optimizer.zero_grad(set_to_none=True)
            xe(model(inputs, hidden, candidates)[0]).backward()
        optimizer.update()

    step([1, 2], [4, 9, 3])                          # item 4 a candidate: bias, acc and velocity move
    state = optimizer.state
    before = [t.detach().clone() for t in (model.By, state[model.By]['acc'], state[model.By]['velocity'])]
    wy_before = model.Wy.detach().clone()
    assert before[0][4] != 0 and before[2][4] != 0
    step([4, 7], [9, 3, 9])                          # item 4 only an input now
    after = (model.By, state[model.By]['acc'], state[model.By]['velocity'])
    for old, new in zip(before, after):
        assert old[4] == new[4] and old[7] == new[7]
        assert old[9] != new[9]
    assert not torch.equal(wy_before[4], model.Wy[4]) and not torch.equal(wy_before[7], model.Wy[7])


def test_rejects_bad_configuration():
    with pytest.raises(ValueError):
        GRU4Rec(N, layers=[0])
    with pytest.raises(ValueError):
        GRU4Rec(N, layers=[4], dropout_p_hidden=1.0)


# ---------------------------------------------------------------- negative samples (spec B5.3-B5.4)

from model import GuideTable, SampleStore  # noqa: E402


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


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_guide_table_inverts_exactly_as_searchsorted(dtype, monkeypatch):
    generator = torch.Generator().manual_seed(7)
    monkeypatch.setattr(GuideTable, 'CHUNK', 1000)              # several chunks and a short last one
    for support in (np.array([3]), np.array([0, 2]), np.array([1, 0, 0, 5, 0, 2]),
                    np.random.default_rng(1).zipf(1.3, 5000).clip(1, 10 ** 6) * (np.arange(5000) % 7 > 0)):
        weights = torch.as_tensor(support, dtype=torch.float64) ** 0.75
        cdf = (torch.cumsum(weights, 0) / weights.sum()).to(dtype)
        cdf[-1] = 1.0                    # zero-support items: runs of equal values, where right=True matters
        u = torch.cat([torch.rand(7321, dtype=dtype, generator=generator), cdf[:-1],   # u equal to a CDF value
                       torch.tensor([0.0, 1.0 - torch.finfo(dtype).eps / 2], dtype=dtype)])
        u = torch.cat([u, torch.nextafter(cdf[:-1], torch.tensor(0.0, dtype=dtype))])  # ... and just below one
        expected = torch.searchsorted(cdf, u, right=True)
        table = GuideTable(cdf)
        assert torch.equal(table(u), expected)
        assert torch.equal(table(u[:300].view(100, 3)), expected[:300].view(100, 3))   # any shape


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
