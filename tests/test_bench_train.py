"""scripts/bench_train.py: its three implementations train the same network, and its measurements run
(a few steps on small synthetic data; the speed figures themselves live in benchmarks/RESULTS.md)."""
import os

import numpy as np
import pandas as pd
import pytest
import torch

from checkpoints import build_model
from config import DEFAULTS
from conftest import synthetic_split
from dataset import SessionData, SessionParallelIterator
from model import GRU4Rec
from scripts import bench_train


@pytest.fixture(scope='module')
def split(tmp_path_factory):
    folder = tmp_path_factory.mktemp('bench')
    synthetic_split(folder, n_sessions=1500, n_items=200, seed=2)
    train = SessionData(os.path.join(folder, 'rsc15_train_full.txt'))
    return train, SessionData(os.path.join(folder, 'rsc15_test.txt'), item_map=train.item_map)


def test_official_style_stand_in_scores_like_gru4rec():
    ours = GRU4Rec(50, layers=[8], seed=3)
    stand_in = bench_train.OfficialStyleGRU4Rec(50, layers=[8], seed=3)
    with torch.no_grad():
        stand_in.B.uniform_(-0.3, 0.3)
        ours.By.copy_(stand_in.B[:, 0])
    inputs, candidates = torch.tensor([4, 9, 4]), torch.tensor([9, 1, 1, 30, 4])
    hidden = [torch.randn(3, 8)]
    a, _ = ours.eval()(inputs, hidden, candidates)
    b, _ = stand_in.eval()(inputs, hidden, candidates)
    assert torch.allclose(a, b, atol=1e-6)
    assert not stand_in.has_fast_step and ours.train().has_fast_step


def test_three_implementations_train_and_are_timed(split):
    train, test = split
    config = {**DEFAULTS, **bench_train.SETTINGS['XE, batch 32, n_sample 2048'], 'n_sample': 64}
    speeds, model = bench_train.train_speeds(train, config, 'cpu', steps=5, rounds=2)
    assert set(speeds) == {'fast', 'plain', 'official'}
    assert all(len(v) == 2 and min(v) > 0 for v in speeds.values())
    assert not torch.equal(model.Wy, build_model(config, len(train.item_map), 'cpu').Wy)   # it trained
    evaluated, bound = bench_train.eval_speeds(model, test, 'cpu')
    assert evaluated > 0 and bound > 0


def test_subset_keeps_whole_first_sessions(split):
    _, test = split
    part = bench_train.subset(test, 100)
    assert 100 <= part.n_events < 100 + np.diff(test.offsets).max()
    assert np.array_equal(part.items, test.items[:part.n_events])
    assert part.n_sessions == len(part.session_ids) and part.offsets[-1] == part.n_events


FAKE_OFFICIAL = '''
import torch
seen = {}
class GRU4Rec:
    def __init__(self, **kwargs):
        seen['kwargs'] = kwargs
    def fit(self, data, compatibility_mode=True):
        seen['compatibility_mode'] = compatibility_mode
        pop = data.groupby('ItemId').size()
        seen['P0'] = torch.tensor(pop[data.ItemId.unique()], dtype=torch.float32)
        print('Epoch1 --> loss: 1.0 \\t(2.00s) \\t[10.50 mb/s | 1234 e/s]')
'''


def test_official_comparison_drives_the_official_code(tmp_path, split):
    """--official_code: the settings reach the official constructor under its names, its fit gets a
    DataFrame (and may pass a pandas Series to torch.tensor), and its own events/s line is read."""
    (tmp_path / 'gru4rec_pytorch.py').write_text(FAKE_OFFICIAL)
    module = bench_train.load_official(str(tmp_path))
    config = {**DEFAULTS, **bench_train.SETTINGS['BPR-max (bprmax_shared)']}
    frame = pd.DataFrame({'SessionId': [1, 1, 2, 2], 'ItemId': [5, 7, 5, 9], 'Time': [1.0, 2.0, 3.0, 4.0]})
    assert bench_train.official_epoch(module, frame, config, 'cpu') == 1234.0
    kwargs = module.seen['kwargs']
    assert kwargs['loss'] == 'bpr-max' and kwargs['elu_param'] == 0.5 and kwargs['layers'] == [224]
    assert (kwargs['batch_size'], kwargs['n_sample'], kwargs['sample_alpha']) == (80, 2048, 0.4)
    assert (kwargs['dropout_p_embed'], kwargs['dropout_p_hidden'], kwargs['bpreg']) == (0.5, 0.05, 1.95)
    assert (kwargs['learning_rate'], kwargs['momentum'], kwargs['n_epochs']) == (0.05, 0.4, 1)
    assert kwargs['constrained_embedding'] and kwargs['embedding'] == 0
    assert module.seen['compatibility_mode'] is False
    assert torch.equal(module.seen['P0'], torch.tensor([2.0, 1.0, 1.0]))
    xe = bench_train.official_settings({**DEFAULTS, **bench_train.SETTINGS['XE, batch 32, n_sample 2048']})
    assert xe['loss'] == 'cross-entropy' and xe['logq'] == 1.0 and xe['elu_param'] == 0.0


def test_our_epoch_takes_the_path_asked_for(split, monkeypatch):
    train, _ = split
    config = {**DEFAULTS, **bench_train.SETTINGS['XE, batch 32, n_sample 2048'], 'n_sample': 64}
    fast_steps = []
    train_step = GRU4Rec.train_step
    monkeypatch.setattr(GRU4Rec, 'train_step', lambda *a, **k: fast_steps.append(1) or train_step(*a, **k))
    assert bench_train.our_epoch(train, config, 'cpu', False) > 0 and not fast_steps
    assert bench_train.our_epoch(train, config, 'cpu', True) > 0
    assert len(fast_steps) == SessionParallelIterator(train, 32).__len__()


def test_official_code_folder_must_hold_the_module(tmp_path):
    with pytest.raises(SystemExit, match='no gru4rec_pytorch.py'):
        bench_train.load_official(str(tmp_path))


def test_earliest_sessions_keeps_the_first_whole_sessions_in_time(tmp_path):
    rows = [(1, 10, '5.5'), (1, 11, '6.0'), (2, 12, '1.25'), (2, 13, '2.0'), (2, 10, '3.0'), (3, 14, '4.0'),
            (3, 15, '9.0'), (4, 16, '0.5'), (4, 17, '7.0')]
    pd.DataFrame(rows, columns=['SessionId', 'ItemId', 'Time']).to_csv(tmp_path / 'rsc15_train_full.txt', sep='\t',
                                                                         index=False)
    folder = bench_train.earliest_sessions(str(tmp_path), 4)      # starts: 4 at 0.5, 2 at 1.25, 3 at 4.0, 1 at 5.5
    kept = pd.read_csv(os.path.join(folder, 'rsc15_train_full.txt'), sep='\t', dtype={'Time': str})
    assert list(kept.SessionId) == [2, 2, 2, 4, 4] and list(kept.Time) == ['1.25', '2.0', '3.0', '0.5', '7.0']
    assert SessionData(os.path.join(folder, 'rsc15_train_full.txt')).n_sessions == 2


def test_alternating_rotates_the_order_each_round():
    calls = []
    speeds = bench_train.alternating({k: (lambda k=k: calls.append(k) or len(calls)) for k in 'abc'}, 4)
    assert ''.join(calls) == 'abc' + 'bca' + 'cab' + 'abc'
    assert speeds == {'a': [1, 6, 8, 10], 'b': [2, 4, 9, 11], 'c': [3, 5, 7, 12]}
