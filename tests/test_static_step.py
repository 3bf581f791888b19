"""static_step.py (issue #31): the static-shape step equals GRU4Rec.train_step + AdagradM.update bit for bit
on the CPU, for every loss family, both embedding modes, dropout, logQ and momentum on or off."""
import copy
import math
import os

import pytest
import torch

from config import DEFAULTS, PRESETS
from conftest import ReplayOnCPU, synthetic_split
from dataset import SessionData
from devices import has_compiler
import static_step
from training import training_setup


@pytest.mark.parametrize('n_items', [None, 10], ids=['sorted', 'marked'])
def test_segments_by_hand(n_items):
    ids = torch.tensor([7, 3, 7, 9, 3, 3])
    segment, rows, source = static_step.segments(ids, n_items)
    assert segment.tolist() == [1, 0, 1, 2, 0, 0]                 # each id's distinct row
    assert rows.tolist() == [3, 7, 9, 9, 9, 9]                    # past the last distinct id: that id again
    assert source.tolist() == [0, 1, 2, 2, 2, 2]                  # ... with its segment's values


def test_segments_marked_in_the_item_table_equal_the_sorted_ones():
    """segments() with the ids' range (up to DENSE_ITEMS: marks and a cumsum over the items) gives the three
    tensors of the sort, dtypes included: random ids with and without repeats, one id, a single item, every
    item, the last item alone."""
    generator = torch.Generator().manual_seed(3)
    cases = [(torch.randint(0, n, (k,), generator=generator), n)
             for n, k in [(1, 1), (1, 5), (2, 7), (50, 3), (50, 200), (500, 64), (5000, 2112)]]
    cases += [(torch.randperm(40, generator=generator), 40), (torch.tensor([39, 39]), 40), (torch.tensor([0]), 40)]
    for ids, n_items in cases:
        assert n_items <= static_step.DENSE_ITEMS
        for marked, by_sort in zip(static_step.segments(ids, n_items), static_step.segments(ids)):
            assert marked.dtype == by_sort.dtype and torch.equal(marked, by_sort), (ids.tolist()[:8], n_items)


def reference_segments(ids, primary):
    """segments() the slow way: the distinct ids of ids[:primary] in increasing order, then the other distinct
    ids in increasing order; the segments past them repeat the last one."""
    ids = ids.tolist()
    first = sorted(set(ids[:primary]))
    order = first + sorted(set(ids[primary:]) - set(first))
    source = [min(k, len(order) - 1) for k in range(len(ids))]
    return [order.index(i) for i in ids], [order[k] for k in source], source


@pytest.mark.parametrize('n_items', [None, 1000], ids=['sorted', 'marked'])
def test_segments_with_the_primary_ids_first(n_items):
    """segments(primary=P), by hand and against the slow reference: the first P ids' distinct values take the
    first segments (the shared mode's candidates), an id past P that is also among them takes its segment."""
    segment, rows, source = static_step.segments(torch.tensor([7, 3, 9, 1, 3, 9]), n_items, primary=3)
    assert segment.tolist() == [1, 0, 2, 3, 0, 2]
    assert rows.tolist() == [3, 7, 9, 1, 1, 1]
    assert source.tolist() == [0, 1, 2, 3, 3, 3]
    generator = torch.Generator().manual_seed(5)
    for n, k, primary in [(1000, 40, 30), (50, 40, 30), (1000, 8, 1), (20, 300, 200), (1000, 5, 5), (3, 9, 4)]:
        ids = torch.randint(0, n, (k,), generator=generator)
        got = [t.tolist() for t in static_step.segments(ids, n_items, primary=primary)]
        assert got == list(reference_segments(ids, primary)), (n, k, primary)


def test_row_update_touches_each_row_once_and_leaves_untouched_segments():
    table = torch.tensor([[1.0], [2.0], [3.0]])
    state = {'acc': torch.tensor([[0.0], [1.0], [3.0]]), 'velocity': torch.tensor([[0.5], [0.5], [0.5]])}
    ids = torch.tensor([2, 0, 2, 2])              # row 2 three times, row 0 once, row 1 not at all
    segment, rows, source = static_step.segments(ids)
    grad = torch.tensor([[1.0], [2.0], [0.0], [0.0]])     # per segment: row 0 gets 1, row 2 gets 2
    touched = torch.tensor([False, True, False, False])  # row 0's segment masked: it must keep its values
    static_step.row_update(table, state, rows, source, grad, 0.1, 0.5, 1e-6, touched)
    # row 2: G = 3 + 4 = 7, v = 0.5 * 0.5 - 0.1 * 2 / sqrt(7 + 1e-6), theta = 3 + v (once, not three times)
    v = 0.25 - 0.2 / (7 + 1e-6) ** 0.5
    assert torch.allclose(table, torch.tensor([[1.0], [2.0], [3.0 + v]]))
    assert torch.allclose(state['acc'], torch.tensor([[0.0], [1.0], [7.0]]))
    assert torch.allclose(state['velocity'], torch.tensor([[0.5], [0.5], [v]]))


CASES = {
    'XE + logQ, shared, dropout, momentum': dict(PRESETS['rsc15_xe_shared_100'], layers=[40], n_sample=64),
    'BPR-max ELU, shared, two layers': dict(PRESETS['bprmax_shared'], layers=[24, 24], n_sample=64, batch_size=16),
    'TOP1-max (autograd loss), no momentum': dict(PRESETS['bprmax_shared'], loss_type='top1-max', final_act='elu-1',
                                                  layers=[16], n_sample=32, batch_size=16, momentum=0.0),
    'XE, separate embedding, input dropout': dict(PRESETS['rsc15_xe_shared_100'], constrained_embedding=False,
                                                  embedding_dim=12, layers=[20], n_sample=32, batch_size=16,
                                                  dropout_input=0.2),
    'BPR, one-hot input, two layers, both dropouts, momentum': dict(PRESETS['iclr16_bpr'], layers=[12, 10],
                                                                    dropout_input=0.25, dropout_hidden=0.3,
                                                                    batch_size=16, n_sample=24),
}


@pytest.fixture(scope='module')
def train(tmp_path_factory):
    folder = tmp_path_factory.mktemp('static')
    synthetic_split(folder, 600, 120, seed=4)
    return SessionData(os.path.join(folder, 'rsc15_train_full.txt'))


