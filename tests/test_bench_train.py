"""scripts/bench_train.py: its three implementations train the same network, its roofline counts the
step's products and times them, and its measurements run (a few steps on small synthetic data; the
speed figures themselves live in benchmarks/RESULTS.md)."""
import os

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from checkpoints import build_model
from config import DEFAULTS, PRESETS
from conftest import synthetic_split
from devices import has_compiler
from loss import loss_function
from dataset import SessionData, SessionParallelIterator
from model import GRU4Rec
from scripts import bench_train


@pytest.fixture(scope='module')
def split_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp('bench')
    synthetic_split(folder, n_sessions=1500, n_items=200, seed=2)
    return str(folder)


@pytest.fixture(scope='module')
def split(split_folder):
    folder = split_folder
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
    config = {**DEFAULTS, **bench_train.SETTINGS['rsc15_xe_shared_100'], 'n_sample': 64}
    speeds, model = bench_train.train_speeds(train, config, 'cpu', steps=5, rounds=2)
    assert set(speeds) == {'fast', 'plain', 'official', 'roofline'}
    assert all(len(v) == 2 and min(v) > 0 for v in speeds.values())
    assert not torch.equal(model.Wy, build_model(config, len(train.item_map), 'cpu').Wy)   # it trained
    evaluated, compiled, graph, bound = bench_train.eval_speeds(model, test, 'cpu')
    assert evaluated > 0 and compiled > 0 and bound > 0 and graph is None       # CUDA graphs: GPU only


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
    def fit(self, data, sample_cache_max_size=10000000, compatibility_mode=True):
        seen['compatibility_mode'], seen['sample_cache_max_size'] = compatibility_mode, sample_cache_max_size
        pop = data.groupby('ItemId').size()
        seen['P0'] = torch.tensor(pop[data.ItemId.unique()], dtype=torch.float32)
        print('Epoch1 --> loss: 1.0 \\t(2.00s) \\t[10.50 mb/s | 1234 e/s]')
class SampleCache:
    def __init__(self, n_sample, sample_cache_max_size, distr, device=None):
        seen['cache'] = (n_sample, sample_cache_max_size, distr)
        print('Created sample store')
