"""evaluation.py: tie modes on hand-made score vectors, and the session-parallel evaluation against a
brute-force per-session loop written for the test (spec C)."""

import pytest
import torch

import evaluation
from conftest import write_split
from dataset import ItemMap, SessionData
from devices import has_compiler
from evaluation import evaluate, metrics_from_ranks, target_ranks
from model import GRU4Rec


def test_tie_modes_on_hand_made_scores():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1, 0.5],     # target 0: 1 above, 2 others tie with it
                           [0.3, 0.3, 0.3, 0.3, 0.3],     # target 4: everything ties
                           [0.0, 0.2, 0.4, 0.6, 0.8]])    # target 4: strictly best
    targets = torch.tensor([0, 4, 4])
    assert target_ranks(scores, targets, 'standard').tolist() == [2.0, 1.0, 1.0]
    assert target_ranks(scores, targets, 'conservative').tolist() == [4.0, 5.0, 1.0]
    assert target_ranks(scores, targets, 'median').tolist() == [3.0, 3.0, 1.0]
    with pytest.raises(ValueError, match='tie mode'):
        target_ranks(scores, targets, 'random')


def test_metrics_hit_means_rank_at_most_k():
    m = metrics_from_ranks([1, 5, 6, 20, 21], cutoffs=(5, 20))
    assert m['Recall@5'] == pytest.approx(2 / 5)
    assert m['MRR@5'] == pytest.approx((1 + 1 / 5) / 5)
    assert m['Recall@20'] == pytest.approx(4 / 5)
    assert m['MRR@20'] == pytest.approx((1 + 1 / 5 + 1 / 6 + 1 / 20) / 5)


needs_compiler = pytest.mark.skipif(not has_compiler(), reason='no C++ compiler for Inductor')


def brute_force(model, sessions, tie_mode, cutoffs):
    """One session at a time from a zero state; every click but the first ranked against all items."""
    ranks = []
    model.eval()
    with torch.no_grad():
        for items in sessions:
            hidden = model.init_hidden(1)
            for current, following in zip(items[:-1], items[1:]):
                hidden = model.hidden_step(torch.tensor([current]), hidden)
                scores = model.score_all(hidden[-1])[0]
                target = scores[following]
                higher, equal = sum(1 for s in scores if s > target), sum(1 for s in scores if s == target)
                ranks.append({'standard': 1 + higher, 'conservative': higher + equal,
                              'median': 1 + higher + (equal - 1) / 2}[tie_mode])
    model.train()
    return metrics_from_ranks(ranks, cutoffs), len(ranks)


@pytest.mark.parametrize('mode,layers,block,compiled', [
    ('shared', [8], None, False), ('none', [6, 5], None, False), ('separate', [7], None, False),
    ('shared', [8], 12, False), ('none', [6, 5], 36, False),
    pytest.param('shared', [8], 36, True, marks=needs_compiler), pytest.param('separate', [7], None, True, marks=needs_compiler)])
def test_session_parallel_evaluation_equals_brute_force(tmp_path, monkeypatch, mode, layers, block, compiled):
    """Every tie mode; blocks of 1 or 3 rows; `compiled`: the blocks scored, ranked and counted compiled."""
    if block:               # score 1 or 3 rows of a step at a time (SCORE_BLOCK / 12 items)
        monkeypatch.setattr(evaluation, 'SCORE_BLOCK', block)
    n_items = 12
    item_map = ItemMap([f'i{k}' for k in range(n_items)])
    generator = torch.Generator().manual_seed(3)
    sessions, rows = [], []
    for s in range(23):
        length = int(torch.randint(1, 7, (1,), generator=generator))
        items = torch.randint(0, n_items, (length,), generator=generator).tolist()
        if length >= 2:
            sessions.append(items)
        rows += [(s, f'i{item}', 100 * s + t) for t, item in enumerate(items)]
    rows.append((99, 'unknown', 5000))                  # dropped (spec C1)
    data = SessionData(write_split(tmp_path / 'test.txt', rows), item_map=item_map)
    model = GRU4Rec(n_items, layers=layers, constrained_embedding=mode == 'shared',
                    embedding=7 if mode == 'separate' else 0, dropout_p_hidden=0.3)
    with torch.no_grad():
        model.By.uniform_(-0.2, 0.2)
        model.Wy[3], model.By[3] = model.Wy[5], model.By[5]                          # identical items: real ties in the scores
    for tie_mode in ('standard', 'conservative', 'median'):
        expected, n = brute_force(model, sessions, tie_mode, (1, 3, 5))
        got = evaluate(model, data, cutoffs=(1, 3, 5), tie_mode=tie_mode, batch_size=4, compiled=compiled)
        assert got['n_predictions'] == n == sum(len(s) - 1 for s in sessions)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=1e-12), (tie_mode, key)
    assert model.training                                # evaluate() restores the mode it found