@pytest.mark.parametrize('case', list(CASES))
def test_static_step_equals_the_fast_step_from_a_common_state(train, case):
    """At each of the first 30 steps of a fast run (session starts among them), one static step and one fast
    step (the one-hot mode: the plain step, forward and autograd) from the same state (weights, optimiser,
    RNG): the same loss and the same update to float rounding.
    Not bit for bit: the top state's gradient is an (M x C) @ (C x L) product over the segments, candidates'
    rows first, where the fast step's is (M x U) @ (U x L) in the ids' order (static_step's docstring)."""
    config = {**DEFAULTS, **CASES[case], 'sample_store': 20_000}
    torch.manual_seed(config['seed'])
    model, optimizer, loss, iterator, sampler, logq = training_setup(config, train, 'cpu')
    static_step.init_state(optimizer)
    hidden = model.init_hidden(iterator.n_slots, 'cpu')
    resets = 0
    for n, (inputs, targets, reset, keep) in enumerate(iterator.torch_steps('cpu')):
        if n == 30 or keep is not None:
            break
        samples = sampler.next()
        candidates = torch.cat([targets, samples])
        correction = None if logq is None else torch.cat([logq[0][targets], logq[1][samples]])
        twin_model, twin_optimizer = copy.deepcopy((model, optimizer))
        mask = torch.zeros(len(inputs), dtype=torch.bool) if reset is None else reset
        resets += n > 0 and reset is not None
        rng = torch.get_rng_state()
        static_loss, static_hidden = static_step.static_step(twin_model, twin_optimizer, loss, inputs, hidden,
                                                             candidates, mask, correction)
        torch.set_rng_state(rng)
        if reset is not None:
            hidden = [h.masked_fill(reset[:, None], 0.0) for h in hidden]
        if model.has_fast_step:
            fast_loss, hidden = model.train_step(inputs, hidden, candidates, loss, correction)
        else:
            optimizer.zero_grad(set_to_none=True)
            scores, hidden = model(inputs, hidden, candidates)
            fast_loss = loss(scores if correction is None else scores - correction)
            fast_loss.backward()
            hidden = [h.detach() for h in hidden]
        optimizer.update()
        assert static_loss.item() == pytest.approx(fast_loss.item(), rel=1e-6), (case, n)
        for (name, a), b in zip(model.named_parameters(), twin_model.parameters()):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), (case, n, name)
            for key in ('acc', 'velocity'):
                assert torch.allclose(optimizer.state[a][key], twin_optimizer.state[b][key], rtol=1e-5,
                                      atol=1e-7), (case, n, name, key)
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(hidden, static_hidden)), (case, n)
    assert n == 30 and resets > 0


def assert_same_step(eager, compiled):
    """The (model, optimiser, loss, hidden) after one eager and one compiled step from one state: the same
    loss, weights, optimiser state and hidden state to float rounding."""
    model, optimizer, eager_loss, eager_hidden = eager
    twin_model, twin_optimizer, compiled_loss, compiled_hidden = compiled
    assert compiled_loss.item() == pytest.approx(eager_loss.item(), rel=1e-6)
    for (name, a), b in zip(model.named_parameters(), twin_model.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), name
        for key in ('acc', 'velocity'):
            assert torch.allclose(optimizer.state[a][key], twin_optimizer.state[b][key], rtol=1e-5, atol=1e-7), \
                (name, key)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(eager_hidden, compiled_hidden))


@pytest.mark.skipif(not has_compiler(), reason='no C++ compiler for Inductor')
@pytest.mark.parametrize('case', ['XE + logQ, shared, dropout, momentum',
                                  'XE, separate embedding, input dropout',
                                  'BPR, one-hot input, two layers, both dropouts, momentum'])
def test_compiled_static_step_equals_the_eager_one_from_a_common_state(train, case, monkeypatch):
    """torch.compile(fullgraph=True) of the static step (Inductor's C++ kernels): one step from the state
    after 20 eager steps gives the same weights and optimiser state to float rounding. One step from a common
    state, not 200 steps each: training amplifies rounding differences (a 1e-7 relative change of W_y grows to
    0.26 in 30 steps; static_step's docstring). BPR takes its gradient from autograd (Dynamo's
    trace_autograd_ops, as CompiledStep sets it).
    And the kernels add nothing atomically: a sum of rows that Inductor writes with atomic adds over
    threads (its lowering of index_add_) adds duplicates in whatever order the threads meet, so a compiled run
    on two or more threads would not repeat itself bit for bit (seen before 2026-12-07: two runs from one
    state parted after 10 steps at the RSC15 setting). Read from the generated code, not from two runs that
    may or may not race."""
    from torch._dynamo import config as dynamo
    from torch._inductor import config as inductor
    from torch._inductor.utils import run_and_get_code
    if static_step.traces_autograd():
        monkeypatch.setattr(dynamo, 'trace_autograd_ops', True)
    config = {**DEFAULTS, **CASES[case], 'sample_store': 20_000}
    model, optimizer, loss, iterator, sampler, logq = training_setup(config, train, 'cpu')
    static_step.init_state(optimizer)
    hidden = model.init_hidden(iterator.n_slots, 'cpu')
    steps = iterator.torch_steps('cpu')
    for step in range(21):
        inputs, targets, reset, _ = next(steps)
        samples = sampler.next()
        candidates = torch.cat([targets, samples])
        correction = None if logq is None else torch.cat([logq[0][targets], logq[1][samples]])
        reset = torch.zeros(len(inputs), dtype=torch.bool) if reset is None else reset
        if step < 20:
            hidden = static_step.static_step(model, optimizer, loss, inputs, hidden, candidates, reset, correction)[1]
    state = torch.get_rng_state()
    twin = copy.deepcopy((model, optimizer))
    eager_loss, eager_hidden = static_step.static_step(model, optimizer, loss, inputs, hidden, candidates, reset,
                                                       correction)
    torch.set_rng_state(state)
    fallback, inductor.fallback_random = inductor.fallback_random, True     # the eager dropout draws
    threads = torch.get_num_threads()
    torch.set_num_threads(2)        # Inductor writes parallel loops (and atomic adds in them) only for 2+ threads
    try:
        compiled = torch.compile(static_step.static_step, fullgraph=True)
        (compiled_loss, compiled_hidden), code = run_and_get_code(compiled, *twin, loss, inputs, hidden, candidates,
                                                                  reset, correction)
    finally:
        inductor.fallback_random = fallback
        torch.set_num_threads(threads)
    assert code and all('cpp_fused' in c and 'atomic_add' not in c for c in code)
    assert_same_step((model, optimizer, eager_loss, eager_hidden), (*twin, compiled_loss, compiled_hidden))