'''


def test_official_comparison_drives_the_official_code(tmp_path, split):
    """--official_code: the settings reach the official constructor under its names, its fit gets a
    DataFrame (and may pass a pandas Series to torch.tensor), and its own events/s line is read."""
    (tmp_path / 'gru4rec_pytorch.py').write_text(FAKE_OFFICIAL)
    module = bench_train.load_official(str(tmp_path))
    config = {**DEFAULTS, **bench_train.SETTINGS['retailrocket_bprmax_shared']}
    frame = pd.DataFrame({'SessionId': [1, 1, 2, 2], 'ItemId': [5, 7, 5, 9], 'Time': [1.0, 2.0, 3.0, 4.0]})
    assert bench_train.official_epoch(module, frame, config, 'cpu') == 1234.0
    kwargs = module.seen['kwargs']
    assert kwargs['loss'] == 'bpr-max' and kwargs['elu_param'] == 0.5 and kwargs['layers'] == [224]
    assert (kwargs['batch_size'], kwargs['n_sample'], kwargs['sample_alpha']) == (80, 2048, 0.4)
    assert (kwargs['dropout_p_embed'], kwargs['dropout_p_hidden'], kwargs['bpreg']) == (0.5, 0.05, 1.95)
    assert (kwargs['learning_rate'], kwargs['momentum'], kwargs['n_epochs']) == (0.05, 0.4, 1)
    assert kwargs['constrained_embedding'] and kwargs['embedding'] == 0
    assert module.seen['compatibility_mode'] is False and module.seen['sample_cache_max_size'] == 10_000_000
    assert torch.equal(module.seen['P0'], torch.tensor([2.0, 1.0, 1.0]))
    xe = bench_train.official_settings({**DEFAULTS, **bench_train.SETTINGS['rsc15_xe_shared_100']})
    assert xe['loss'] == 'cross-entropy' and xe['logq'] == 1.0 and xe['elu_param'] == 0.0


def test_our_epoch_takes_the_path_asked_for(split, monkeypatch):
    train, _ = split
    config = {**DEFAULTS, **bench_train.SETTINGS['rsc15_xe_shared_100'], 'n_sample': 64}
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


def test_step_flops_counted_by_hand():
    # one layer of 3 units, batch 2, 4 samples: C = 6 candidates, input width 3 (shared embedding)
    one = {**DEFAULTS, 'layers': [3], 'batch_size': 2, 'n_sample': 4}
    gru = 5 * 2 * 2 * 3 * 9           # gi, gh, W_ih.grad, W_hh.grad, grad x: each a 2 x 3 by 3 x 9 product
    scores = 3 * 2 * 2 * 3 * 6         # scores, W.grad, grad top: each 2 x 3 by 3 x 6
    assert bench_train.step_flops(one) == gru + scores == 756
    # layers 4 then 3, batch 2, 1 sample: the first layer reads the last layer's width, 3
    two = {**DEFAULTS, 'layers': [4, 3], 'batch_size': 2, 'n_sample': 1}
    first = 2 * 2 * (3 * 12 + 4 * 12 + 12 * 3 + 12 * 4 + 12 * 3)      # gi, gh, W_ih.grad, W_hh.grad, grad x
    second = 2 * 2 * (4 * 9 + 3 * 9 + 9 * 4 + 9 * 3 + 9 * 4)
    assert bench_train.step_flops(two) == first + second + 3 * 2 * 2 * 3 * 3 == 1572
    assert bench_train.step_flops({**DEFAULTS, **PRESETS['diginetica_bprmax_shared']}) == \
        30 * 128 * 512 ** 2 + 6 * 128 * 512 * (128 + 2048)


class MatrixProducts(TorchDispatchMode):
    """Records the matrix products torch runs: (m, k, n) of each (m, k) @ (k, n) (2-D mm, matmul, addmm,
    addmm_, linear; under train_step's inference mode torch dispatches linear and matmul whole)."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        op = func.overloadpacket
        if op is torch.ops.aten.linear:        # x (m, k), weight (n, k)
            self.shapes.append((*args[0].shape, args[1].shape[0]))
        elif op in (torch.ops.aten.mm, torch.ops.aten.matmul, torch.ops.aten.addmm, torch.ops.aten.addmm_):
            a, b = args[1:3] if op in (torch.ops.aten.addmm, torch.ops.aten.addmm_) else args[:2]
            assert a.dim() == b.dim() == 2
            self.shapes.append((*a.shape, b.shape[1]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('layers', [[4], [4, 3]])
def test_step_products_are_the_fast_steps_products(layers):
    """The roofline counts the work train_step does when every candidate is a distinct item (ours scores
    each distinct item once) and the inputs are among them: the same FLOP in all."""
    config = {**DEFAULTS, **PRESETS['diginetica_bprmax_shared'], 'layers': layers, 'batch_size': 2, 'n_sample': 4}
    model = GRU4Rec(20, layers=layers, dropout_p_embed=0.5, dropout_p_hidden=0.3)
    loss = loss_function('bpr-max', 'elu-1', 2)
    inputs, candidates = torch.tensor([1, 2]), torch.tensor([3, 4, 1, 2, 5, 6])    # targets 3, 4; samples
    with MatrixProducts() as products:
        model.train_step(inputs, model.init_hidden(2), candidates, loss)
    assert sum(2 * m * k * n for m, k, n in products.shapes) == bench_train.step_flops(config)
    assert sorted(products.shapes) == sorted(p[1:4] for p in bench_train.step_products(config))


def test_roofline_is_the_batch_over_the_timed_products():
    config = {**DEFAULTS, 'layers': [3], 'batch_size': 2, 'n_sample': 4}
    calls = []

    def timer(m, k, n, a_t, b_t, device):       # a different rate for every shape: 1e6 + m FLOP/s
        calls.append((m, k, n, a_t, b_t, device))
        return 2 * m * k * n / (1e6 + m)

    events, flops, seconds = bench_train.roofline(config, 'cpu', timer=timer)
    assert calls == [p[1:] + ('cpu',) for p in bench_train.step_products(config)]
    expected = sum(2 * m * k * n / (1e6 + m) for m, k, n, _, _, _ in calls)
    assert seconds == pytest.approx(expected) and events == pytest.approx(2 / expected) and flops == 756


def test_gemm_seconds_times_one_product_of_that_layout(monkeypatch, one_thread):
    seen = []
    mm = torch.mm
    monkeypatch.setattr(torch, 'mm', lambda a, b, out: seen.append(
        (a.shape, b.shape, a.is_contiguous(), b.is_contiguous(), out.shape)) or mm(a, b, out=out))
    small = bench_train.gemm_seconds(6, 5, 4, True, False, repeats=2, min_seconds=0.001)
    assert set(seen) == {((6, 5), (5, 4), False, True, (6, 4))}
    seen.clear()
    bench_train.gemm_seconds(6, 5, 4, False, True, repeats=2, min_seconds=0.001)
    assert set(seen) == {((6, 5), (5, 4), True, False, (6, 4))}
    monkeypatch.setattr(torch, 'mm', mm)
    large = bench_train.gemm_seconds(512, 512, 512, False, False, repeats=2, min_seconds=0.001)
    assert 0 < small < large / 20         # per call on one thread: 268 MFLOP (1 ms or more) against 240 FLOP


def test_rows_are_the_official_paramfiles_and_are_picked_in_table_order():
    assert list(bench_train.SETTINGS)[:6] == list(bench_train.PARAMFILES)
    assert all(bench_train.SETTINGS[name] == PRESETS[name] for name in bench_train.PARAMFILES)
    only = ['diginetica_bprmax_shared', 'rsc15_batch_128', 'rsc15_xe_shared_100']
    assert bench_train.pick_rows(bench_train.PARAMFILES, only, first=1) == ['rsc15_xe_shared_100']
    assert bench_train.pick_rows(bench_train.PARAMFILES, None, first=2) == list(bench_train.PARAMFILES[:2])
    paramfiles, everything = list(bench_train.PARAMFILES), list(bench_train.SETTINGS)
    assert bench_train.table_rows(False, False) == {'sample': everything, 'synthetic': paramfiles}
    assert bench_train.table_rows(False, True) == {'sample': paramfiles, 'synthetic': paramfiles[:1]}
    assert bench_train.table_rows(True, False) == {'sample': paramfiles, 'synthetic': paramfiles}
    assert bench_train.table_rows(True, True) == {'sample': list(bench_train.QUICK_ROWS), 'synthetic': []}
    in_order = ['rsc15_xe_shared_100', 'diginetica_bprmax_shared', 'rsc15_batch_128']
    for official, quick in ((False, False), (False, True), (True, False)):
        assert bench_train.table_rows(official, quick, only) == {'sample': in_order, 'synthetic': in_order}
    assert bench_train.table_rows(True, True, only, first=2) == {'sample': in_order[:2], 'synthetic': []}
    assert bench_train.table_rows(False, False, first=1) == {'sample': paramfiles[:1], 'synthetic': paramfiles[:1]}
    with pytest.raises(SystemExit) as exit_:
        bench_train.run(['--rows', 'rsc15'])
    assert exit_.value.code == 2


def table_rows(text, table=0):
    """The rows of the `table`-th markdown table in `text` as dicts."""
    tables, previous = [], False
    for line in text.splitlines():
        if line.startswith('|'):
            if not previous:
                tables.append([])
            tables[-1].append(line)
        previous = line.startswith('|')
    lines = tables[table]
    header = [cell.strip() for cell in lines[0].strip('|').split('|')]
    rows = [[cell.strip() for cell in line.strip('|').split('|')] for line in lines[2:]]
    assert all(len(row) == len(header) for row in rows)
    return [dict(zip(header, row)) for row in rows]


def test_default_table_runs_the_rows_asked_for(split_folder, monkeypatch, capsys):
    asked = []
    monkeypatch.setattr(bench_train, 'datasets', lambda folder, synthetic, sessions: asked.append(synthetic) or
                        [('real sample', split_folder)] + ([('synthetic', split_folder)] if synthetic else []))
    bench_train.default_table(['cpu'], True, steps=2, rounds=1, only=['rsc15_n_sample_0'])
    assert asked == [True]                   # the rows named, on both data sets
    rows = table_rows(capsys.readouterr().out)
    assert [(row['data'], row['setting']) for row in rows] == [('real sample', 'rsc15_n_sample_0'),
                                                               ('synthetic', 'rsc15_n_sample_0')]
    row = rows[0]
    assert row['layers / batch / n_sample / loss'] == '100 / 32 / 0 / XE + logQ'
    assert float(row['GFLOP a step']) == pytest.approx(bench_train.step_flops(
        {**DEFAULTS, **bench_train.SETTINGS['rsc15_n_sample_0']}) / 1e9, abs=5e-4)
    assert float(row['roofline events/s'].replace(',', '')) > 0 and float(row['fast / roofline']) > 0
    assert float(row['eval predictions/s'].replace(',', '')) > 0
    assert float(row['compiled eval predictions/s'].replace(',', '')) > 0


def test_official_table_has_the_roofline_columns(split_folder, tmp_path, monkeypatch, capsys):
    (tmp_path / 'gru4rec_pytorch.py').write_text(FAKE_OFFICIAL)
    module = bench_train.load_official(str(tmp_path))
    monkeypatch.setattr(bench_train, 'load_official', lambda folder: module)
    monkeypatch.setattr(bench_train, 'datasets', lambda folder, synthetic: [('real sample', split_folder)])
    monkeypatch.setattr(bench_train, 'roofline', lambda config, device: (2468.0, 0, 0))
    small = {**bench_train.SETTINGS['rsc15_xe_shared_100'], 'n_sample': 64}
    monkeypatch.setitem(bench_train.SETTINGS, 'rsc15_xe_shared_100', small)
    modes = ['fast', 'compiled'] if has_compiler() else ['fast', 'static']
    torch._dynamo.reset()                   # a compilation of these settings earlier in the process would be reused
    bench_train.against_official(str(tmp_path), ['cpu'], True, 2, ['rsc15_xe_shared_100'], modes=modes)
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert [row['step mode'] for row in rows] == modes                  # a row per mode, the same official rounds
    for row in rows:
        assert row['official code events/s'] == '1,234' and row['roofline events/s'] == '2,468'
        assert row['official / roofline'] == '0.50'
        assert row['layers / batch / n_sample / loss'] == '100 / 32 / 64 / XE + logQ'
        ours = float(row['ours events/s'].replace(',', ''))
        assert ours > 0 and float(row['ours / official']) == pytest.approx(ours / 1234, rel=0.6)
    assert rows[0]['compile (s)'] == '0.0' and (float(rows[1]['compile (s)']) > 0) == (modes[1] == 'compiled')
    steps = len(SessionParallelIterator(SessionData(os.path.join(split_folder, 'rsc15_train_full.txt')), 32))
    assert module.seen['sample_cache_max_size'] == 64 * (steps + steps // 10 + 1)     # one epoch's samples
    n_sample, size, distr = module.seen['cache']                   # the refill: its default store, its CDF
    assert (n_sample, size, distr.dtype, float(distr[-1])) == (64, DEFAULTS['sample_store'], torch.float32, 1.0)
    assert bool((distr[1:] >= distr[:-1]).all())
    refills = table_rows(out, 1)
    assert [row['step mode'] for row in refills] == modes
    for row, main in zip(refills, rows):
        assert row['steps a refill'] == f'{DEFAULTS["sample_store"] // 64:,}' and float(row['ours refill (s)']) > 0
        assert float(row['official events/s with refills'].replace(',', '')) <= 1234
        ours, theirs = (float(row[k].replace(',', '')) for k in ('ours events/s with refills',
                                                                  'official events/s with refills'))
        assert ours < float(main['ours events/s'].replace(',', ''))
        assert float(row['ours / official with refills']) == pytest.approx(ours / theirs, rel=0.01)


def test_with_refills_adds_a_refill_every_store_of_steps_by_hand():
    config = {'batch_size': 32, 'n_sample': 2048}
    # 10,000,000 // 2048 = 4,882 steps of 32 events = 156,224 events: 156.224 s at 1,000 events/s, + 10 s
    assert bench_train.with_refills(1000.0, 10.0, config) == pytest.approx(156_224 / 166.224)
    assert bench_train.with_refills(1000.0, 0.0, config) == pytest.approx(1000.0)


def test_target_cells_follow_the_issue_rule_by_hand():
    config = {'batch_size': 100}
    # official 1,000 < half of 10,000: target 2x official = 2,000 events/s; fast 1,250
    # beside the products: 100 / 1,250 - 100 / 10,000 = 0.08 - 0.01 s = 70 ms now, 100 / 2,000 - 0.01 = 40 ms
    below = {'official': [900.0, 1000.0], 'fast': [1250.0, 1100.0], 'roofline': [9000.0, 10000.0]}
    assert bench_train.target_cells(config, below) == '2,000 | 0.20 | 70.0 | 40.0'
    # official 6,000 >= half of 10,000: target 80% of the roofline = 8,000; 100 / 8,000 - 0.01 = 2.5 ms
    above = {'official': [6000.0], 'fast': [5000.0], 'roofline': [10000.0]}
    assert bench_train.target_cells(config, above) == '8,000 | 0.80 | 10.0 | 2.5'
    # 2x an official code at 0.45 of the roofline would be 0.9 of it: the lower, 80%, is the target
    near = {'official': [4500.0], 'fast': [5000.0], 'roofline': [10000.0]}
    assert bench_train.target_cells(config, near) == '8,000 | 0.80 | 10.0 | 2.5'
    # the RSC15 setting: 3x the official code = 3,000; 100 / 3,000 - 0.01 s = 23.3 ms left beside the products
    assert bench_train.target_cells(config, below, setting='rsc15_xe_shared_100') == '3,000 | 0.30 | 70.0 | 23.3'
    assert bench_train.target_cells(config, above, setting='rsc15_xe_shared_100') == '10,000 | 1.00 | 10.0 | 0.0'