def test_refuses_a_model_with_nan_weights(tmp_path):
    model = GRU4Rec(3, layers=[2])
    with torch.no_grad():
        model.Wy[1, 0] = float('nan')
    data = SessionData(write_split(tmp_path / 't.txt', [(1, 'a', 1), (1, 'b', 2)]),
                       item_map=ItemMap(['a', 'b', 'c']))
    with pytest.raises(ValueError, match='non-finite'):
        evaluate(model, data)


class FixedScores(torch.nn.Module):
    """A stand-in model whose scores after a click on item i are row i of a fixed table."""

    def __init__(self, table):
        super().__init__()
        self.register_buffer('table', torch.tensor(table))

    def init_hidden(self, batch_size, device='cpu'):
        return [torch.zeros(batch_size, 1, dtype=torch.long, device=device)]

    def hidden_step(self, inputs, hidden):
        return [inputs[:, None]]

    def score_all(self, state):
        return self.table[state[:, 0]]


def test_evaluate_ties_at_the_cutoff_in_every_tie_mode(tmp_path):
    # one session 0 -> 1 -> 2 -> 3: three predictions whose ranks are worked out by hand
    table = [[0.1, 0.5, 0.1, 0.1, 0.9, 0.5, 0.5, 0.1],     # target 1: one above, tied with 5 and 6
             [0.0, 0.0, 0.6, 0.0, 0.0, 0.6, 0.0, 0.8],     # target 2: one above, tied with 5
             [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0],     # target 3: alone at the top
             [0.0] * 8, [0.0] * 8, [0.0] * 8, [0.0] * 8, [0.0] * 8]
    item_map = ItemMap([f'i{k}' for k in range(8)])
    data = SessionData(write_split(tmp_path / 't.txt', [(1, f'i{k}', k) for k in range(4)]), item_map=item_map)
    model = FixedScores(table)
    ranks = {'standard': (2, 2, 1), 'conservative': (4, 3, 1), 'median': (3, 2.5, 1)}
    for tie_mode, (r1, r2, r3) in ranks.items():
        got = evaluate(model, data, cutoffs=(3, 1, 2, 3), tie_mode=tie_mode, batch_size=2)
        assert list(got) == ['Recall@1', 'MRR@1', 'Recall@2', 'MRR@2', 'Recall@3', 'MRR@3', 'n_predictions',
                             'tie_mode']                     # cut-offs de-duplicated and in order
        assert got['n_predictions'] == 3 and got['tie_mode'] == tie_mode
        for k in (1, 2, 3):                                  # a hit is rank <= K, a tie at K included
            hits = [r for r in (r1, r2, r3) if r <= k]
            assert got[f'Recall@{k}'] == pytest.approx(len(hits) / 3, abs=1e-12), (tie_mode, k)
            assert got[f'MRR@{k}'] == pytest.approx(sum(1 / r for r in hits) / 3, abs=1e-12), (tie_mode, k)
    standard = evaluate(model, data, cutoffs=(2,), tie_mode='standard')
    conservative = evaluate(model, data, cutoffs=(2,), tie_mode='conservative')
    median = evaluate(model, data, cutoffs=(3,), tie_mode='median')
    assert standard['Recall@2'] == 1.0 and conservative['Recall@2'] == pytest.approx(1 / 3)   # the tie at K decides
    assert median['MRR@3'] == pytest.approx((1 / 3 + 1 / 2.5 + 1) / 3)


