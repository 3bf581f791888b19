"""optimizer.py: the official Adagrad-with-momentum rule (spec B9), dense and row-sparse, against a
slow per-element reference written for the test."""
import math

import pytest
import torch

from model import lookup
from optimizer import AdagradM, make_optimizer

DOUBLE = torch.float64


def reference_run(theta, grads, lr, mu, eps=1e-6):
    """Spec B9 element by element; grads: list of {row: gradient row (list)} (untouched rows absent)."""
    theta = [list(row) for row in theta]
    G = [[0.0] * len(row) for row in theta]
    v = [[0.0] * len(row) for row in theta]
    for step in grads:
        for r, g_row in step.items():
            for j, g in enumerate(g_row):
                G[r][j] += g * g
                delta = -lr * g / math.sqrt(G[r][j] + eps)
                if mu > 0:
                    v[r][j] = mu * v[r][j] + delta
                    theta[r][j] += v[r][j]
                else:
                    theta[r][j] += delta
    return theta


@pytest.mark.parametrize('mu', [0.0, 0.4])
def test_dense_update_matches_the_formula(mu):
    torch.manual_seed(0)
    start = torch.randn(3, 2, dtype=DOUBLE)
    p = torch.nn.Parameter(start.clone())
    opt = AdagradM([p], lr=0.1, momentum=mu)
    grads = [torch.randn(3, 2, dtype=DOUBLE) for _ in range(4)]
    grads[2][1] = 0.0                                  # a dense zero gradient still lets momentum move the row
    for g in grads:
        p.grad = g.clone()
        opt.step()
    expected = reference_run(start.tolist(), [{r: g[r].tolist() for r in range(3)} for g in grads], 0.1, mu)
    assert torch.allclose(p.detach(), torch.tensor(expected, dtype=DOUBLE), atol=1e-12)


@pytest.mark.parametrize('mu', [0.0, 0.4])
def test_dense_parameters_updated_together_get_the_official_bits(mu):
    """Several dense float32 parameters of different shapes, updated by one multi-tensor step: each gets
    exactly the bits of per-tensor arithmetic (acc.addcmul_(g, g), whose fused multiply-add rounds once
    where the official acc.add_(g.pow(2)) rounds twice; sqrt(acc + eps); momentum: v = mu v - lr g / sqrt,
    p += v; else the official p.addcdiv_(g, sqrt, value=-lr))."""
    torch.manual_seed(4)
    shapes = [(6, 5), (6,), (3, 7)]
    params = [torch.nn.Parameter(torch.randn(*shape)) for shape in shapes]
    expected = [p.detach().clone() for p in params]
    acc = [torch.zeros_like(p) for p in expected]
    velocity = [torch.zeros_like(p) for p in expected]
    opt = AdagradM(params, lr=0.07, momentum=mu)
    for _ in range(3):
        grads = [torch.randn(*shape) for shape in shapes]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.update()
        for e, a, v, g in zip(expected, acc, velocity, grads):
            a.addcmul_(g, g)
            root = a.add(1e-6).sqrt_()
            if mu > 0:
                v.mul_(mu).addcdiv_(g, root, value=-0.07)
                e.add_(v)
            else:
                e.addcdiv_(g, root, value=-0.07)
    for p, e in zip(params, expected):
        assert torch.equal(p.detach(), e)


@pytest.mark.parametrize('mu', [0.0, 0.3])
def test_row_sparse_update_with_duplicates_touches_only_used_rows(mu):
    torch.manual_seed(1)
    start = torch.randn(6, 3, dtype=DOUBLE)
    table = torch.nn.Parameter(start.clone())
    opt = AdagradM([table], lr=0.05, momentum=mu)
    steps = [torch.tensor([1, 4, 1]), torch.tensor([4, 5]), torch.tensor([1, 1, 1, 0])]
    expected_grads = []
    for index in steps:
        weights = torch.randn(len(index), 3, dtype=DOUBLE)
        table.grad = None
        rows = lookup(table, index)
        (rows * weights).sum().backward()
        summed = {}
        for i, r in enumerate(index.tolist()):      # duplicates are summed, then the row updated once
            summed[r] = [a + b for a, b in zip(summed.get(r, [0.0] * 3), weights[i].tolist())]
        expected_grads.append(summed)
        opt.step()
    expected = torch.tensor(reference_run(start.tolist(), expected_grads, 0.05, mu), dtype=DOUBLE)
    assert torch.allclose(table.detach(), expected, atol=1e-12)
    assert torch.equal(table.detach()[2], start[2]) and torch.equal(table.detach()[3], start[3])
    if mu > 0:     # row 5 was last touched in step 2: its velocity did not decay in step 3
        v = opt.state[table]['velocity']
        assert torch.all(v[5] != 0) and torch.equal(v[2], torch.zeros(3, dtype=DOUBLE))


def test_eps_is_inside_the_square_root():
    p = torch.nn.Parameter(torch.zeros(1, dtype=DOUBLE))
    opt = AdagradM([p], lr=1.0, momentum=0.0)
    p.grad = torch.tensor([1e-3], dtype=DOUBLE)
    opt.step()
    assert p.item() == pytest.approx(-1e-3 / math.sqrt(1e-6 + 1e-6), rel=1e-12)   # not 1e-3 / (1e-3 + eps)


@pytest.mark.parametrize('name,kind,has_momentum', [
    ('AdagradM', AdagradM, True), ('Adagrad', torch.optim.Adagrad, False), ('Adam', torch.optim.Adam, False),
    ('SGD', torch.optim.SGD, True), ('RMSprop', torch.optim.RMSprop, True)])
def test_make_optimizer_names_pass_lr_and_momentum(name, kind, has_momentum):
    p = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = make_optimizer(name, p, 0.123, 0.45)
    assert type(optimizer) is kind
    group = optimizer.param_groups[0]
    assert group['lr'] == 0.123 and group['params'][0] is p[0]
    if has_momentum:
        assert group['momentum'] == 0.45


def test_make_optimizer_refuses_unknown_names():
    with pytest.raises(ValueError, match='unknown optimizer'):
        make_optimizer('Adamax', [torch.nn.Parameter(torch.zeros(2))], 0.1)


@pytest.mark.parametrize('name', ['Adam', 'SGD', 'RMSprop'])
def test_torch_optimisers_train_gru4rec_with_dense_gradients(tmp_path, name):
    from config import DEFAULTS
    from conftest import write_split
    from dataset import SessionData
    from training import train_epoch, training_setup
    rows = [(s, f'i{(s * 3 + k * (1 + s % 3)) % 11}', 10 * s + k) for s in range(60) for k in range(4)]
    data = SessionData(write_split(tmp_path / 't.txt', rows))
    config = dict(DEFAULTS, layers=[8], batch_size=8, n_sample=5, optimizer_type=name, lr=0.01, momentum=0.5)
    torch.manual_seed(0)
    run = training_setup(config, data, 'cpu')
    model = run[0]
    assert not model.sparse and not model.has_fast_step            # torch's optimisers get dense gradients
    start = {k: v.clone() for k, v in model.state_dict().items()}
    losses = [train_epoch(*run, config, 'cpu')[0] for _ in range(3)]
    assert not model.Wy.grad.is_sparse and model.Wy.grad.shape == model.Wy.shape
    assert all(not torch.equal(start[k], v) for k, v in model.state_dict().items() if k != 'cells.0.bias_hh')
    assert losses[-1] < losses[0] and all(math.isfinite(v) for v in losses)
