"""Training and evaluation speed of GRU4Rec: the fast training step, the plain one and an official-style
stand-in side by side (issue #6). Figures go to benchmarks/RESULTS.md.

    python scripts/bench_train.py --quick                # < 3 minutes on the 2-core CPU, one table
    python scripts/bench_train.py                        # more steps and repeats; the GPU too when there is one
    python scripts/bench_train.py --full_scale data/synthetic_full   # RSC15 scale: a preprocessed 31.6M split

Training speed = targets (events) per second over `--steps` mini-batches (at least 30) after a warm-up,
for three implementations of the same training, measured in alternating rounds in one process:
  fast      train_epoch as main.py trains (model.GRU4Rec.train_step: hand-written backward);
  plain     the same loop with --no-fast_step (forward + autograd); bit-identical numbers;
  official  a stand-in for the official PyTorch code on the plain loop: its row-sparse machinery (shared
            mode: separate W_y and b_y read with torch's sparse embedding gradients, duplicates left to the
            optimiser's coalesce), F.dropout, and the optimiser called through torch.optim's step wrapper
            (but with our AdagradM arithmetic, so it is a little faster than the official code). The
            official code itself is not part of this repository: --official_code (below) times it.
Each cell is the best round; the ratio columns are medians over rounds of the per-round ratios (the
shared VMs drift by up to 2x within minutes, which moves the three alike).
Data: the real 84k-click sample (../shared/data/yoochoose-clicks-sample.dat, preprocessed into a temporary
folder; the synthetic demo data when absent) and a synthetic split with about 37.5k training items (the
RSC15 item count; scripts/make_synthetic.py). Settings: the official RSC15 paramfile `rsc15_xe_shared_100`
(XE + logQ, shared embedding, 100 units, batch 32, n_sample 2048) with batch / n_sample varied, and the
BPR-max preset `bprmax_shared` (224 units, batch 80).
Evaluation = predictions per second over the test split (all items ranked, batch 512), beside the rate the
score product alone allows (an addmm of 512 states by all items, timed alone): no exact full ranking can
beat that bound.
--full_scale FOLDER: reads FOLDER/rsc15_train_full.txt and rsc15_test.txt (e.g. the full synthetic file
preprocessed), trains `--steps` fast steps, evaluates 100,000 predictions, and reports load time, speeds
and the peak memory of the process (RSS; GPU memory on cuda).
--device cuda (or cuda:<n>, cpu) times that device alone; on a GPU the table's last column is the peak GPU
memory of each setting (training, then evaluation on its first setting). --synthetic_sessions and
--settings shrink the run to a smoke test (scripts/gpu_check.py --quick).
--official_code DIR: against the official PyTorch code itself, from your own clone of
hidasib/GRU4Rec_PyTorch_Official in DIR (none of its code is in this repository): whole first epochs of
fresh models, its `fit` (its own events/s line) alternating with train_epoch fast and plain; the
real sample's training split with every setting, and the target row on the earliest 1M events of the
synthetic split (37.6k items); about 16 minutes. --quick: the target row and n_sample 512 on the real
sample, about 1.5 minutes.
"""
import argparse
import contextlib
import copy
import importlib.util
import io
import os
import re
import resource
import statistics
import sys
import tempfile
import time
import types

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from config import DEFAULTS, PRESETS  # noqa: E402
from dataset import SessionData  # noqa: E402
from devices import pick_device  # noqa: E402
from evaluation import evaluate  # noqa: E402
from loss import parse_activation  # noqa: E402
from model import GRU4Rec  # noqa: E402
from optimizer import AdagradM  # noqa: E402
import preprocessing  # noqa: E402
from scripts.make_synthetic import generate, write_raw  # noqa: E402
from scripts.reproduce import prepare_quick_data  # noqa: E402
from training import train_epoch, training_setup  # noqa: E402

RSC15 = PRESETS['rsc15_xe_shared_100']
SETTINGS = {          # name -> (preset overrides); the first is the target row
    'XE, batch 32, n_sample 2048': dict(RSC15),
    'XE, batch 32, n_sample 0': dict(RSC15, n_sample=0),
    'XE, batch 32, n_sample 512': dict(RSC15, n_sample=512),
    'XE, batch 128, n_sample 2048': dict(RSC15, batch_size=128),
    'XE, batch 512, n_sample 2048': dict(RSC15, batch_size=512),
    'BPR-max (bprmax_shared)': dict(PRESETS['bprmax_shared']),
}
SYNTHETIC_SETTINGS = ('XE, batch 32, n_sample 2048', 'BPR-max (bprmax_shared)')


