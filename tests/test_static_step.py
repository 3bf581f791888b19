"""static_step.py (issue #31): the static-shape step equals GRU4Rec.train_step + AdagradM.update bit for bit
on the CPU, for every loss family, both embedding modes, dropout, logQ and momentum on or off."""
import copy
import os
import shutil

import pytest
import torch

from config import DEFAULTS, PRESETS
from conftest import synthetic_split
from dataset import SessionData
import static_step
from training import training_setup


def test_segments_by_hand():
    ids = torch.tensor([7, 3, 7, 9, 3, 3])
    sorted_ids, sorted_segment, segment, rows, used = static_step.segments(ids)
    assert sorted_ids.tolist() == [3, 3, 3, 7, 7, 9]
    assert sorted_segment.tolist() == [0, 0, 0, 1, 1, 2]
    assert segment.tolist() == [1, 0, 1, 2, 0, 0]                 # each id's distinct row
    assert rows.tolist() == [3, 7, 9, 0, 0, 0]                    # past the last distinct id: row 0
    assert used.tolist() == [True, True, True, False, False, False]


def test_row_update_touches_each_row_once_and_leaves_untouched_segments():
    table = torch.tensor([[1.0], [2.0], [3.0]])
    state = {'acc': torch.tensor([[0.0], [1.0], [3.0]]), 'velocity': torch.tensor([[0.5], [0.5], [0.5]])}
    ids = torch.tensor([2, 0, 2, 2])              # row 2 three times, row 0 once, row 1 not at all
    sorted_ids, sorted_segment, segment, rows, used = static_step.segments(ids)
    grad = torch.tensor([[1.0], [2.0], [0.0], [0.0]])     # per segment: row 0 gets 1, row 2 gets 2
    touched = torch.tensor([False, True, False, False])  # row 0's segment masked: it must keep its values
    static_step.row_update(table, state, rows, grad, sorted_ids, sorted_segment, 0.1, 0.5, 1e-6, touched)
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
}


@pytest.fixture(scope='module')
def train(tmp_path_factory):
    folder = tmp_path_factory.mktemp('static')
    synthetic_split(folder, 600, 120, seed=4)
    return SessionData(os.path.join(folder, 'rsc15_train_full.txt'))


def run(config, train, static, n_steps):
    torch.manual_seed(config['seed'])
    model, optimizer, loss, iterator, sampler, logq = training_setup(config, train, 'cpu')
    static_step.init_state(optimizer)
    hidden = model.init_hidden(iterator.n_slots, 'cpu')
    losses = []
    for inputs, targets, reset, keep in iterator.torch_steps('cpu'):
        if len(losses) == n_steps or keep is not None:
            break
        samples = sampler.next()
        candidates = torch.cat([targets, samples])
        correction = None if logq is None else torch.cat([logq[0][targets], logq[1][samples]])
        if static:
            reset = torch.zeros(len(inputs), dtype=torch.bool) if reset is None else reset
            value, hidden = static_step.static_step(model, optimizer, loss, inputs, hidden, candidates, reset,
                                                    correction)
        else:
            if reset is not None:
                hidden = [h.masked_fill(reset[:, None], 0.0) for h in hidden]
            value, hidden = model.train_step(inputs, hidden, candidates, loss, correction)
            optimizer.update()
        losses.append(value.item())
    return model, optimizer, losses, hidden


@pytest.mark.parametrize('case', list(CASES))
def test_static_step_equals_the_fast_step_bit_for_bit(train, case):
    config = {**DEFAULTS, **CASES[case], 'sample_store': 20_000}
    for n_steps in (1, 30):
        fast, static = run(config, train, False, n_steps), run(config, train, True, n_steps)
        assert len(fast[2]) == n_steps and fast[2] == static[2]
        for (name, a), b in zip(fast[0].named_parameters(), static[0].parameters()):
            assert torch.equal(a, b), (case, n_steps, name)
        for p in fast[0].parameters():
            for key in ('acc', 'velocity'):
                assert torch.equal(fast[1].state[p][key], static[1].state[static_param(static[0], fast[0], p)][key])
        assert all(torch.equal(a, b) for a, b in zip(fast[3], static[3]))


def static_param(static_model, fast_model, p):
    """The parameter of static_model at p's place in fast_model."""
    index = [q is p for q in fast_model.parameters()].index(True)
    return list(static_model.parameters())[index]


@pytest.mark.skipif(not any(shutil.which(c) for c in ('g++', 'c++', 'clang++')), reason='no C++ compiler for Inductor')
def test_compiled_static_step_equals_the_eager_one_from_a_common_state(train):
    """torch.compile(fullgraph=True) of the static step (Inductor's C++ kernels): one step from the state
    after 20 eager steps gives the same weights and optimiser state to float rounding. One step from a common
    state, not 200 steps each: training amplifies rounding differences (a 1e-7 relative change of W_y grows to
    0.26 in 30 steps; static_step's docstring)."""
    from torch._inductor import config as inductor
    config = {**DEFAULTS, **CASES['XE + logQ, shared, dropout, momentum'], 'sample_store': 20_000}
    model, optimizer, loss, iterator, sampler, logq = training_setup(config, train, 'cpu')
    static_step.init_state(optimizer)
    hidden = model.init_hidden(iterator.n_slots, 'cpu')
    steps = iterator.torch_steps('cpu')
    for step in range(21):
        inputs, targets, reset, _ = next(steps)
        samples = sampler.next()
        candidates = torch.cat([targets, samples])
        correction = torch.cat([logq[0][targets], logq[1][samples]])
        reset = torch.zeros(len(inputs), dtype=torch.bool) if reset is None else reset
        if step < 20:
            hidden = static_step.static_step(model, optimizer, loss, inputs, hidden, candidates, reset, correction)[1]
    state = torch.get_rng_state()
    twin = copy.deepcopy((model, optimizer))
    eager_loss, eager_hidden = static_step.static_step(model, optimizer, loss, inputs, hidden, candidates, reset,
                                                       correction)
    torch.set_rng_state(state)
    fallback, inductor.fallback_random = inductor.fallback_random, True     # the eager dropout draws
    try:
        compiled = torch.compile(static_step.static_step, fullgraph=True)
        compiled_loss, compiled_hidden = compiled(*twin, loss, inputs, hidden, candidates, reset, correction)
    finally:
        inductor.fallback_random = fallback
    assert compiled_loss.item() == pytest.approx(eager_loss.item(), rel=1e-6)
    for (name, a), b in zip(model.named_parameters(), twin[0].parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), name
        for key in ('acc', 'velocity'):
            assert torch.allclose(optimizer.state[a][key], twin[1].state[b][key], rtol=1e-5, atol=1e-7), (name, key)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(eager_hidden, compiled_hidden))