@pytest.mark.skipif(not has_compiler(), reason='no C++ compiler for Inductor')
@pytest.mark.skipif(not static_step.traces_autograd(), reason="this torch's Dynamo cannot trace autograd.grad")
def test_a_loss_without_a_written_gradient_compiles_whole(train, monkeypatch, capsys):
    """TOP1 takes its gradient from autograd on the scores; Dynamo traces that only with its trace_autograd_ops
    flag, which CompiledStep sets (found off here, as in a fresh process): the step compiles with no fallback
    and one compiled step from a common state equals one eager static step to float rounding."""
    from torch._dynamo import config as dynamo
    monkeypatch.setattr(dynamo, 'trace_autograd_ops', False)
    monkeypatch.setattr(static_step.CompiledStep, 'failed', False)
    config = {**DEFAULTS, **CASES['TOP1-max (autograd loss), no momentum'], 'loss_type': 'top1',
              'final_act': 'tanh', 'momentum': 0.2, 'sample_store': 20_000}
    model, optimizer, loss, iterator, sampler, _ = training_setup(config, train, 'cpu')
    assert loss.explicit is None
    static_step.init_state(optimizer)
    hidden = model.init_hidden(iterator.n_slots, 'cpu')
    steps = iterator.torch_steps('cpu')
    for step in range(11):
        inputs, targets, reset, _ = next(steps)
        candidates = torch.cat([targets, sampler.next()])
        reset = torch.zeros(len(inputs), dtype=torch.bool) if reset is None else reset
        if step < 10:
            hidden = static_step.static_step(model, optimizer, loss, inputs, hidden, candidates, reset, None)[1]
    twin, state = copy.deepcopy((model, optimizer)), torch.get_rng_state()      # (the dropout's draws)
    compiled_before = len(static_step.COMPILE_SECONDS)
    eager_loss, eager_hidden = static_step.static_step(model, optimizer, loss, inputs, hidden, candidates, reset,
                                                       None)
    torch.set_rng_state(state)
    compiled = static_step.CompiledStep()      # (sets Inductor's fallback_random: the eager dropout draws)
    compiled_loss, compiled_hidden = compiled(*twin, loss, inputs, hidden, candidates, reset, None)
    assert not static_step.CompiledStep.failed and 'did not compile' not in capsys.readouterr().err
    assert list(compiled.functions) == ['cpp']         # Inductor's C++ wrapper on the CPU (CPP_WRAPPER)
    assert len(static_step.COMPILE_SECONDS) == compiled_before + 1
    assert_same_step((model, optimizer, eager_loss, eager_hidden), (*twin, compiled_loss, compiled_hidden))


# ---------------------------------------------------------------- --step_mode in the training loop

def weights_of(path):
    return torch.load(path, weights_only=True)['model']


