"""row_kernel.py (issue #31): the compiled step's row updates as one C++ pass over the rows, bit for bit
Inductor's update, and its fallbacks."""
import copy
import os
import stat

import pytest
import torch

from config import DEFAULTS
import row_kernel
import static_step
from test_static_step import CASES, train  # noqa: F401  (the module's training split fixture)
from training import training_setup

compiler = pytest.mark.skipif(row_kernel.compiler() is None, reason='no C++ compiler')


def update_case(n_rows, width, momentum, touched, seed):
    """A table with its state, the segments of 300 ids drawn with many repeats, a gradient per segment (zero
    past the last distinct row, as the step makes it) and a touched mask or None."""
    g = torch.Generator().manual_seed(seed)
    shape = (n_rows,) if width == 1 else (n_rows, width)
    table, velocity = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    acc = torch.rand(shape, generator=g)
    ids = torch.multinomial(torch.rand(n_rows, generator=g) ** 4, 300, replacement=True, generator=g)
    segment, rows, source = static_step.segments(ids)
    grad = torch.randn(300, *shape[1:], generator=g)
    real = source == torch.arange(300)
    assert not real.all()                                # the case has segments past the last distinct row
    grad[~real] = 0.0
    mask = torch.rand(300, generator=g) < 0.7 if touched else None
    return table, {'acc': acc, 'velocity': velocity}, rows, source, grad, 0.1, momentum, 1e-6, mask


@compiler
@pytest.mark.parametrize('width, momentum, touched', [(40, 0.3, False), (1, 0.0, True), (7, 0.2, True)])
def test_the_kernel_is_inductors_row_update_bit_for_bit(width, momentum, touched):
    """The kernel against static_step.row_update compiled by Inductor (whose arithmetic it repeats: bit for bit)
    and eager (to float rounding), on rows with repeats, momentum on and off, a touched mask (b_y's case) and
    widths that are not a multiple of the vector length, on 2 threads."""
    case = update_case(500, width, momentum, touched, seed=width)
    kernel, inductor, eager = (copy.deepcopy(case[:2]) for _ in range(3))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        row_kernel.row_update(*kernel, *case[2:])
        torch.compile(static_step.row_update, fullgraph=True)(*inductor, *case[2:])
    finally:
        torch.set_num_threads(threads)
    static_step.row_update(*eager, *case[2:])
    for a, b, c in zip([kernel[0], *kernel[1].values()], [inductor[0], *inductor[1].values()],
                       [eager[0], *eager[1].values()]):
        assert torch.equal(a, b)
        assert torch.allclose(a, c, rtol=1e-6, atol=1e-6)
    changed = (kernel[0] != case[0]).reshape(500, -1).any(1)
    rows, real, mask = case[2], case[3] == torch.arange(300), case[8]
    expected = torch.zeros(500, dtype=torch.bool)
    expected[rows[real & (mask if mask is not None else True)]] = True
    assert torch.equal(changed, expected)                # the touched rows changed, no other


@compiler
@pytest.mark.parametrize('momentum', [0.0, 0.3])
def test_the_kernel_sums_the_input_rows_into_their_segments(momentum):
    """A gradient given as (the first segments' rows, input rows, their segments) (row_kernel.parts: the compiled
    step's W_y): the kernel sums the input rows into their segments from zero in their order and adds the
    segment's own row, bit for bit the K-row gradient that `whole` builds, which the step's eager form builds the
    same way (zeros, scatter_add_, then += the product's rows); segments with several input rows, with none and
    past the first rows (input-only) all occur."""
    table, state, rows, source, grad, lr, _, eps, _ = update_case(500, 40, momentum, False, seed=3)
    g = torch.Generator().manual_seed(4)
    real = int((source == torch.arange(300)).sum())
    head = grad[:real - 20].clone()                              # 20 real segments get input rows alone
    inputs = torch.randn(60, 40, generator=g)
    in_segment = torch.cat([torch.arange(real - 20, real), torch.randint(0, real, (40,), generator=g)])
    in_segment = in_segment[torch.randperm(60, generator=g)]
    assert len(in_segment.unique()) < 60 and len(set(range(real - 20)) - set(in_segment.tolist())) > 0
    triple = (head, inputs, in_segment)
    expected = torch.zeros(300, 40).scatter_add_(0, in_segment[:, None].expand(-1, 40), inputs)
    expected[:len(head)] += head
    assert torch.equal(row_kernel.whole(triple, 300), expected)
    assert row_kernel.fits(table, state, rows, triple) and not row_kernel.fits(table, state, rows, (head, inputs,
                                                                                                   in_segment.int()))
    kernel, reference = (copy.deepcopy((table, state)) for _ in range(2))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        row_kernel.row_update(*kernel, rows, source, triple, lr, momentum, eps)
        row_kernel.row_update(*reference, rows, source, expected, lr, momentum, eps)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip([kernel[0], *kernel[1].values()], [reference[0], *reference[1].values()]):
        assert torch.equal(a, b)
    assert not torch.equal(kernel[0], table)