def sync(device):
    if device.startswith('cuda'):
        torch.cuda.synchronize()


class OfficialStyleGRU4Rec(GRU4Rec):
    """Stand-in for the official PyTorch code's row-sparse machinery (shared mode only): separate W_y and
    b_y tables read with torch's sparse embedding gradients, duplicate rows left to the optimiser's
    coalesce. Same network and numbers up to float rounding; trained by the plain loop."""
    has_fast_step = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.W = torch.nn.Parameter(self.Wy.detach().clone())
        self.B = torch.nn.Parameter(self.By.detach()[:, None].clone())

    def _dropout(self, x, p):         # the official code's F.dropout (an MKL Bernoulli stream per call)
        return F.dropout(x, p, training=True) if self.training and p > 0 else x

    def forward(self, inputs, hidden, candidates):
        rows = F.embedding(torch.cat([inputs, candidates]), self.W, sparse=True)
        hidden = self.hidden_step(inputs, hidden, input_vectors=rows[:len(inputs)])
        b = F.embedding(candidates, self.B, sparse=True)
        return torch.addmm(b.T, hidden[-1], rows[len(inputs):].T), hidden


class WrappedStepAdagradM(AdagradM):
    """AdagradM called through torch.optim's `step` wrapper (hooks, profiler record), as the official
    code's optimiser is; train_epoch calls `update`."""

    def step(self, closure=None):
        AdagradM.update(self)

    def update(self):
        self.step()


def prepared(data, config, device, model, fast, official=False, warmup=20):
    """train_epoch's arguments for `model` (None: the configured GRU4Rec), after `warmup` steps."""
    config = {**config, 'fast_step': fast}
    run = training_setup(config, data, device, model)
    if official:
        run = (run[0], WrappedStepAdagradM(run[0].parameters(), lr=config['lr'], momentum=config['momentum'])) + run[2:]
    run = run + (config, device)
    train_epoch(*run, max_steps=warmup)
    return run


def train_speeds(data, config, device, steps, rounds):
    """{'fast', 'plain', 'official'} -> list of events/s, one per round, the order rotating each round."""
    n = len(data.item_map)
    kwargs = dict(layers=config['layers'], constrained_embedding=True, dropout_p_embed=config['dropout_input'],
                  dropout_p_hidden=config['dropout_hidden'])
    runs = {'fast': prepared(data, config, device, None, True),
            'plain': prepared(data, config, device, None, False),
            'official': prepared(data, config, device, OfficialStyleGRU4Rec(n, **kwargs).to(device), False,
                                 official=True)}
    return alternating({name: lambda run=run: epoch_speed(run, steps) for name, run in runs.items()}, rounds), \
        runs['fast'][0]


def epoch_speed(run, max_steps=None):
    """events/s of train_epoch over `run` (train_epoch's arguments, the device last)."""
    sync(run[-1])
    start = time.perf_counter()
    _, n_targets, _ = train_epoch(*run, max_steps=max_steps)
    sync(run[-1])
    return n_targets / (time.perf_counter() - start)


def alternating(timed, rounds):
    """{name: [one call's result per round]} of the callables in `timed`, their order rotating each round."""
    speeds = {name: [] for name in timed}
    order = list(timed)
    for r in range(rounds):
        for name in order[r % len(order):] + order[:r % len(order)]:
            speeds[name].append(timed[name]())
    return speeds


def eval_speeds(model, test, device):
    """(predictions/s of evaluate over the test split, predictions/s the score product alone allows)."""
    sync(device)
    start = time.perf_counter()
    result = evaluate(model, test, batch_size=512, device=device)
    sync(device)
    speed = result['n_predictions'] / (time.perf_counter() - start)
    h = torch.randn(512, model.layers[-1], device=device)
    out = torch.empty(512, model.n_items, device=device)
    weights, bias = model.Wy.detach().T.contiguous(), model.By.detach()
    torch.addmm(bias, h, weights, out=out)
    sync(device)
    start = time.perf_counter()
    for _ in range(5):
        torch.addmm(bias, h, weights, out=out)
    sync(device)
    return speed, 5 * 512 / (time.perf_counter() - start)


