"""--official_quirks: each name switches one deliberate difference to the official PyTorch code's behaviour
(config.QUIRKS). n_valid is tested with the logQ columns in test_main.py."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import main
from cli import InputError
from config import DEFAULTS, QUIRKS, resolve_config
from conftest import write_split
from dataset import SessionData
from model import SampleStore, dropout_noise
from training import training_setup


def test_bernoulli_dropout_draws_what_nn_dropout_draws():
    x = torch.ones(40, 30)
    for p in (0.1, 0.4):
        torch.manual_seed(5)
        official = F.dropout(x, p, training=True)
        torch.manual_seed(5)
        ours = dropout_noise(x, p, bernoulli=True)
        assert torch.equal(x * ours, official)
        torch.manual_seed(5)
        default = dropout_noise(x, p)
        assert not torch.equal(default, ours)                                  # another stream ...
        assert set(default.unique().tolist()) == set(ours.unique().tolist())   # ... of the same values


def test_float32_sampler_inverts_a_float32_cdf():
    support = np.array([5, 1, 3, 9, 2])
    store = SampleStore(support, n_sample=7, alpha=0.5, store_size=70, seed=3, dtype=torch.float32)
    generator = torch.Generator().manual_seed(3)
    u = torch.rand(10, 7, dtype=torch.float32, generator=generator)
    weights = support ** 0.5
    cdf = torch.tensor(np.cumsum(weights) / weights.sum(), dtype=torch.float32)
    cdf[-1] = 1.0
    expected = [[next(i for i, c in enumerate(cdf.tolist()) if c > v) for v in row] for row in u.tolist()]
    assert store.store.tolist() == expected          # the first item whose cumulative probability exceeds u
    assert store.cdf.dtype == torch.float32 and SampleStore(support, 7, 0.5, 70, seed=3).cdf.dtype == torch.float64


@pytest.fixture
def data(tmp_path):
    rows = [(s, f'i{(s * 3 + k) % 5}', 10 * s + k) for s in range(12) for k in range(3)]
    return SessionData(write_split(tmp_path / 't.txt', rows))


def test_logq_quirks_change_which_losses_get_it_and_its_arithmetic(data):
    bpr_max = dict(DEFAULTS, loss_type='bpr-max', final_act='elu-1', logq=1.0, layers=[4], n_sample=3)
    assert training_setup(bpr_max, data, 'cpu')[5] is not None                      # ours: any loss
    assert training_setup(dict(bpr_max, official_quirks=['logq_xe_only']), data, 'cpu')[5] is None
    xe = dict(DEFAULTS, logq=0.8, sample_alpha=0.3, layers=[4], n_sample=3)
    assert training_setup(dict(xe, official_quirks=['logq_xe_only']), data, 'cpu')[5] is not None
    counts = torch.from_numpy(data.item_support()).float()
    in_batch, sampled = training_setup(dict(xe, official_quirks=['logq_float32']), data, 'cpu')[5]
    assert torch.equal(in_batch, 0.8 * torch.log(counts)) and torch.equal(sampled, 0.8 * torch.log(counts ** 0.3))
    in_batch, sampled = training_setup(xe, data, 'cpu')[5]
    assert torch.equal(sampled, 0.8 * 0.3 * torch.log(counts))
    for value, expected in zip(sampled.tolist(), data.item_support().tolist()):
        assert value == pytest.approx(0.8 * 0.3 * math.log(expected), rel=1e-6)


def test_the_flag_alone_means_all_names_are_checked_and_saved(tmp_path):
    assert resolve_config(main.parse_args([]))['official_quirks'] == []
    assert resolve_config(main.parse_args(['--official_quirks']))['official_quirks'] == list(QUIRKS)
    assert resolve_config(main.parse_args(['--official_quirks', 'n_valid', 'sampler_float32'])
                          )['official_quirks'] == ['n_valid', 'sampler_float32']
    assert resolve_config(main.parse_args(['--params', 'official_quirks=n_valid/logq_xe_only'])
                          )['official_quirks'] == ['n_valid', 'logq_xe_only']
    with pytest.raises(InputError, match='--official_quirks bias: expected one of n_valid'):
        resolve_config(main.parse_args(['--official_quirks', 'bias']))
    with pytest.raises(InputError, match='does not apply to --model POP'):
        main.main(['--model', 'POP', '--official_quirks'])
