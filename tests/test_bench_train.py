"""scripts/bench_train.py: its three implementations train the same network, and its measurements run
(a few steps on small synthetic data; the speed figures themselves live in benchmarks/RESULTS.md)."""
import os

import numpy as np
import pytest
import torch

import main
from conftest import synthetic_split
from dataset import SessionData
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
        ours.Y[:, -1] = stand_in.B[:, 0]
    inputs, candidates = torch.tensor([4, 9, 4]), torch.tensor([9, 1, 1, 30, 4])
    hidden = [torch.randn(3, 8)]
    a, _ = ours.eval()(inputs, hidden, candidates)
    b, _ = stand_in.eval()(inputs, hidden, candidates)
    assert torch.allclose(a, b, atol=1e-6)
    assert not stand_in.has_fast_step and ours.train().has_fast_step


def test_three_implementations_train_and_are_timed(split):
    train, test = split
    config = {**main.DEFAULTS, **bench_train.SETTINGS['XE, batch 32, n_sample 2048'], 'n_sample': 64}
    speeds, model = bench_train.train_speeds(train, config, 'cpu', steps=5, rounds=2)
    assert set(speeds) == {'fast', 'plain', 'official'}
    assert all(len(v) == 2 and min(v) > 0 for v in speeds.values())
    assert not torch.equal(model.Y, main.build_model(config, len(train.item_map), 'cpu').Y)   # it trained
    evaluated, bound = bench_train.eval_speeds(model, test, 'cpu')
    assert evaluated > 0 and bound > 0


def test_subset_keeps_whole_first_sessions(split):
    _, test = split
    part = bench_train.subset(test, 100)
    assert 100 <= part.n_events < 100 + np.diff(test.offsets).max()
    assert np.array_equal(part.items, test.items[:part.n_events])
    assert part.n_sessions == len(part.session_ids) and part.offsets[-1] == part.n_events