def datasets(folder, quick, synthetic=True, synthetic_sessions=800_000):
    with contextlib.redirect_stdout(io.StringIO()):
        source = prepare_quick_data(os.path.join(folder, 'sample'))
    out = [('real sample' if 'real' in source else 'synthetic demo', os.path.join(folder, 'sample'), list(SETTINGS))]
    if not synthetic:
        return out
    raw = os.path.join(folder, 'synthetic', 'yoochoose-clicks.dat')
    os.makedirs(os.path.dirname(raw))
    write_raw(raw, generate(synthetic_sessions, 52_739, days=30, seed=11))
    with contextlib.redirect_stdout(io.StringIO()):
        preprocessing.preprocess(raw, os.path.dirname(raw) + '/', log=lambda *a: None)
    out.append(('synthetic', os.path.dirname(raw), list(SYNTHETIC_SETTINGS[:1] if quick else SYNTHETIC_SETTINGS)))
    return out


def full_scale(folder, device, steps):
    start = time.perf_counter()
    train = SessionData(os.path.join(folder, 'rsc15_train_full.txt'))
    test = SessionData(os.path.join(folder, 'rsc15_test.txt'), item_map=train.item_map)
    load = time.perf_counter() - start
    config = {**DEFAULTS, **RSC15}
    run = prepared(train, config, device, None, True, warmup=50)
    train_speed = epoch_speed(run, steps)
    eval_speed, bound = eval_speeds(run[0], subset(test, 100_000), device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    gpu = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.startswith('cuda') else None
    print(f'\n{folder}: {train.n_events:,} training events, {len(train.item_map):,} items, '
          f'loaded in {load:.1f} s; rsc15_xe_shared_100 on {device}, {torch.get_num_threads()} threads\n')
    print('| training events/s | epoch (min, at that speed) | eval predictions/s | score-product bound | '
          'peak RSS (GB) | peak GPU memory (GB) |')
    print('|---|---|---|---|---|---|')
    print(f'| {train_speed:,.0f} | {train.n_events / train_speed / 60:,.1f} | {eval_speed:,.0f} | {bound:,.0f} | '
          f'{peak:.2f} | {"-" if gpu is None else f"{gpu:.2f}"} |')


class _SeriesTolerantTorch(types.ModuleType):
    """torch for the official module: its fit() hands a pandas Series to torch.tensor, which torch 2.x
    rejects ('could not determine the shape'); this passes the Series' values instead."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def tensor(data, *args, **kwargs):
        return torch.tensor(data.to_numpy() if isinstance(data, pd.Series) else data, *args, **kwargs)


def load_official(folder):
    """The official PyTorch GRU4Rec module from a clone of hidasib/GRU4Rec_PyTorch_Official in `folder`."""
    path = os.path.join(folder, 'gru4rec_pytorch.py')
    if not os.path.isfile(path):
        raise SystemExit(f'--official_code {folder}: no gru4rec_pytorch.py there '
                         '(expected a clone of hidasib/GRU4Rec_PyTorch_Official)')
    spec = importlib.util.spec_from_file_location('official_gru4rec_pytorch', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.torch = _SeriesTolerantTorch('torch')
    return module


def official_settings(config):
    """The official GRU4Rec's constructor arguments for one of SETTINGS (shared embedding, XE or BPR-max)."""
    kind, values = parse_activation(config['final_act'])
    return dict(layers=list(config['layers']), loss=config['loss_type'], batch_size=config['batch_size'],
                dropout_p_embed=config['dropout_input'], dropout_p_hidden=config['dropout_hidden'],
                learning_rate=config['lr'], momentum=config['momentum'], sample_alpha=config['sample_alpha'],
                n_sample=config['n_sample'], embedding=0, constrained_embedding=True, n_epochs=1,
                bpreg=config['bpreg'], elu_param=values[0] if kind == 'elu' else 0.0, logq=config['logq'])


def official_epoch(module, frame, config, device):
    """events/s of the official code's first epoch on `frame`, as its own log line reports it (set-up
    excluded). compatibility_mode=False: its numpy initialisation fails under NumPy 2 (float64 weights);
    torch's initialisation instead changes no shape or cost."""
    model = module.GRU4Rec(**official_settings(config), device=torch.device(device))
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        model.fit(frame.copy(), compatibility_mode=False)
    found = re.search(r'\|\s*([0-9.]+) e/s\]', log.getvalue())
    if found is None:
        raise RuntimeError(f'the official code printed no events/s line: {log.getvalue()[-300:]!r}')
    return float(found.group(1))


def our_epoch(data, config, device, fast):
    """events/s of train_epoch over a whole first epoch of a fresh model (set-up excluded)."""
    config = {**config, 'fast_step': fast}
    return epoch_speed(training_setup(config, data, device) + (config, device))


def official_comparison(module, path, settings, device, rounds):
    """{setting: {'official', 'fast', 'plain'} -> events/s per round} on the training split in `path`."""
    frame = pd.read_csv(os.path.join(path, 'rsc15_train_full.txt'), sep='\t',
                        dtype={'SessionId': 'int64', 'ItemId': 'int64', 'Time': 'float64'})
    data = SessionData(os.path.join(path, 'rsc15_train_full.txt'))
    results = {}
    for setting in settings:
        config = {**DEFAULTS, **SETTINGS[setting]}
        speeds = alternating({'official': lambda: official_epoch(module, frame, config, device),
                              'fast': lambda: our_epoch(data, config, device, True),
                              'plain': lambda: our_epoch(data, config, device, False)}, rounds)
        results[setting] = speeds
        print(f'  {setting}: official {max(speeds["official"]):,.0f}, fast {max(speeds["fast"]):,.0f} events/s',
              flush=True)
    return data, results


OFFICIAL_SYNTHETIC_EVENTS = 1_000_000


def earliest_sessions(path, n_events):
    """A folder beside `path` whose rsc15_train_full.txt holds the sessions of path's that start first,
    about n_events clicks (whole sessions, the file's order kept)."""
    frame = pd.read_csv(os.path.join(path, 'rsc15_train_full.txt'), sep='\t', dtype={'Time': str})
    sessions = frame.groupby('SessionId').agg(start=('Time', 'first'), n=('Time', 'size'))   # sorted by time
    sessions = sessions.iloc[np.argsort(sessions['start'].astype(float).to_numpy(), kind='stable')]
    keep = sessions.index[:int(np.searchsorted(sessions['n'].cumsum().to_numpy(), n_events)) + 1]
    folder = path.rstrip(os.sep) + '_earliest'
    os.makedirs(folder, exist_ok=True)
    frame[frame['SessionId'].isin(keep)].to_csv(os.path.join(folder, 'rsc15_train_full.txt'), sep='\t', index=False)
    return folder


def against_official(code, devices, quick, rounds):
    """--official_code: whole first epochs against the official code; the real sample (every setting, or
    the target row and n_sample 512 with --quick) and, without --quick, the 38.7k-item synthetic split
    (the target row, on its earliest sessions: 1M events, 37.6k items)."""
    module = load_official(code)
    print(f'official code from {code}; {rounds} alternating rounds of whole first epochs of fresh models '
          '(set-up excluded); best round, ratios the median of per-round ratios', flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, path, settings in datasets(folder, quick=True, synthetic=not quick):
            settings = list(SETTINGS)[:3:2] if quick else settings
            if name == 'synthetic':       # a whole epoch of 2.5M events would take the official code 6 minutes
                path = earliest_sessions(path, OFFICIAL_SYNTHETIC_EVENTS)
            for device in devices:
                data, results = official_comparison(module, path, settings, device, rounds)
                rows += [(name, data, device, setting, speeds) for setting, speeds in results.items()]
    print(f'\n{torch.get_num_threads()} threads\n')
    print('| data | items | targets an epoch | device | setting | official code events/s | fast events/s | '
          'plain events/s | fast / official | plain / official |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for name, data, device, setting, speeds in rows:
        ratio = {k: statistics.median(s / o for s, o in zip(speeds[k], speeds['official'])) for k in ('fast', 'plain')}
        print(f'| {name} | {len(data.item_map):,} | {data.n_events - data.n_sessions:,} | {device} | {setting} | '
              f'{max(speeds["official"]):,.0f} | {max(speeds["fast"]):,.0f} | {max(speeds["plain"]):,.0f} | '
              f'{ratio["fast"]:.2f} | {ratio["plain"]:.2f} |')


def subset(data, n_events):
    """The first sessions of a SessionData holding about n_events clicks (a bounded evaluation)."""
    part = copy.copy(data)
    last = max(1, int(np.searchsorted(data.offsets, n_events)))
    part.offsets = data.offsets[:last + 1]
    part.items = data.items[:part.offsets[-1]]
    part.session_ids, part.start_time = data.session_ids[:last], data.start_time[:last]
    return part


def run(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--quick', action='store_true', help='fewer steps and rounds: under 3 minutes on 2 CPU cores')
    p.add_argument('--device', default='auto', help='auto = cpu, plus cuda when available')
    p.add_argument('--steps', type=int, help='mini-batches per timed run (batch-32 equivalent; default 200, '
                   'quick 150; full scale 2000)')
    p.add_argument('--rounds', type=int, help='alternating rounds (default 7, quick 3)')
    p.add_argument('--full_scale', metavar='FOLDER', help='a preprocessed RSC15-scale split instead of the table')
    p.add_argument('--synthetic_sessions', type=int, default=800_000, help='size of the synthetic data set (its '
                   '52,739 items keep about 38k after preprocessing at the default size)')
    p.add_argument('--settings', type=int, help='only the first N settings of each data set (a smoke run)')
    p.add_argument('--official_code', metavar='DIR', help='a clone of hidasib/GRU4Rec_PyTorch_Official: compare '
                   'with it instead of the table')
    args = p.parse_args(argv)
    gpu = pick_device('auto') if args.device == 'auto' else None        # a GPU that runs this torch's kernels
    devices = ['cpu'] + ([gpu] if gpu not in (None, 'cpu') else []) if args.device == 'auto' else \
        [pick_device(args.device)]
    if args.official_code:
        against_official(args.official_code, devices, args.quick, args.rounds or 3)
        return
    if args.full_scale:
        for device in devices:
            full_scale(args.full_scale, device, args.steps or 2000)
        return
    steps = args.steps or (150 if args.quick else 200)
    rounds = args.rounds or (3 if args.quick else 7)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, devices: {", ".join(devices)}; '
          f'{rounds} rounds of {steps} batch-32-equivalent steps', flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, path, settings in datasets(folder, args.quick, synthetic_sessions=args.synthetic_sessions):
            settings = settings[:args.settings]
            train = SessionData(os.path.join(path, 'rsc15_train_full.txt'))
            test = SessionData(os.path.join(path, 'rsc15_test.txt'), item_map=train.item_map)
            for device in devices:
                for setting in settings:
                    if device.startswith('cuda'):
                        torch.cuda.reset_peak_memory_stats(device)
                    config = {**DEFAULTS, **SETTINGS[setting]}
                    n_steps = max(30, steps * 32 // config['batch_size'])
                    speeds, model = train_speeds(train, config, device, n_steps, rounds)
                    ratio = {k: statistics.median(f / o for f, o in zip(speeds['fast'], speeds[k]))
                             for k in ('plain', 'official')}
                    evaluation = eval_speeds(model, test, device) if setting == settings[0] else None
                    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.startswith('cuda') else None
                    rows.append((name, len(train.item_map), device, setting, speeds, ratio, evaluation, peak))
                    print(f'  {name}, {device}, {setting}: fast {max(speeds["fast"]):,.0f} events/s', flush=True)
    print()
    print('| data | items | device | setting | fast events/s | plain events/s | official-style events/s | '
          'fast / plain | fast / official-style | eval predictions/s | score-product bound | peak GPU memory (GiB) |')
    print('|---|---|---|---|---|---|---|---|---|---|---|---|')
    for name, items, device, setting, speeds, ratio, evaluation, peak in rows:
        ev = f'{evaluation[0]:,.0f} | {evaluation[1]:,.0f}' if evaluation else '| '
        print(f'| {name} | {items:,} | {device} | {setting} | {max(speeds["fast"]):,.0f} | {max(speeds["plain"]):,.0f} | '
              f'{max(speeds["official"]):,.0f} | {ratio["plain"]:.2f} | {ratio["official"]:.2f} | {ev} | '
              f'{"" if peak is None else f"{peak:.2f}"} |')


if __name__ == '__main__':
    run()
