"""Training and evaluation speed of GRU4Rec: the fast training step, the plain one and an official-style
stand-in side by side (issue #6), against the authors' code itself (--official_code), and each row's
distance to this machine's own limit, the roofline (issue #17). Figures go to benchmarks/RESULTS.md.

    python scripts/bench_train.py --quick                # < 3 minutes on the 2-core CPU, one table
    python scripts/bench_train.py                        # all rows, more steps and rounds (~10 minutes)
    python scripts/bench_train.py --official_code DIR    # against the official code (~35 minutes)
    python scripts/bench_train.py --official_code DIR --quick              # two rows (~2 minutes)
    python scripts/bench_train.py --official_code DIR --rows rees46_xe_shared   # one row (~6 minutes)
    python scripts/bench_train.py --full_scale data/synthetic_full   # RSC15 scale: a preprocessed 31.6M split

Rows (--rows NAME ... picks some): the six official paramfiles (config.PRESETS: rsc15_xe_shared_100,
yoochoose_xe_shared, rees46_xe_shared, coveo_bprmax_shared, retailrocket_bprmax_shared - the BPR-max row
of the earlier tables, `bprmax_shared` - and diginetica_bprmax_shared), then the RSC15 one with n_sample
0 / 512 and batch 128 / 512 (rsc15_n_sample_0, ...). The table: every row on the real sample, the six
paramfiles on the synthetic split; --quick: the paramfiles on the sample, rsc15_xe_shared_100 on the
synthetic split. --rows: the rows named, on both data sets.

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
shared VMs drift by up to 2x within minutes, which moves all columns alike).
Roofline (`roofline`): the events/s of a step that did nothing but its matrix products, each at the rate
this machine reaches on that very shape and layout: batch_size / the summed seconds of one torch.mm of
each product of the step (step_products: the GRU's gi = x W_ih^T and gh = h W_hh^T, the scores top W^T
over the B + n_sample candidates, and the gradients W.grad, grad top, W_ih.grad, W_hh.grad and grad x;
no BPTT), timed on random tensors at the run's thread count, best of 3, as one more contestant in every
round. The gates, the loss, the gathers and the optimiser count as free, so an implementation of the
same products cannot beat it. Ours scores each distinct candidate item once: on the real sample (2.8k
items) only 61-68% of the B + n_sample candidates are distinct, so its score products are a third
smaller there and it can come close to or pass the roofline; on the synthetic split 95-99% are.
"GFLOP a step" is the products' work (2 m k n each), "roofline GFLOP/s" the rate the roofline implies:
a reader can check both.
Data: the real 84k-click sample (../shared/data/yoochoose-clicks-sample.dat, preprocessed into a temporary
folder; the synthetic demo data when absent) and a synthetic split with about 38.7k training items (the
RSC15 item count; scripts/make_synthetic.py).
Evaluation = predictions per second over the test split (all items ranked, batch 512) on the first row
of each data set, eager, compiled (evaluate(compiled=True), as --step_mode compiled evaluates; its
compilation in an untimed call before) and, on a GPU, with the full-batch steps replayed from a CUDA graph
(evaluate(graphs=...), as the graph modes evaluate; after an untimed call), beside the rate the score product alone allows (an addmm of 512
states by all items, timed alone): no exact full ranking can beat that bound by much (the compiled blocks
can: Inductor adds the bias inside its own pass, not in the product).
--official_code DIR: against the official PyTorch code itself, from your own clone of
hidasib/GRU4Rec_PyTorch_Official in DIR (none of its code is in this repository): whole first epochs of
fresh models, its `fit` (its own events/s line) alternating with train_epoch fast and the roofline (5
rounds, 3 with --quick: with 3, one slow round of a drifting host took RSC15's median ratio from about 3 to
1.91, benchmarks/RESULTS.md, 2026-12-07); the six paramfiles on the real sample's training split and on
the earliest sessions of the synthetic split (--official_events: 120k clicks, 18.8k items; a whole epoch of
the 2.5M-click split would take the official code 5-15 minutes a row). Both codes' sample stores hold one
epoch's samples (the official code draws 10M with a Python binary search, ~10 s a model outside its
events/s). A second table
puts the refills of a long epoch back: both codes default to a store of 10M samples and draw it again when
it runs out (every 4,882 steps at n_sample 2048; RSC15's epoch, 987k steps, refills it 202 times), so it
times each code's drawing of that store in every round (official SampleCache, 6.3 s at 52,739 items on 2
threads; our SampleStore 0.27 s) and adds the fastest round's time to the epoch speeds every
sample_store // n_sample steps (`with_refills`). The plain
path is left out here (the table has it). --quick: rsc15_xe_shared_100 and diginetica_bprmax_shared on
the real sample. The last four columns are issue #31's target for the row (3x the official code at the RSC15
setting, elsewhere 2x the official code or 80% of the roofline, whichever is lower: target_cells) and what
reaching it would take:
a step's time beside its matrix products (step time minus the roofline's), now and at the target.
--full_scale FOLDER: reads FOLDER/rsc15_train_full.txt and rsc15_test.txt (e.g. the full synthetic file
preprocessed), trains `--steps` fast steps, evaluates 100,000 predictions, and reports load time, speeds
and the peak memory of the process (RSS; GPU memory on cuda).
--device cuda (or cuda:<n>, cpu) times that device alone; on a GPU the table's last column is the peak GPU
memory of each row (training, then evaluation on its first row). --synthetic_sessions and --settings
(the first N rows) shrink the run to a smoke test (scripts/gpu_check.py --quick).
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
from dataset import SessionData, SessionParallelIterator  # noqa: E402
from devices import keep_freed_memory, pick_device  # noqa: E402
from evaluation import evaluate  # noqa: E402
from loss import parse_activation  # noqa: E402
from model import GRU4Rec, SampleStore  # noqa: E402
from optimizer import AdagradM  # noqa: E402
import preprocessing  # noqa: E402
from scripts.make_synthetic import generate, write_raw  # noqa: E402
from scripts.reproduce import prepare_quick_data  # noqa: E402
import static_step  # noqa: E402
from static_step import STEP_MODES  # noqa: E402
from training import train_epoch, training_setup  # noqa: E402

RSC15 = PRESETS['rsc15_xe_shared_100']
PARAMFILES = ('rsc15_xe_shared_100', 'yoochoose_xe_shared', 'rees46_xe_shared', 'coveo_bprmax_shared',
              'retailrocket_bprmax_shared', 'diginetica_bprmax_shared')     # the official paramfiles (config.py)
SETTINGS = {          # row name -> settings; the paramfiles as published, then the RSC15 one varied
    **{name: dict(PRESETS[name]) for name in PARAMFILES},
    'rsc15_n_sample_0': dict(RSC15, n_sample=0),
    'rsc15_n_sample_512': dict(RSC15, n_sample=512),
    'rsc15_batch_128': dict(RSC15, batch_size=128),
    'rsc15_batch_512': dict(RSC15, batch_size=512),
}
QUICK_ROWS = ('rsc15_xe_shared_100', 'diginetica_bprmax_shared')   # --official_code --quick


def describe(config):
    """'layers / batch / n_sample / loss' of a row, e.g. '512 / 128 / 2048 / BPR-max elu-1'."""
    loss = 'XE + logQ' if config['loss_type'] == 'cross-entropy' and config['logq'] else \
        'XE' if config['loss_type'] == 'cross-entropy' else f"BPR-max {config['final_act']}" \
        if config['loss_type'] == 'bpr-max' else config['loss_type']
    return f"{'-'.join(map(str, config['layers']))} / {config['batch_size']} / {config['n_sample']} / {loss}"


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
    """{'fast', 'plain', 'official', 'roofline'} -> list of events/s, one per round, the order rotating
    each round (the roofline timed between the others, so the VM's drift moves it alike), and the fast
    run's model."""
    n = len(data.item_map)
    kwargs = dict(layers=config['layers'], constrained_embedding=True, dropout_p_embed=config['dropout_input'],
                  dropout_p_hidden=config['dropout_hidden'])
    runs = {'fast': prepared(data, config, device, None, True),
            'plain': prepared(data, config, device, None, False),
            'official': prepared(data, config, device, OfficialStyleGRU4Rec(n, **kwargs).to(device), False,
                                 official=True)}
    timed = {name: lambda run=run: epoch_speed(run, steps) for name, run in runs.items()}
    timed['roofline'] = lambda: roofline(config, device)[0]
    return alternating(timed, rounds), runs['fast'][0]


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


def step_products(config):
    """The matrix products of one training step of `config` (shared or separate embedding, no BPTT), as
    model.GRU4Rec.train_step and the official code do them: a list of (what, m, k, n, a_t, b_t), each an
    (m, k) @ (k, n) product whose left / right operand is a transposed view of a contiguous tensor where
    a_t / b_t is True. B = batch_size, C = B + n_sample candidates (the targets and the shared samples,
    duplicates included, as the official code scores them; ours scores each distinct item once, so it
    can do less than this), per layer L units on an input of width d (the first layer's d is the last
    layer's size with the shared embedding). The state gets no gradient (no BPTT), the input does (it
    is an item table's rows)."""
    B, layers = config['batch_size'], list(config['layers'])
    C = B + config['n_sample']
    if config['constrained_embedding']:
        widths = [layers[-1]] + layers[:-1]
    elif config['embedding_dim'] > 0:
        widths = [config['embedding_dim']] + layers[:-1]
    else:
        raise ValueError('step_products: the one-hot input (no embedding) is not covered')
    forward, backward = [], []
    for i, (d, L) in enumerate(zip(widths, layers)):
        forward += [(f'layer {i}: gi = x W_ih^T', B, d, 3 * L, False, True),
                    (f'layer {i}: gh = h W_hh^T', B, L, 3 * L, False, True)]
        backward = [(f'layer {i}: W_ih.grad = grad_gi^T x', 3 * L, B, d, True, False),
                    (f'layer {i}: W_hh.grad = grad_gh^T h', 3 * L, B, L, True, False),
                    (f'layer {i}: grad x = grad_gi W_ih', B, 3 * L, d, False, False)] + backward
    top = layers[-1]
    scores = [('scores = top W^T', B, top, C, False, True),
              ('W.grad = grad_scores^T top', C, B, top, True, False),
              ('grad top = grad_scores W', B, C, top, False, False)]
    return forward + scores + backward


def step_flops(config):
    """Floating-point operations of one training step's matrix products (2 m k n each)."""
    return sum(2 * m * k * n for _, m, k, n, _, _ in step_products(config))


def gemm_seconds(m, k, n, a_t, b_t, device='cpu', repeats=3, min_seconds=0.003):
    """Seconds of one torch.mm of that shape and layout on random float32 tensors of `device` (into a
    reused output), at torch's current thread count: the best of `repeats` timings, each of enough
    calls to last about min_seconds."""
    a = torch.randn(k, m, device=device).T if a_t else torch.randn(m, k, device=device)
    b = torch.randn(n, k, device=device).T if b_t else torch.randn(k, n, device=device)
    out = torch.empty(m, n, device=device)

    def timed(calls):
        sync(device)
        start = time.perf_counter()
        for _ in range(calls):
            torch.mm(a, b, out=out)
        sync(device)
        return (time.perf_counter() - start) / calls

    calls = max(1, int(min_seconds / max(timed(1), timed(1), 1e-7)))
    return min(timed(calls) for _ in range(repeats))


def roofline(config, device='cpu', timer=gemm_seconds):
    """(events/s, FLOP per step, seconds per step) that a training step doing only its matrix products
    (step_products) at this machine's rate for those very shapes would reach: batch_size / the sum of
    the products' timed seconds. The rest of a step (gates, loss, gathers, the optimiser) counts as
    zero, so an implementation doing these products cannot beat it by more than noise (ours does fewer
    where the samples repeat items: the module docstring). `timer`: gemm_seconds' arguments -> seconds."""
    seconds = sum(timer(m, k, n, a_t, b_t, device=device) for _, m, k, n, a_t, b_t in step_products(config))
    return config['batch_size'] / seconds, step_flops(config), seconds


EVAL_WAYS = {'eager': {}, 'compiled': {'compiled': True}, 'graph': {'graphs': static_step.GRAPH_API}}


def eval_speeds(model, test, device, ways=tuple(EVAL_WAYS)):
    """(predictions/s of evaluate over the test split: eager, compiled (evaluate(compiled=True), after a
    compiling call on a few sessions), with the full-batch steps replayed from a CUDA graph (GPU only), and
    the predictions/s the score product alone allows); `ways`: which of the three to run (the others None)."""
    speeds = []
    for way, options in EVAL_WAYS.items():
        if way not in ways or (way == 'graph' and not str(device).startswith('cuda')):
            speeds.append(None)
            continue
        if way != 'eager':      # compiling, or a warm-up of the capture (each evaluate() call captures anew)
            evaluate(model, subset(test, 2000), batch_size=512, device=device, **options)
        sync(device)
        start = time.perf_counter()
        result = evaluate(model, test, batch_size=512, device=device, **options)
        sync(device)
        speeds.append(result['n_predictions'] / (time.perf_counter() - start))
    h = torch.randn(512, model.layers[-1], device=device)
    out = torch.empty(512, model.n_items, device=device)
    weights, bias = model.Wy.detach().T.contiguous(), model.By.detach()
    torch.addmm(bias, h, weights, out=out)
    sync(device)
    start = time.perf_counter()
    for _ in range(5):
        torch.addmm(bias, h, weights, out=out)
    sync(device)
    return (*speeds, 5 * 512 / (time.perf_counter() - start))


def datasets(folder, synthetic=True, synthetic_sessions=800_000):
    """[(name, folder with rsc15_train_full.txt / rsc15_test.txt)]: the real sample (the synthetic demo
    data when ../shared is absent) and the synthetic split (38.7k training items at the default size)."""
    with contextlib.redirect_stdout(io.StringIO()):
        source = prepare_quick_data(os.path.join(folder, 'sample'))
    out = [('real sample' if 'real' in source else 'synthetic demo', os.path.join(folder, 'sample'))]
    if not synthetic:
        return out
    raw = os.path.join(folder, 'synthetic', 'yoochoose-clicks.dat')
    os.makedirs(os.path.dirname(raw))
    write_raw(raw, generate(synthetic_sessions, 52_739, days=30, seed=11))
    with contextlib.redirect_stdout(io.StringIO()):
        preprocessing.preprocess(raw, os.path.dirname(raw) + '/', log=lambda *a: None)
    return out + [('synthetic', os.path.dirname(raw))]


def pick_rows(rows, only=None, first=None):
    """The rows of `rows` named in `only` (all when None), in the order of `rows`; the first `first`."""
    return [row for row in rows if only is None or row in only][:first]


def table_rows(official, quick, only=None, first=None):
    """{'sample': rows, 'synthetic': rows} a run times. The table: every row on the real sample, the
    paramfiles on the synthetic split (--quick: the paramfiles, and the first of them). --official_code:
    the paramfiles on both (--quick: QUICK_ROWS on the sample alone). --rows `only`: those rows instead,
    on both data sets (the sample alone with --official_code --quick); --settings `first`: the first."""
    if only:
        rows = {'sample': SETTINGS, 'synthetic': () if official and quick else SETTINGS}
    elif official:
        rows = {'sample': QUICK_ROWS if quick else PARAMFILES, 'synthetic': () if quick else PARAMFILES}
    else:
        rows = {'sample': PARAMFILES if quick else SETTINGS, 'synthetic': PARAMFILES[:1] if quick else PARAMFILES}
    return {name: pick_rows(names, only, first) for name, names in rows.items()}


def full_scale(folder, device, steps, mode='fast'):
    """--full_scale: `steps` training steps of --step_mode `mode` and 100,000 predictions (evaluated compiled
    when the mode compiles) at RSC15 scale, with the process's peak memory (run one mode a process to
    compare peaks)."""
    start = time.perf_counter()
    train = SessionData(os.path.join(folder, 'rsc15_train_full.txt'))
    test = SessionData(os.path.join(folder, 'rsc15_test.txt'), item_map=train.item_map)
    load = time.perf_counter() - start
    config = {**DEFAULTS, **RSC15, 'step_mode': mode}
    run = prepared(train, config, device, None, True, warmup=50)
    train_speed = epoch_speed(run, steps)
    ways = ['compiled' if mode in static_step.COMPILED_MODES else 'eager'] + \
        (['graph'] if mode in static_step.GRAPH_MODES else [])
    eval_speed, compiled_eval, graph_eval, bound = eval_speeds(run[0], subset(test, 100_000), device, ways)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    gpu = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.startswith('cuda') else None
    print(f'\n{folder}: {train.n_events:,} training events, {len(train.item_map):,} items, '
          f'loaded in {load:.1f} s; rsc15_xe_shared_100 on {device}, --step_mode {mode}, {torch.get_num_threads()} '
          f'threads\n')
    print('| training events/s | epoch (min, at that speed) | eval predictions/s | compiled eval predictions/s | '
          'graph eval predictions/s | score-product bound | peak RSS (GB) | peak GPU memory (GB) |')
    print('|---|---|---|---|---|---|---|---|')
    cells = ' | '.join('-' if x is None else f'{x:,.0f}' for x in (eval_speed, compiled_eval, graph_eval))
    print(f'| {train_speed:,.0f} | {train.n_events / train_speed / 60:,.1f} | {cells} | '
          f'{bound:,.0f} | {peak:.2f} | {"-" if gpu is None else f"{gpu:.2f}"} |')


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
        model.fit(frame.copy(), sample_cache_max_size=config['sample_store'], compatibility_mode=False)
    found = re.search(r'\|\s*([0-9.]+) e/s\]', log.getvalue())
    if found is None:
        raise RuntimeError(f'the official code printed no events/s line: {log.getvalue()[-300:]!r}')
    return float(found.group(1))


def our_epoch(data, config, device, fast):
    """events/s of train_epoch over a whole first epoch of a fresh model (set-up excluded)."""
    config = {**config, 'fast_step': fast}
    return epoch_speed(training_setup(config, data, device) + (config, device))


def epoch_store(config, data):
    """config with a sample store of one epoch's samples on `data` (and a tenth to spare), not 10M: the
    official code draws its store with a binary search in Python, about 10 s for 10M samples at one
    thread (at set-up, outside its events/s figure, but a third of the wall time of an official epoch
    on the real sample). Neither store runs out within the epoch."""
    steps = len(SessionParallelIterator(data, config['batch_size']))
    return {**config, 'sample_store': max(1, config['n_sample'] * (steps + steps // 10 + 1))}


def refill_seconds(module, data, config, device, official):
    """Seconds one code takes to draw its default sample store (DEFAULTS['sample_store'] samples, the size
    both codes default to and refill when it runs out: every 4,882 steps at n_sample 2048), from the
    item support of `data`: the official SampleCache (its float32 CDF built as its SessionDataIterator
    builds it) or our SampleStore."""
    size, n_sample, alpha = DEFAULTS['sample_store'], config['n_sample'], config['sample_alpha']
    sync(device)
    start = time.perf_counter()
    if official:
        pop = data.item_support().astype(np.float64) ** alpha
        pop = pop.cumsum() / pop.sum()
        pop[-1] = 1
        distr = torch.tensor(pop, device=device, dtype=torch.float32)
        with contextlib.redirect_stdout(io.StringIO()):
            module.SampleCache(n_sample, size, distr, device=torch.device(device))
    else:
        SampleStore(data.item_support(), n_sample, alpha, size, device=device)
    sync(device)
    return time.perf_counter() - start


def with_refills(speed, seconds, config):
    """events/s of an epoch at `speed` that also refills the default store (`seconds` each) every
    DEFAULTS['sample_store'] // n_sample full steps, as a long epoch does (RSC15's: 202 times)."""
    events = DEFAULTS['sample_store'] // config['n_sample'] * config['batch_size']
    return events / (events / speed + seconds)


def official_comparison(module, path, settings, device, rounds, modes=('fast',)):
    """{setting: ({'official', each of `modes`, 'roofline'} -> events/s per round, {mode: seconds compiling})}
    on the training split in `path`; `modes` are --step_mode values of ours."""
    frame = pd.read_csv(os.path.join(path, 'rsc15_train_full.txt'), sep='\t',
                        dtype={'SessionId': 'int64', 'ItemId': 'int64', 'Time': 'float64'})
    data = SessionData(os.path.join(path, 'rsc15_train_full.txt'))
    results = {}
    for setting in settings:
        config = epoch_store({**DEFAULTS, **SETTINGS[setting]}, data)
        compiled = {}

        def ours(mode):
            before = len(static_step.COMPILE_SECONDS)
            speed = our_epoch(data, dict(config, step_mode=mode), device, True)
            compiled[mode] = compiled.get(mode, 0.0) + sum(static_step.COMPILE_SECONDS[before:])
            return speed
        timed = {'official': lambda: official_epoch(module, frame, config, device)}
        timed.update({mode: lambda mode=mode: ours(mode) for mode in modes})
        timed['roofline'] = lambda: roofline(config, device)[0]
        if config['n_sample']:          # seconds, not events/s: each code's default store, drawn once a round
            timed['official refill'] = lambda: refill_seconds(module, data, config, device, True)
            timed['refill'] = lambda: refill_seconds(module, data, config, device, False)
        speeds = alternating(timed, rounds)
        results[setting] = (speeds, compiled)
        print(f'  {setting}: official {max(speeds["official"]):,.0f}, ' +
              ', '.join(f'{mode} {max(speeds[mode]):,.0f}' for mode in modes) +
              f', roofline {max(speeds["roofline"]):,.0f} events/s', flush=True)
    return data, results


def median_ratio(speeds, a, b):
    """The median over rounds of speeds[a] / speeds[b] (the same round's figures)."""
    return statistics.median(x / y for x, y in zip(speeds[a], speeds[b]))


def roofline_cells(config, speeds):
    """'roofline events/s | GFLOP a step | GFLOP/s' of a row: its best round, the rate it implies."""
    best, flops = max(speeds['roofline']), step_flops(config)
    return f'{best:,.0f} | {flops / 1e9:.3f} | {flops * best / config["batch_size"] / 1e9:.1f}'


def target_cells(config, speeds, ours='fast', setting=None):
    """'target events/s | target / roofline | ms a step beside the products now | ms the target leaves
    them' of a row (best rounds): issue #31's CPU target, 3x the official code at the RSC15 setting
    (rsc15_xe_shared_100), elsewhere 2x the official code or 80% of the roofline, whichever is lower (issue
    #17's rule, 2x where the official code is below half the roofline, else 80%, differs from it only
    between 0.4 and 0.5 of the roofline); never above the roofline. "Beside the products" is a step's time
    minus the roofline's (the gathers, gates, loss, optimiser: everything but the matrix products at the
    machine's rate), so the last two cells say how much of that part the target needs cut (the last cell is
    >= 0)."""
    official, fast, roof = max(speeds['official']), max(speeds[ours]), max(speeds['roofline'])
    target = min(3 * official, roof) if setting == 'rsc15_xe_shared_100' else min(2 * official, 0.8 * roof)
    ms = 1000 * config['batch_size']
    return (f'{target:,.0f} | {target / roof:.2f} | {ms * (1 / fast - 1 / roof):.1f} | '
            f'{ms * (1 / target - 1 / roof):.1f}')


OFFICIAL_SYNTHETIC_EVENTS = 120_000      # --official_code: the synthetic split's earliest sessions, 18.8k items


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


def against_official(code, devices, quick, rounds, only=None, first=None,
                     synthetic_events=OFFICIAL_SYNTHETIC_EVENTS, modes=('fast',)):
    """--official_code: whole first epochs against the official code and the roofline, alternating; the
    rows of table_rows(True, ...) on the real sample and on the earliest sessions of the synthetic split
    (about `synthetic_events` clicks); a row per --step_mode of `modes` (its compilation, in its first round,
    in the compile column; the best round is a later one)."""
    module = load_official(code)
    load_at_start = os.getloadavg()[0]
    print(f'official code from {code}; {rounds} alternating rounds of whole first epochs of fresh models '
          '(set-up excluded) and of the roofline; best round, ratios the median of per-round ratios', flush=True)
    rows = table_rows(True, quick, only, first)
    table = []
    with tempfile.TemporaryDirectory() as folder:
        for name, path in datasets(folder, synthetic=bool(rows['synthetic'])):
            if name == 'synthetic':       # a whole epoch of its 2.5M events: 5-15 minutes of the official code a row
                path = earliest_sessions(path, synthetic_events)
            for device in devices:
                settings = rows['synthetic' if name == 'synthetic' else 'sample']
                data, results = official_comparison(module, path, settings, device, rounds, modes)
                table += [(name, data, device, setting, speeds, compiled)
                          for setting, (speeds, compiled) in results.items()]
    print(f'\n{torch.get_num_threads()} threads; load average {load_at_start:.2f} at the start, '
          f'{os.getloadavg()[0]:.2f} at the end\n')
    print('| data | items | targets an epoch | device | setting | layers / batch / n_sample / loss | '
          'official code events/s | step mode | ours events/s | ours / official | compile (s) | roofline events/s | '
          'GFLOP a step | roofline GFLOP/s | ours / roofline | official / roofline | target events/s | '
          'target / roofline | ms a step beside the products | ms the target leaves them |')
    print('|---' * 20 + '|')
    for name, data, device, setting, speeds, compiled in table:
        config = {**DEFAULTS, **SETTINGS[setting]}
        for mode in modes:
            print(f'| {name} | {len(data.item_map):,} | {data.n_events - data.n_sessions:,} | {device} | {setting} | '
                  f'{describe(config)} | {max(speeds["official"]):,.0f} | {mode} | {max(speeds[mode]):,.0f} | '
                  f'{median_ratio(speeds, mode, "official"):.2f} | {compiled.get(mode, 0.0):.1f} | '
                  f'{roofline_cells(config, speeds)} | {median_ratio(speeds, mode, "roofline"):.2f} | '
                  f'{median_ratio(speeds, "official", "roofline"):.2f} | {target_cells(config, speeds, mode, setting)} |')
    print('\nWith the default sample store refilled within the epoch (both codes draw DEFAULTS sample_store = '
          f'{DEFAULTS["sample_store"]:,} samples and draw them again when they run out; the epochs above hold '
          'one epoch\'s store drawn at set-up): the epoch speeds above with each code\'s refill time (fastest '
          'round) added every sample_store // n_sample steps\n')
    print('| data | device | setting | steps a refill | official refill (s) | ours refill (s) | '
          'official events/s with refills | step mode | ours events/s with refills | ours / official with refills |')
    print('|---' * 10 + '|')
    for name, data, device, setting, speeds, compiled in table:
        config = {**DEFAULTS, **SETTINGS[setting]}
        if not config['n_sample']:
            continue
        theirs, ours = min(speeds['official refill']), min(speeds['refill'])
        official = with_refills(max(speeds['official']), theirs, config)
        for mode in modes:
            mine = with_refills(max(speeds[mode]), ours, config)
            print(f'| {name} | {device} | {setting} | {DEFAULTS["sample_store"] // config["n_sample"]:,} | '
                  f'{theirs:.2f} | {ours:.2f} | {official:,.0f} | {mode} | {mine:,.0f} | {mine / official:.2f} |')


def subset(data, n_events):
    """The first sessions of a SessionData holding about n_events clicks (a bounded evaluation)."""
    part = copy.copy(data)
    last = max(1, int(np.searchsorted(data.offsets, n_events)))
    part.offsets = data.offsets[:last + 1]
    part.items = data.items[:part.offsets[-1]]
    part.session_ids, part.start_time = data.session_ids[:last], data.start_time[:last]
    return part


def default_table(devices, quick, steps, rounds, only=None, first=None, synthetic_sessions=800_000):
    """The table: every row (--quick: the paramfiles) on the real sample and the paramfile rows (--quick:
    the first) on the synthetic split, or the rows named in `only` on both; the first `first` of each."""
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, devices: {", ".join(devices)}; '
          f'{rounds} rounds of {steps} batch-32-equivalent steps', flush=True)
    rows = table_rows(False, quick, only, first)
    table = []
    with tempfile.TemporaryDirectory() as folder:
        for name, path in datasets(folder, bool(rows['synthetic']), synthetic_sessions):
            settings = rows['synthetic' if name == 'synthetic' else 'sample']
            train = SessionData(os.path.join(path, 'rsc15_train_full.txt'))
            test = SessionData(os.path.join(path, 'rsc15_test.txt'), item_map=train.item_map)
            for device in devices:
                for setting in settings:
                    if device.startswith('cuda'):
                        torch.cuda.reset_peak_memory_stats(device)
                    config = {**DEFAULTS, **SETTINGS[setting]}
                    n_steps = max(30, steps * 32 // config['batch_size'])
                    speeds, model = train_speeds(train, config, device, n_steps, rounds)
                    evaluation = eval_speeds(model, test, device) if setting == settings[0] else None
                    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.startswith('cuda') else None
                    table.append((name, len(train.item_map), device, setting, config, speeds, evaluation, peak))
                    print(f'  {name}, {device}, {setting}: fast {max(speeds["fast"]):,.0f}, roofline '
                          f'{max(speeds["roofline"]):,.0f} events/s', flush=True)
    print()
    print('| data | items | device | setting | layers / batch / n_sample / loss | fast events/s | plain events/s | '
          'official-style events/s | fast / plain | fast / official-style | roofline events/s | GFLOP a step | '
          'roofline GFLOP/s | fast / roofline | eval predictions/s | compiled eval predictions/s | graph eval '
          'predictions/s | score-product bound | peak GPU memory (GiB) |')
    print('|---' * 19 + '|')
    for name, items, device, setting, config, speeds, evaluation, peak in table:
        ev = ' | '.join('-' if x is None else f'{x:,.0f}' for x in evaluation) if evaluation else ' | | | '
        print(f'| {name} | {items:,} | {device} | {setting} | {describe(config)} | {max(speeds["fast"]):,.0f} | '
              f'{max(speeds["plain"]):,.0f} | {max(speeds["official"]):,.0f} | '
              f'{median_ratio(speeds, "fast", "plain"):.2f} | {median_ratio(speeds, "fast", "official"):.2f} | '
              f'{roofline_cells(config, speeds)} | {median_ratio(speeds, "fast", "roofline"):.2f} | {ev} | '
              f'{"" if peak is None else f"{peak:.2f}"} |')


def run(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--quick', action='store_true', help='fewer rows, steps and rounds: under 3 minutes on 2 CPU '
                   'cores (with --official_code: two rows on the real sample)')
    p.add_argument('--device', default='auto', help='auto = cpu, plus cuda when available')
    p.add_argument('--steps', type=int, help='mini-batches per timed run (batch-32 equivalent; default 200, '
                   'quick 150; full scale 2000)')
    p.add_argument('--rounds', type=int, help='alternating rounds (default 7, quick 3; --official_code 5, quick 3)')
    p.add_argument('--rows', nargs='+', choices=list(SETTINGS), metavar='ROW',
                   help=f'only these rows, on each data set (of: {", ".join(SETTINGS)})')
    p.add_argument('--full_scale', metavar='FOLDER', help='a preprocessed RSC15-scale split instead of the table')
    p.add_argument('--synthetic_sessions', type=int, default=800_000, help='size of the synthetic data set (its '
                   '52,739 items keep about 38k after preprocessing at the default size)')
    p.add_argument('--settings', type=int, help='only the first N rows of each data set (a smoke run)')
    p.add_argument('--official_code', metavar='DIR', help='a clone of hidasib/GRU4Rec_PyTorch_Official: compare '
                   'with it instead of the table')
    p.add_argument('--official_events', type=int, default=OFFICIAL_SYNTHETIC_EVENTS, help='--official_code: '
                   'clicks of the synthetic split it trains on (its earliest sessions; default %(default)s, '
                   '18.8k items; 1M: 37.6k items, the synthetic rows taking 8x as long)')
    p.add_argument('--modes', nargs='+', default=['fast'], choices=STEP_MODES, metavar='MODE',
                   help='--official_code: a row per --step_mode of ours (default fast; e.g. fast compiled); '
                   '--full_scale: the (first) mode to train with')
    p.add_argument('--glibc_default', action='store_true', help="leave glibc's allocator thresholds as they are "
                   '(by default the process keeps freed memory, devices.keep_freed_memory, as training does on '
                   'the CPU; --official_code: the official code then runs with it too)')
    args = p.parse_args(argv)
    if not args.glibc_default:
        keep_freed_memory()
    gpu = pick_device('auto') if args.device == 'auto' else None        # a GPU that runs this torch's kernels
    devices = ['cpu'] + ([gpu] if gpu not in (None, 'cpu') else []) if args.device == 'auto' else \
        [pick_device(args.device)]
    if args.official_code:
        against_official(args.official_code, devices, args.quick, args.rounds or (3 if args.quick else 5), args.rows,
                         args.settings, args.official_events, args.modes)
    elif args.full_scale:
        for device in devices:
            full_scale(args.full_scale, device, args.steps or 2000, args.modes[0])
    else:
        default_table(devices, args.quick, args.steps or (150 if args.quick else 200),
                      args.rounds or (3 if args.quick else 7), args.rows, args.settings, args.synthetic_sessions)


if __name__ == '__main__':
    run()