def first_step(train, case, monkeypatch):
    """(model, optimiser, loss, inputs, hidden, candidates, reset, logQ correction) of the first training step
    of CASES[case] on `train`, the optimiser state made, Inductor drawing the eager step's dropout numbers."""
    from torch._inductor import config as inductor
    monkeypatch.setattr(inductor, 'fallback_random', True)
    config = {**DEFAULTS, **CASES[case], 'sample_store': 20_000}
    model, optimizer, loss, iterator, sampler, logq = training_setup(config, train, 'cpu')
    static_step.init_state(optimizer)
    hidden = model.init_hidden(iterator.n_slots, 'cpu')
    inputs, targets, reset, _ = next(iterator.torch_steps('cpu'))
    samples = sampler.next()
    candidates = torch.cat([targets, samples])
    correction = None if logq is None else torch.cat([logq[0][targets], logq[1][samples]])
    reset = torch.zeros(len(inputs), dtype=torch.bool) if reset is None else reset
    return model, optimizer, loss, inputs, hidden, candidates, reset, correction


@compiler
@pytest.mark.parametrize('case', ['XE + logQ, shared, dropout, momentum', 'XE, separate embedding, input dropout'])
def test_the_compiled_step_with_the_kernel_equals_it_without(train, case, monkeypatch):  # noqa: F811
    """CompiledStep updates the item tables with the kernel after its graph (ROW_KERNEL): the same weights,
    optimiser state, loss and hidden state bit for bit as the step with Inductor's update inside the graph."""
    model, optimizer, loss, inputs, hidden, candidates, reset, correction = first_step(train, case, monkeypatch)
    runs, calls = [], []
    real_update = row_kernel.row_update
    monkeypatch.setattr(row_kernel, 'row_update', lambda *a: calls.append(a[2].shape) or real_update(*a))
    for with_kernel in (True, False):
        monkeypatch.setattr(static_step.CompiledStep, 'ROW_KERNEL', with_kernel)
        twin = copy.deepcopy((model, optimizer))
        torch.manual_seed(7)
        value, new = static_step.CompiledStep()(*twin, loss, inputs, hidden, candidates, reset, correction)
        runs.append((twin, value, new))
    assert len(calls) == (2 if model.mode == 'shared' else 3)           # every table by the kernel, once
    (a_model, a_opt), a_value, a_hidden = runs[0]
    (b_model, b_opt), b_value, b_hidden = runs[1]
    assert torch.equal(a_value, b_value) and all(torch.equal(a, b) for a, b in zip(a_hidden, b_hidden))
    for a, b in zip(a_model.parameters(), b_model.parameters()):
        assert torch.equal(a, b)
        assert all(torch.equal(a_opt.state[a][key], b_opt.state[b][key]) for key in ('acc', 'velocity'))
    assert not torch.equal(a_model.Wy, model.Wy)                        # (the step did update the table)


@compiler
def test_an_update_the_kernel_does_not_fit_runs_eagerly_from_the_whole_gradient(train, monkeypatch):  # noqa: F811
    """Where row_kernel.fits_update refuses a step's update, CompiledStep applies static_step.row_update to the
    gradient made whole (row_kernel.whole: the shared mode's W_y comes in parts): the same update as the
    kernel's to float rounding."""
    model, optimizer, loss, inputs, hidden, candidates, reset, correction = first_step(
        train, 'XE + logQ, shared, dropout, momentum', monkeypatch)
    runs, eager = [], []
    real_update = static_step.row_update
    monkeypatch.setattr(static_step, 'row_update', lambda *a: eager.append(a[4].shape) or real_update(*a))
    for fits in (True, False):
        monkeypatch.setattr(row_kernel, 'fits_update', lambda *a, fits=fits: fits)
        twin = copy.deepcopy((model, optimizer))
        torch.manual_seed(7)
        static_step.CompiledStep()(*twin, loss, inputs, hidden, candidates, reset, correction)
        runs.append(twin)
    K = len(candidates) + len(inputs)                   # (the shared mode's segments)
    assert eager == [(K, model.Wy.shape[1]), (K,)]       # W_y's gradient made whole, then b_y's
    for a, b in zip(runs[0][0].parameters(), runs[1][0].parameters()):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    assert not torch.equal(runs[1][0].Wy, model.Wy)