def test_a_failed_compilation_of_the_evaluation_falls_back_with_one_warning(tmp_path, monkeypatch, capsys):
    def no_compiler(*args, **kwargs):
        raise RuntimeError('no working C++ compiler found')

    monkeypatch.setattr(evaluation.CompiledBlocks, 'failed', False)
    monkeypatch.setattr(evaluation, '_compiled_blocks', None)
    monkeypatch.setattr(evaluation.CompiledBlocks, '__init__', lambda self: setattr(self, 'function', no_compiler))
    item_map = ItemMap([f'i{k}' for k in range(9)])
    data = SessionData(write_split(tmp_path / 't.txt', [(s, f'i{(s * 5 + t * 2) % 9}', 10 * s + t)
                                                         for s in range(7) for t in range(2 + s % 3)]), item_map=item_map)
    model = GRU4Rec(9, layers=[5])
    eager = evaluate(model, data, batch_size=3)
    assert evaluate(model, data, batch_size=3, compiled=True) == eager
    assert capsys.readouterr().err.splitlines() == [
        'warning: the evaluation did not compile (RuntimeError: no working C++ compiler found); evaluating eagerly']
    assert evaluate(model, data, batch_size=3, compiled=True) == eager and capsys.readouterr().err == ''


def test_the_captured_full_batch_steps_give_the_eager_evaluation(tmp_path, monkeypatch, capsys):
    """evaluate(graphs=...): the steps with every slot live replayed from one capture (a CPU stand-in for the
    CUDA graph API, fed through its input buffers: items, reset masks, targets, hidden state), the tail
    uncaptured; every tie mode against the brute force and the eager evaluation. A capture that fails warns
    once and evaluates uncaptured, with the same numbers."""
    from conftest import ReplayOnCPU
    from dataset import SessionParallelIterator
    monkeypatch.setattr(evaluation, 'SCORE_BLOCK', 36)          # 3 rows of 12 items at a time
    n_items = 12
    item_map = ItemMap([f'i{k}' for k in range(n_items)])
    generator = torch.Generator().manual_seed(8)
    sessions, rows = [], []
    for s in range(40):
        length = int(torch.randint(2, 8, (1,), generator=generator))
        items = torch.randint(0, n_items, (length,), generator=generator).tolist()
        sessions.append(items)
        rows += [(s, f'i{item}', 100 * s + t) for t, item in enumerate(items)]
    data = SessionData(write_split(tmp_path / 'test.txt', rows), item_map=item_map)
    full = 0
    for step in SessionParallelIterator(data, 5):
        if step.keep is not None:
            break
        full += 1
    assert full > evaluation.EvaluationGraph.WARMUP + 5
    model = GRU4Rec(n_items, layers=[6, 5], dropout_p_hidden=0.3)
    with torch.no_grad():
        model.By.uniform_(-0.2, 0.2)
        model.Wy[3], model.By[3] = model.Wy[5], model.By[5]           # identical items: ties
    monkeypatch.setattr(evaluation.EvaluationGraph, 'failed', False)
    for tie_mode in ('standard', 'conservative', 'median'):
        api = ReplayOnCPU(model)
        got = evaluate(model, data, cutoffs=(1, 3, 5), tie_mode=tie_mode, batch_size=5, graphs=api)
        assert api.captures == 1 and api.replays == full - evaluation.EvaluationGraph.WARMUP
        expected, n = brute_force(model, sessions, tie_mode, (1, 3, 5))
        eager = evaluate(model, data, cutoffs=(1, 3, 5), tie_mode=tie_mode, batch_size=5)
        assert got['n_predictions'] == n == eager['n_predictions']
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=1e-12) and got[key] == pytest.approx(eager[key], abs=1e-12)

    class Refusing(ReplayOnCPU):
        def capture(self, function):
            raise RuntimeError('operation not permitted when stream is capturing')

    eager = evaluate(model, data, batch_size=5)
    assert evaluate(model, data, batch_size=5, graphs=Refusing(model)) == pytest.approx(eager, abs=1e-12)
    assert evaluate(model, data, batch_size=5, graphs=Refusing(model)) == pytest.approx(eager, abs=1e-12)
    assert capsys.readouterr().err.splitlines() == [
        'warning: the evaluation step could not be captured as a CUDA graph (RuntimeError: operation not '
        'permitted when stream is capturing); evaluating without the graph']