def test_step_modes_in_training_the_tail_and_resume_across_modes(tmp_path, capsys, monkeypatch):
    """--step_mode static: the epoch's tail, where the batch shrinks, runs on the fast step; a static run
    resumed ends as the uninterrupted static run, bit for bit; a run started fast resumes static."""
    import main
    from conftest import write_split
    from model import GRU4Rec
    train = write_split(tmp_path / 'train.txt', [(s, f'i{(s * 3 + k * (1 + s % 4)) % 13}', 10 * s + k)
                                                  for s in range(60) for k in range(3 + s % 3)])
    common = ['--train_data', train, '--layers', '16', '--batch_size', '8', '--n_sample', '16',
              '--dropout_hidden', '0.2', '--momentum', '0.3', '--logq', '1', '--sample_store', '1000',
              '--step_mode', 'static']
    calls = []
    real = GRU4Rec.train_step
    monkeypatch.setattr(GRU4Rec, 'train_step', lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    straight, _ = main.main([*common, '--n_epochs', '2', '--checkpoint_dir', str(tmp_path / 'straight')])
    assert 'step: static' in capsys.readouterr().out
    assert calls and max(calls) < 8           # the fast step ran only where fewer than the 8 slots were left
    first, _ = main.main([*common, '--n_epochs', '1', '--checkpoint_dir', str(tmp_path / 'halves')])
    second, _ = main.main(['--resume', os.path.dirname(first), '--n_epochs', '2'])
    for name, value in weights_of(straight).items():
        assert torch.equal(value, weights_of(second)[name]), name
    fast, _ = main.main([*common[:-2], '--n_epochs', '1', '--checkpoint_dir', str(tmp_path / 'mixed')])
    assert 'step: fast' in capsys.readouterr().out
    resumed, _ = main.main(['--resume', os.path.dirname(fast), '--n_epochs', '2', '--step_mode', 'static'])
    assert 'step: static' in capsys.readouterr().out
    state = torch.load(resumed, weights_only=True)
    assert state['config']['step_mode'] == 'static' and state['epoch'] == 1 and math.isfinite(state['loss'])


def test_a_one_hot_static_run_resumed_ends_where_the_straight_run_ends(tmp_path, capsys):
    """The one-hot input (--loss_type TOP1's preset) trained static: 1 epoch + --resume to 2 equals 2 epochs in
    one go bit for bit; a plain run resumes static."""
    import main
    from conftest import write_split
    train = write_split(tmp_path / 'train.txt', [(s, f'i{(s * 3 + k * (1 + s % 4)) % 13}', 10 * s + k)
                                                  for s in range(60) for k in range(3 + s % 3)])
    common = ['--train_data', train, '--loss_type', 'TOP1', '--layers', '12', '--batch_size', '8',
              '--dropout_hidden', '0.3', '--momentum', '0.2', '--step_mode', 'static']
    straight, _ = main.main([*common, '--n_epochs', '2', '--checkpoint_dir', str(tmp_path / 'straight')])
    assert 'step: static' in capsys.readouterr().out
    first, _ = main.main([*common, '--n_epochs', '1', '--checkpoint_dir', str(tmp_path / 'halves')])
    second, _ = main.main(['--resume', os.path.dirname(first), '--n_epochs', '2'])
    assert 'step: static' in capsys.readouterr().out
    for name, value in weights_of(straight).items():
        assert torch.equal(value, weights_of(second)[name]), name
    plain, _ = main.main([*common[:-2], '--step_mode', 'fast', '--n_epochs', '1', '--checkpoint_dir',
                          str(tmp_path / 'plain')])
    assert 'step: plain' in capsys.readouterr().out
    resumed, _ = main.main(['--resume', os.path.dirname(plain), '--n_epochs', '2', '--step_mode', 'static'])
    assert 'step: static' in capsys.readouterr().out
    state = torch.load(resumed, weights_only=True)
    assert state['config']['step_mode'] == 'static' and state['epoch'] == 1 and math.isfinite(state['loss'])


def test_the_one_hot_mode_trains_static_with_its_tail_on_the_plain_step(train, monkeypatch, capsys):
    """The one-hot input has no fast step: --step_mode static trains it statically, the epoch's tail (fewer
    rows than slots) on the plain step, and its epoch lands where the plain epoch does (float rounding, grown
    over the epoch's steps); fast asks for the plain step; a graph mode on the CPU warns and trains plain."""
    from model import GRU4Rec
    from training import train_epoch
    config = {**DEFAULTS, **CASES['BPR, one-hot input, two layers, both dropouts, momentum'], 'sample_store': 20_000}
    torch.manual_seed(config['seed'])
    run = training_setup(config, train, 'cpu')
    monkeypatch.setattr(static_step, '_warned', set())
    assert [static_step.mode_in_effect(dict(config, step_mode=m), run[0], run[1])
            for m in ('static', 'compiled', 'fast', 'plain', 'graph')] == ['static', 'compiled', 'plain', 'plain', 'plain']
    assert capsys.readouterr().err.splitlines() == [
        'warning: --step_mode graph needs a CUDA device (CUDA graphs); training with the plain step']
    calls, real = [], GRU4Rec.forward
    monkeypatch.setattr(GRU4Rec, 'forward', lambda self, inputs, *a: calls.append(len(inputs)) or real(self, inputs, *a))
    static, targets, steps = train_epoch(*run, dict(config, step_mode='static'), 'cpu')
    tail = sum(len(step[0]) < config['batch_size'] for step in run[3].torch_steps('cpu'))
    assert 0 < tail < steps and len(calls) == tail and max(calls) < config['batch_size']   # only the tail ran plain
    calls.clear()
    torch.manual_seed(config['seed'])
    plain = train_epoch(*training_setup(config, train, 'cpu'), dict(config, step_mode='fast'), 'cpu')
    assert len(calls) == steps and plain[1:] == (targets, steps)
    assert static == pytest.approx(plain[0], rel=1e-4)


def aot_available():
    """Whether this torch compiles ahead of time (torch.compile(...).aot_compile), which DIRECT needs."""
    return hasattr(torch.compile(static_step.tensor_step), 'aot_compile')


def direct_and_dynamo_runs(train, case, steps, shrink_at=None):
    """The same `steps` compiled steps (one model state, batches and dropout draws) run by a CompiledStep with
    DIRECT on and by one with it off: [(its models' state_dict, losses, the CompiledStep)] for each. At the
    steps of `shrink_at` the batch loses its last slot (another shape: another compiled function)."""
    config = {**DEFAULTS, **CASES[case], 'sample_store': 20_000}
    torch.manual_seed(config['seed'])
    model, optimizer, loss, iterator, sampler, logq = training_setup(config, train, 'cpu')
    static_step.init_state(optimizer)
    batches, stream = [], iterator.torch_steps('cpu')
    for n in range(steps):
        inputs, targets, reset, _ = next(stream)
        samples = sampler.next()
        correction = None if logq is None else torch.cat([logq[0][targets], logq[1][samples]])
        reset = torch.zeros(len(inputs), dtype=torch.bool) if reset is None else reset
        batch = [inputs, torch.cat([targets, samples]), reset, correction]
        if n in (shrink_at or ()):
            batch[0], batch[2] = inputs[:-1], reset[:-1]
        batches.append(batch)
    runs = []
    for direct in (True, False):
        twin = copy.deepcopy((model, optimizer))
        step = static_step.CompiledStep()
        step.DIRECT = direct
        torch.manual_seed(7)
        hidden, losses = twin[0].init_hidden(iterator.n_slots, 'cpu'), []
        for inputs, candidates, reset, correction in batches:
            M = len(inputs)             # (a short batch leaves the last slot's state as it was)
            value, new = step(*twin, loss, inputs, [h[:M] for h in hidden], candidates, reset, correction)
            hidden = [torch.cat([n, h[M:]]) for n, h in zip(new, hidden)]
            losses.append(value.item())
        runs.append((twin[0].state_dict(), losses, step))
    return runs


@pytest.mark.skipif(not has_compiler(), reason='no C++ compiler for Inductor')
@pytest.mark.skipif(not aot_available(), reason='no ahead-of-time compilation: DIRECT calls through Dynamo')
@pytest.mark.parametrize('case', ['XE + logQ, shared, dropout, momentum',
                                  'BPR, one-hot input, two layers, both dropouts, momentum'])
def test_the_step_compiled_ahead_of_time_equals_dynamos_bit_for_bit(train, case, monkeypatch):
    """DIRECT (on the CPU): the compiled step called as Dynamo's ahead-of-time compiled function, without its
    frame evaluation, gives Dynamo's call's numbers bit for bit (the same graph and kernels; its .grad writes
    replayed by the function): losses and weights after 6 steps, row_kernel's deferred updates (shared mode)
    and an autograd loss (BPR, one-hot) alike. Calls of one setting check no guards after the first."""
    checks = []
    real = torch._dynamo.aot_compile.AOTCompiledFunction.guard_check
    monkeypatch.setattr(torch._dynamo.aot_compile.AOTCompiledFunction, 'guard_check',
                        lambda self, *a, **k: checks.append(1) or real(self, *a, **k))
    (direct, direct_losses, step), (dynamo, dynamo_losses, _) = direct_and_dynamo_runs(train, case, 6)
    assert len(step.direct) == 1 and checks == []
    assert direct_losses == dynamo_losses
    assert all(torch.equal(direct[name], dynamo[name]) for name in direct), case


@pytest.mark.skipif(not has_compiler(), reason='no C++ compiler for Inductor')
@pytest.mark.skipif(not aot_available(), reason='no ahead-of-time compilation: DIRECT calls through Dynamo')
def test_the_step_compiled_ahead_of_time_compiles_anew_for_another_shape(train, capsys):
    """A call of another shape (the batch one slot short at steps 2 and 3) checks the guards of the functions
    compiled so far, finds none that fits and compiles another; back at the first shape the first function's
    guards pass (no third compilation). The numbers stay Dynamo's, bit for bit. (After Dynamo has seen two
    shapes of a call, it compiles the next one with symbolic sizes, which then fits both. A function called at
    a shape it was not compiled for raises in Inductor's checks of its inputs: the C++ wrapper would be given
    up with a warning, and the Python one compiled instead.)"""
    case = 'XE + logQ, shared, dropout, momentum'
    torch._dynamo.reset()           # (no shape seen before: the first compilation is of static shapes)
    (direct, direct_losses, step), (dynamo, dynamo_losses, _) = direct_and_dynamo_runs(train, case, 6,
                                                                                    shrink_at=(2, 3))
    assert [wrapper for wrapper, _ in step.direct] == ['cpp', 'cpp'] and not step.cpp_failed
    assert 'warning' not in capsys.readouterr().err
    assert direct_losses == dynamo_losses
    assert all(torch.equal(direct[name], dynamo[name]) for name in direct)


@pytest.mark.skipif(not has_compiler(), reason='no C++ compiler for Inductor')
@pytest.mark.skipif(not aot_available(), reason='no ahead-of-time compilation: DIRECT calls through Dynamo')
def test_a_failed_ahead_of_time_compilation_calls_through_dynamo(train, monkeypatch, capsys):
    """Where Dynamo's ahead-of-time compilation raises (an older torch has none at all), the step is compiled
    and called through Dynamo, silently (it is still the compiled step) and with the same numbers."""

    class NoAheadOfTime:
        def __init__(self, function):
            self.function = function

        def __call__(self, *args, **kwargs):
            return self.function(*args, **kwargs)

        def aot_compile(self, example):
            raise RuntimeError('no ahead-of-time compilation')
    real = static_step.CompiledStep.function
    monkeypatch.setattr(static_step.CompiledStep, 'function', lambda self, w: NoAheadOfTime(real(self, w)))
    case = 'XE + logQ, shared, dropout, momentum'
    (direct, direct_losses, step), (dynamo, dynamo_losses, _) = direct_and_dynamo_runs(train, case, 3)
    assert step.direct == [] and step.direct_failed == {'cpp'} and not static_step.CompiledStep.failed
    assert 'warning' not in capsys.readouterr().err
    assert direct_losses == dynamo_losses
    assert all(torch.equal(direct[name], dynamo[name]) for name in direct)


def test_a_failed_compilation_falls_back_with_one_warning(train, monkeypatch, capsys):
    def no_compiler(*args, **kwargs):
        raise RuntimeError('no working C++ compiler found')

    monkeypatch.setattr(static_step.CompiledStep, 'failed', False)
    monkeypatch.setattr(static_step, '_compiled', None)
    config = {**DEFAULTS, **CASES['XE + logQ, shared, dropout, momentum'], 'sample_store': 20_000}
    from training import train_epoch
    torch.manual_seed(config['seed'])
    run = training_setup(config, train, 'cpu')
    calls, real = [], run[0].train_step
    monkeypatch.setattr(run[0], 'train_step', lambda *a, **k: calls.append(len(a[0])) or real(*a, **k))
    step = static_step.step_for('compiled', run[0], run[1])
    monkeypatch.setattr(step, 'function', lambda wrapper: no_compiler)      # the C++ wrapper, then the Python one
    loss = train_epoch(*run, dict(config, step_mode='compiled'), 'cpu', max_steps=5)[0]
    assert len(calls) == 4          # the failed step ran eagerly static, the other four on the fast step
    torch.manual_seed(config['seed'])                         # the same seeds, the eager static step
    reference = training_setup(config, train, 'cpu')
    assert loss == pytest.approx(train_epoch(*reference, dict(config, step_mode='static'), 'cpu', max_steps=5)[0],
                                 rel=1e-5)
    errors = capsys.readouterr().err.splitlines()
    assert errors == ['warning: the static step did not compile (RuntimeError: no working C++ compiler found); '
                      'training with the fast step']
    assert static_step.step_for('compiled', run[0], run[1]) is None        # later epochs: the fast step


@pytest.mark.skipif(not has_compiler(), reason='no C++ compiler for Inductor')
def test_a_failed_cpp_wrapper_compiles_with_the_python_one(train, monkeypatch, capsys):
    """Where Inductor's C++ wrapper fails to compile, the step compiles with its Python wrapper (one warning
    line) and every step of the epoch runs compiled; the C++ wrapper is not tried again. Off the CPU the
    Python wrapper is the one (CUDA graphs capture Inductor's Triton kernels from it)."""
    monkeypatch.setattr(static_step.CompiledStep, 'failed', False)
    monkeypatch.setattr(static_step, '_compiled', None)
    config = {**DEFAULTS, **CASES['XE + logQ, shared, dropout, momentum'], 'sample_store': 20_000}
    from training import train_epoch
    run = training_setup(config, train, 'cpu')
    calls, real = [], run[0].train_step
    monkeypatch.setattr(run[0], 'train_step', lambda *a, **k: calls.append(len(a[0])) or real(*a, **k))
    step = static_step.step_for('compiled', run[0], run[1])
    tried = []

    def no_cpp_wrapper(wrapper):            # the Python wrapper's step: the eager one (compiling it is tested above)
        tried.append(wrapper)
        if wrapper == 'cpp':
            raise RuntimeError('the C++ wrapper failed')
        return static_step.tensor_step
    monkeypatch.setattr(step, 'function', no_cpp_wrapper)
    train_epoch(*run, dict(config, step_mode='compiled'), 'cpu', max_steps=5)
    assert tried == ['cpp'] + ['python'] * 5 and calls == [] and not static_step.CompiledStep.failed
    assert capsys.readouterr().err.splitlines() == [
        "warning: Inductor's C++ wrapper did not compile (RuntimeError: the C++ wrapper failed); compiled with its "
        'Python wrapper']
    on_meta = copy.deepcopy(run[0]).to('meta')
    compiled = static_step.CompiledStep()
    assert compiled.wrapper(run[0]) == 'cpp' and compiled.wrapper(on_meta) == 'python'


def test_auto_picks_the_compiled_step_only_where_it_was_measured_faster(monkeypatch, capsys):
    from checkpoints import build_model
    from optimizer import make_optimizer
    model = build_model(DEFAULTS, 50, 'cpu')
    adagrad = make_optimizer('AdagradM', model.parameters(), 0.1)
    auto = static_step.auto_mode
    config = {'n_epochs': 10, 'batch_size': 200}
    assert auto(config, model, adagrad, 37_500, 300_000, 'cpu')[0] == 'compiled'     # 3M events x epochs
    assert auto(dict(config, batch_size=201), model, adagrad, 37_500, 300_000, 'cpu')[0] == 'fast'   # rees46's 240
    assert auto(config, model, adagrad, 2_499, 300_000, 'cpu')[0] == 'fast'          # candidates repeat too often
    assert auto(config, model, adagrad, 2_500, 300_000, 'cpu')[0] == 'compiled'
    assert auto(config, model, adagrad, 37_500, 199_999, 'cpu')[0] == 'fast'         # the compilation would not pay
    assert auto(dict(config, n_epochs=7), model, adagrad, 37_500, 300_000, 'cpu')[0] == 'compiled'
    assert auto(config, model, adagrad, 37_500, 300_000, 'cuda')[0] == 'fast'        # not measured on a GPU yet
    torch_adagrad = make_optimizer('Adagrad', model.parameters(), 0.1)
    assert auto(config, model, torch_adagrad, 37_500, 300_000, 'cpu')[0] == 'fast'
    assert auto(dict(config, fast_step=False), model, adagrad, 37_500, 300_000, 'cpu')[0] == 'fast'
    from loss import loss_function
    top1, xe = loss_function('top1', 'tanh', 200), loss_function('cross-entropy', 'softmax', 200)
    assert auto(config, model, adagrad, 37_500, 300_000, 'cpu', top1)[0] == 'compiled'
    assert capsys.readouterr().err == ''
    monkeypatch.setattr(static_step, 'traces_autograd', lambda: False)     # an older torch's Dynamo
    assert auto(config, model, adagrad, 37_500, 300_000, 'cpu', top1) == (
        'fast', "this torch's Dynamo cannot trace the loss's autograd gradient")
    assert auto(config, model, adagrad, 37_500, 300_000, 'cpu', xe)[0] == 'compiled'    # its gradient is written
    monkeypatch.undo()
    onehot = build_model({**DEFAULTS, **PRESETS['iclr16_top1']}, 50, 'cpu')      # no fast step: plain or static
    adagrad = make_optimizer('AdagradM', onehot.parameters(), 0.1)
    config = {'n_epochs': 10, 'batch_size': 50, 'n_sample': 0}
    assert auto(config, onehot, adagrad, 2_808, 300_000, 'cpu', top1)[0] == 'compiled'    # every item count
    assert auto(config, onehot, adagrad, 2_808, 199_999, 'cpu', top1)[0] == 'static'     # too short to compile
    assert auto(dict(config, batch_size=500), onehot, adagrad, 2_808, 300_000, 'cpu', xe)[0] == 'static'
    assert auto(dict(config, n_sample=2048), onehot, adagrad, 2_808, 300_000, 'cpu', top1)[0] == 'compiled'
    assert auto(dict(config, n_sample=2048), onehot, adagrad, 2_808, 199_999, 'cpu', top1)[0] == 'fast'  # plain
    assert auto(config, onehot, adagrad, 2_808, 300_000, 'cuda', top1)[0] == 'fast'     # (plain, in effect)
    import devices
    monkeypatch.setattr(devices.shutil, 'which', lambda name: None)
    assert auto(config, onehot, adagrad, 2_808, 300_000, 'cpu') == ('static', 'no C++ compiler')
    assert auto({'n_epochs': 10, 'batch_size': 200}, model, make_optimizer('AdagradM', model.parameters(), 0.1),
                37_500, 300_000, 'cpu') == ('fast', 'no C++ compiler')
    assert capsys.readouterr().err.splitlines() == [
        'warning: no C++ compiler for torch.compile (g++, c++ or clang++); training with the static step',
        'warning: no C++ compiler for torch.compile (g++, c++ or clang++); training with the fast step']


@pytest.mark.skipif(not has_compiler(), reason='no C++ compiler for Inductor')
def test_auto_in_a_run_is_recorded_resolved(tmp_path, capsys, monkeypatch):
    """main.py without --step_mode: the mode auto picks is in the header, config.json, the checkpoint and
    --is_eval's results.json; a compiled run also evaluates compiled, with the eager evaluation's numbers."""
    import json
    import main
    from conftest import write_split
    train = write_split(tmp_path / 'train.txt', [(s, f'i{(s * 3 + k * (1 + s % 4)) % 13}', 10 * s + k)
                                                  for s in range(60) for k in range(3 + s % 3)])
    common = ['--train_data', train, '--valid_data', train, '--layers', '16', '--batch_size', '8', '--n_sample',
              '16', '--sample_store', '1000', '--n_epochs', '1']
    small, small_metrics = main.main([*common, '--checkpoint_dir', str(tmp_path / 'small')])
    out = capsys.readouterr().out
    assert 'step: fast (auto: 13 items' in out and 'compiled the' not in out
    monkeypatch.setattr(static_step, 'AUTO_ITEMS', 10)
    monkeypatch.setattr(static_step, 'AUTO_WORK', 100)
    path, metrics = main.main([*common, '--checkpoint_dir', str(tmp_path / 'big')])
    out = capsys.readouterr().out
    assert 'step: compiled (auto: 13 items' in out and 'compiled the evaluation' in out
    with open(os.path.join(os.path.dirname(path), 'config.json')) as f:
        assert json.load(f)['step_mode'] == 'compiled'
    assert torch.load(path, weights_only=True)['config']['step_mode'] == 'compiled'
    evaluated = main.main(['--is_eval', '--load_model', path, '--valid_data', train])
    eager = main.main(['--is_eval', '--load_model', path, '--valid_data', train, '--step_mode', 'fast'])
    assert {k: v for k, v in evaluated.items() if '@' in k} == {k: v for k, v in eager.items() if '@' in k}
    assert {k: v for k, v in metrics.items() if '@' in k} == {k: v for k, v in evaluated.items() if '@' in k}
    with open(os.path.join(os.path.dirname(path), 'results.json')) as f:
        entry = json.load(f)[os.path.basename(path)]
    assert entry['step_mode'] == 'compiled' and entry['compiled_evaluation'] is False     # the last --is_eval: fast
    assert entry['graph_evaluation'] is False


def test_the_mode_in_effect():
    from checkpoints import build_model
    from optimizer import make_optimizer
    shared = build_model(DEFAULTS, 50, 'cpu')
    adagrad = make_optimizer('AdagradM', shared.parameters(), 0.1)
    torch_adagrad = make_optimizer('Adagrad', shared.parameters(), 0.1)     # its own rule: not the static step's
    onehot = build_model({**DEFAULTS, **PRESETS['iclr16_top1']}, 50, 'cpu')
    mode = static_step.mode_in_effect
    assert mode({'step_mode': 'compiled'}, shared, adagrad) == 'compiled'
    assert mode({'step_mode': 'static'}, shared, torch_adagrad) == 'fast'
    onehot_adagrad = make_optimizer('AdagradM', onehot.parameters(), 0.1)
    assert mode({'step_mode': 'static'}, onehot, onehot_adagrad) == 'static'          # the one-hot input: static
    assert mode({'step_mode': 'fast'}, onehot, onehot_adagrad) == 'plain'             # or plain, never fast
    assert mode({'step_mode': 'static', 'fast_step': False}, shared, adagrad) == 'plain'
    assert mode({}, shared, adagrad) == 'fast'
    assert mode({'step_mode': 'auto'}, shared, adagrad) == 'fast'     # unresolved (a bare train_epoch)


def test_the_evaluation_of_each_mode(monkeypatch):
    """evaluate()'s options per step mode: the compiled blocks in the compiled modes, the CUDA graph API in the
    graph modes, for a GRU4Rec on a CUDA device only (stood in for by patching graphs_possible)."""
    from baselines import Pop
    from checkpoints import build_model
    model = build_model(DEFAULTS, 50, 'cpu')
    options = static_step.evaluation_options
    assert options('fast', model) == options(None, model) == {'compiled': False, 'graphs': None}
    assert options('compiled', model) == options('compiled_graph', model) == {'compiled': True, 'graphs': None}
    assert options('graph', model) == {'compiled': False, 'graphs': None}         # a CPU model
    assert options('graph', Pop(50)) == {'compiled': False, 'graphs': None}      # no GRU4Rec
    monkeypatch.setattr(static_step, 'GRAPH_API', 'the CUDA graph API')
    monkeypatch.setattr(static_step, 'graphs_possible', lambda m: m is model)
    assert options('graph', model) == {'compiled': False, 'graphs': 'the CUDA graph API'}
    assert options('compiled_graph', model) == {'compiled': True, 'graphs': 'the CUDA graph API'}
    assert options('compiled', model) == {'compiled': True, 'graphs': None}
    assert options('static', model) == {'compiled': False, 'graphs': None}


@pytest.mark.skipif(not has_compiler(), reason='no C++ compiler for Inductor')
@pytest.mark.parametrize('direct', [True, False], ids=['ahead of time', 'through Dynamo'])
def test_new_models_reuse_the_compiled_step_and_past_the_recompile_limit(train, monkeypatch, capsys, direct):
    """A second model of the same settings reuses the compiled step (tune.py and faithfulness.py train many
    models in one process); another learning rate compiles anew. Past CompiledStep.RECOMPILE_LIMIT settings (64;
    1 here) the step compiled ahead of time (DIRECT, on the CPU) drops the oldest and compiles on; through
    Dynamo (as before 2026-12-08, and where torch lacks ahead-of-time compilation) a fullgraph compile raises
    at Dynamo's recompile limit: the run goes on with the fast step and one warning."""
    from torch._dynamo import config as dynamo
    from training import train_epoch
    if direct and not aot_available():
        pytest.skip('no ahead-of-time compilation: DIRECT calls through Dynamo')
    monkeypatch.setattr(static_step.CompiledStep, 'failed', False)
    monkeypatch.setattr(static_step.CompiledStep, 'DIRECT', direct)
    monkeypatch.setattr(static_step, '_compiled', None)
    monkeypatch.setattr(dynamo, 'recompile_limit', 1)
    monkeypatch.setattr(static_step.CompiledStep, 'RECOMPILE_LIMIT', 1)
    torch._dynamo.reset()
    config = {**DEFAULTS, **CASES['XE + logQ, shared, dropout, momentum'], 'sample_store': 20_000, 'step_mode': 'compiled'}
    losses = []
    for lr in (0.05, 0.05, 0.07):
        torch.manual_seed(config['seed'])
        losses.append(train_epoch(*training_setup(dict(config, lr=lr), train, 'cpu'), config, 'cpu', max_steps=3)[0])
    out, err = capsys.readouterr()
    assert out.count('compiled the static step in') == (2 if direct else 1) and losses[0] == losses[1]
    assert err.count('warning: the static step did not compile') == (0 if direct else 1) and 'Traceback' not in err
    assert len(static_step._compiled.direct) == (1 if direct else 0)
    eager = []
    for lr in (0.05, 0.07):
        torch.manual_seed(config['seed'])
        run = training_setup(dict(config, lr=lr), train, 'cpu')
        eager.append(train_epoch(*run, dict(config, step_mode='static'), 'cpu', max_steps=3)[0])
    assert losses[2] == pytest.approx(eager[1], rel=1e-5) and losses[0] == pytest.approx(eager[0], rel=1e-5)
    assert eager[0] != pytest.approx(eager[1], rel=1e-3)
    torch._dynamo.reset()


# ---------------------------------------------------------------- CUDA graph replay, with a CPU stand-in

def test_graph_step_replays_the_static_step_bit_for_bit(train, monkeypatch):
    """30 training steps through GraphStep (3 warm-up calls, one capture, replays fed through its input
    buffers: items, candidates, reset masks at session starts, logQ, the hidden state) end where 30 static
    steps end, bit for bit."""
    config = {**DEFAULTS, **CASES['XE + logQ, shared, dropout, momentum'], 'sample_store': 20_000}
    runs = []
    for graph in (False, True):
        torch.manual_seed(config['seed'])
        model, optimizer, loss, iterator, sampler, logq = training_setup(config, train, 'cpu')
        static_step.init_state(optimizer)
        api = ReplayOnCPU(model, optimizer)
        step = static_step.GraphStep(static_step.static_step, api) if graph else static_step.static_step
        hidden, losses = model.init_hidden(iterator.n_slots, 'cpu'), []
        for n, (inputs, targets, reset, keep) in enumerate(iterator.torch_steps('cpu')):
            if n == 30:
                break
            assert keep is None
            samples = sampler.next()
            candidates = torch.cat([targets, samples])
            correction = torch.cat([logq[0][targets], logq[1][samples]])
            reset = torch.zeros(len(inputs), dtype=torch.bool) if reset is None else reset
            value, hidden = step(model, optimizer, loss, inputs, hidden, candidates, reset, correction)
            losses.append(value.item())
        runs.append((losses, {k: v.clone() for k, v in model.state_dict().items()}, [h.clone() for h in hidden]))
    assert api.captures == 1 and api.replays == 30 - static_step.GraphStep.WARMUP
    assert runs[0][0] == runs[1][0]
    for name, value in runs[0][1].items():
        assert torch.equal(value, runs[1][1][name]), name
    assert all(torch.equal(a, b) for a, b in zip(runs[0][2], runs[1][2]))


def test_graph_modes_in_the_training_loop_and_their_fallbacks(train, monkeypatch, capsys):
    """--step_mode graph in train_epoch (the epoch's tail on the fast step, the loss read from the graph's
    output at once) gives the static mode's epoch bit for bit; on a CPU model the graph modes warn once and
    train with the fast step; a capture that fails warns once and runs the step uncaptured."""
    from training import train_epoch
    config = {**DEFAULTS, **CASES['XE + logQ, shared, dropout, momentum'], 'sample_store': 20_000}
    torch.manual_seed(config['seed'])
    static = train_epoch(*training_setup(config, train, 'cpu'), dict(config, step_mode='static'), 'cpu')
    monkeypatch.setattr(static_step, '_graphs', {})
    monkeypatch.setattr(static_step, '_warned', set())
    torch.manual_seed(config['seed'])
    run = training_setup(config, train, 'cpu')
    api = ReplayOnCPU(run[0], run[1])
    monkeypatch.setattr(static_step, 'GRAPH_API', api)
    monkeypatch.setattr(static_step, 'graphs_possible', lambda model: True)
    assert static_step.mode_in_effect(dict(config, step_mode='graph'), run[0], run[1]) == 'graph'
    assert train_epoch(*run, dict(config, step_mode='graph'), 'cpu') == static
    assert api.captures == 1 and api.replays > 20

    monkeypatch.undo()
    monkeypatch.setattr(static_step, '_warned', set())
    torch.manual_seed(config['seed'])
    fast = train_epoch(*training_setup(config, train, 'cpu'), config, 'cpu', max_steps=20)
    for mode in ('graph', 'graph', 'compiled_graph'):
        torch.manual_seed(config['seed'])
        run = training_setup(config, train, 'cpu')
        assert static_step.mode_in_effect(dict(config, step_mode=mode), run[0], run[1]) == 'fast'
        assert train_epoch(*run, dict(config, step_mode=mode), 'cpu', max_steps=20) == fast
    assert capsys.readouterr().err.splitlines() == [
        f'warning: --step_mode {m} needs a CUDA device (CUDA graphs); training with the fast step'
        for m in ('graph', 'compiled_graph')]

    def refuse(function):
        raise RuntimeError('operation not permitted when stream is capturing')

    class Refusing(ReplayOnCPU):
        capture = staticmethod(refuse)

    monkeypatch.setattr(static_step.GraphStep, 'failed', False)
    torch.manual_seed(config['seed'])
    reference = train_epoch(*training_setup(config, train, 'cpu'), dict(config, step_mode='static'), 'cpu', max_steps=20)
    torch.manual_seed(config['seed'])
    run = training_setup(config, train, 'cpu')
    static_step.init_state(run[1])
    step = static_step.GraphStep(static_step.static_step, Refusing(run[0], run[1]))
    monkeypatch.setattr(static_step, 'step_for', lambda *args: step)
    assert train_epoch(*run, dict(config, step_mode='graph'), 'cpu', max_steps=20) == reference
    assert capsys.readouterr().err.splitlines() == [
        'warning: the static step could not be captured as a CUDA graph (RuntimeError: operation not permitted '
        'when stream is capturing); training without the graph']


def test_the_compiled_step_raises_torchs_recompile_limit(monkeypatch):
    """torch's default of 8 compiled settings a process (the 9th failed in a benchmark over the paramfiles on
    two data sets, leaving the rest eager): a CompiledStep raises it to RECOMPILE_LIMIT, never lowers it."""
    from torch._dynamo import config as dynamo
    monkeypatch.setattr(dynamo, 'recompile_limit', 8)
    static_step.CompiledStep()
    assert dynamo.recompile_limit == static_step.CompiledStep.RECOMPILE_LIMIT == 64
    monkeypatch.setattr(dynamo, 'recompile_limit', 100)
    static_step.CompiledStep()
    assert dynamo.recompile_limit == 100


@pytest.mark.skipif(not has_compiler(), reason='no C++ compiler for Inductor')
def test_compiled_step_at_the_issues_settings_after_1_and_200_steps(tmp_path):
    """Issue #31's check, as gpu_check.sh runs it on a GPU: XE at 100 units and BPR-max with ELU at 512 units
    (their paramfiles, dropout off), from the state after 1 and after 200 compiled steps one compiled step and
    one fast step from copies of that state: weights and optimiser state within 1e-5 of the largest value,
    losses within 1e-5. The static step, eager, is within float rounding of it: its one product over K segments
    instead of U rows (static_step's docstring) is bit-equal on some machines, 1.2e-6 of b_ih's largest value
    after one step on an AMD EPYC with AVX-512."""
    from scripts.gpu_check import step_mode_gaps
    synthetic_split(tmp_path, 3000, 400, seed=5)
    worst = step_mode_gaps(str(tmp_path / 'rsc15_train_full.txt'), 'cpu', ['static', 'compiled'], (1, 200), {})
    state, update, loss = worst['static']
    assert state <= 1e-5 and update <= 1e-5 and loss <= 1e-6
    state, update, loss = worst['compiled']
    assert 0 < state <= 1e-5 and loss <= 1e-5 and update < 1e-3


def test_graph_step_captures_anew_for_another_model_even_at_a_reused_id(train, monkeypatch):
    """A graph replays into the memory of the model it captured. A new model whose id is the old one's (CPython
    reuses the id of a freed object; forced here by making every id 0) must capture anew, not replay the old
    graph: GraphStep tells models apart by the objects themselves."""
    monkeypatch.setattr(static_step, 'id', lambda obj: 0, raising=False)
    config = {**DEFAULTS, **CASES['XE + logQ, shared, dropout, momentum'], 'sample_store': 20_000}
    step, captures, weights = None, [], []
    for _ in range(2):
        model, optimizer, loss, iterator, sampler, logq = training_setup(config, train, 'cpu')
        static_step.init_state(optimizer)
        api = ReplayOnCPU(model, optimizer)
        step = step or static_step.GraphStep(static_step.static_step, api)
        step.graphs = api
        hidden = model.init_hidden(iterator.n_slots, 'cpu')
        before = model.Wy.detach().clone()
        for n, (inputs, targets, reset, keep) in enumerate(iterator.torch_steps('cpu')):
            if n == 6:
                break
            candidates = torch.cat([targets, sampler.next()])
            reset = torch.zeros(len(inputs), dtype=torch.bool) if reset is None else reset
            hidden = step(model, optimizer, loss, inputs, hidden, candidates, reset, None)[1]
        captures.append(api.captures)
        weights.append(not torch.equal(before, model.Wy))
    assert captures == [1, 1] and weights == [True, True]     # the second model captured and trained itself