def test_a_kernel_that_does_not_build_leaves_inductors_update_with_one_warning(tmp_path, monkeypatch, capsys):
    """A compiler that fails: both flag sets are tried (with OpenMP, then without), one warning line, no
    library left behind, kernel() None from then on without trying again, and CompiledStep does not defer."""
    log = tmp_path / 'calls'
    fake = tmp_path / 'c++'
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\necho "fatal error: omp.h: No such file" >&2\nexit 1\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(row_kernel, 'compiler', lambda: str(fake))
    monkeypatch.setattr(row_kernel, 'cache_folder', lambda: str(tmp_path / 'cache'))
    monkeypatch.setattr(row_kernel, '_kernel', None)
    monkeypatch.setattr(row_kernel, '_failed', False)
    assert row_kernel.kernel() is None and row_kernel.kernel() is None
    calls = log.read_text().splitlines()
    assert len(calls) == 2 and '-fopenmp' in calls[0] and '-fopenmp' not in calls[1]
    assert capsys.readouterr().err.splitlines() == [
        'warning: the row update kernel did not compile (fatal error: omp.h: No such file); the compiled step '
        "keeps Inductor's row update"]
    assert os.listdir(tmp_path / 'cache') == []
    model = type('Model', (), {'Wy': torch.zeros(3, 2), 'By': torch.zeros(3), 'mode': 'shared'})()
    state = {'acc': torch.zeros(3, 2), 'velocity': torch.zeros(3, 2)}
    bias_state = {'acc': torch.zeros(3), 'velocity': torch.zeros(3)}
    step = static_step.CompiledStep()
    step.last = (model, None, ([state, bias_state], [], [], (0.1, 0.0, 1e-6)))
    assert not step.fits_kernel(model)


@compiler
def test_the_kernel_is_built_once_and_reused(tmp_path, monkeypatch):
    """The library goes to the cache folder under a key of source, compiler and flags; a second build finds it
    and runs no compiler."""
    cxx = row_kernel.compiler()
    path = row_kernel.build(cxx, row_kernel.FLAGS[0], str(tmp_path))
    assert os.listdir(tmp_path) == [os.path.basename(path)]
    monkeypatch.setattr(row_kernel.subprocess, 'run', lambda *a, **k: pytest.fail('compiled again'))
    assert row_kernel.build(cxx, row_kernel.FLAGS[0], str(tmp_path)) == path
    table, state, rows, source, grad, *rest = update_case(50, 3, 0.0, False, seed=1)
    before = table.clone()
    row_kernel.load(path)(table.data_ptr(), state['acc'].data_ptr(), state['velocity'].data_ptr(), rows.data_ptr(),
                          source.data_ptr(), grad.data_ptr(), len(rows), None, None, 0, None, len(rows), 3, 0.1,
                          0.0, 1e-6, 1)
    assert not torch.equal(table, before)


def test_fits():
    table, state = torch.zeros(4, 3), {'acc': torch.zeros(4, 3), 'velocity': torch.zeros(4, 3)}
    rows, grad = torch.tensor([0, 2]), torch.zeros(2, 3)
    assert row_kernel.fits(table, state, rows, grad)
    assert not row_kernel.fits(table.double(), state, rows, grad)
    assert not row_kernel.fits(table, state, rows.int(), grad)
    assert not row_kernel.fits(table, state, rows, torch.zeros(3, 2).T)            # not contiguous
    assert not row_kernel.fits(table, {**state, 'velocity': torch.zeros(4, 2)}, rows, grad)
    assert not row_kernel.fits(torch.zeros(4, 3, device='meta'), state, rows, grad)
