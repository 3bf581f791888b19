"""Faithfulness: our GRU4Rec beside the authors' official PyTorch code, step by step and over seeds.

    python3 scripts/faithfulness.py --official_code DIR --seeds 1 2 3
    python3 scripts/faithfulness.py --official_code DIR --lockstep 300 --seeds        # the step check alone
    python3 scripts/faithfulness.py --variants default all n_valid --presets rsc15_xe_shared_100 --seeds 1 2 3
    python3 scripts/faithfulness.py --official_code DIR --data_folder DIR --name yoochoose1_64

DIR of --official_code: a clone of hidasib/GRU4Rec_PyTorch_Official (none of its code is in this
repository; it is imported from there). Two checks:

1. Lockstep (`--lockstep STEPS`, needs the official code): the official model, loss and optimiser and
   ours are put at the same point before every step - our tables, GRU weights, Adagrad accumulators and
   velocities copied from the official ones - and fed the same batch of the official iterator (same
   inputs, targets, negative samples, logQ, dropout off); after the step every parameter and optimiser
   state of the two is compared. Equal up to float rounding (relative differences ~1e-6) means the two
   compute the same update, so no systematic difference is left in model, loss or optimiser; a
   deviation such as the output bias of issue #20 shows as a difference of the size of a step.
2. Seeds (`--seeds`): each preset trained `--n_epochs` epochs on <name>_train_full.txt and evaluated on
   <name>_test.txt (Recall@20 / MRR@20, standard ties, every item ranked), once per seed, by the official
   code (its default numpy initialisation; the seed sets torch's RNG: dropout and negative samples) and
   by ours in each `--variants` entry: `default`, one name of config.QUIRKS (that difference switched to
   the official behaviour), or `all` (every quirk). Prints every run, then a table with the mean and
   standard deviation per row and each row's mean relative to the official mean.

Under NumPy 2 the official numpy initialisation hands float64 weights to float32 parameters and fails;
each block it draws is cast to float32 here (the values NumPy 1 gave). Its fit hands a pandas Series to
torch.tensor, which pandas 3 refuses; scripts/bench_train.load_official passes the values instead.

Data: `--data_folder` with the four-file layout of preprocessing.py and `--name` its prefix; by default
the real sample (../shared/data/yoochoose-clicks-sample.dat; without it the synthetic demo data) is
preprocessed into a temporary folder. Each run is single-threaded (--threads): runs are then exactly
repeatable, and two can run side by side on a 2-core machine. On such a machine a run of ours at the
RSC15 setting on the sample takes about 70 s, the official code about 150 s.
"""
import argparse
import contextlib
import importlib.util
import io
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cli import ArgumentParser, InputError, run_cli, write_atomically  # noqa: E402
from config import DEFAULTS, PRESETS, QUIRKS  # noqa: E402
from dataset import SessionData  # noqa: E402
from evaluation import evaluate  # noqa: E402
from loss import loss_function  # noqa: E402
from model import GRU4Rec  # noqa: E402
from optimizer import AdagradM  # noqa: E402
from static_step import STEP_MODES  # noqa: E402
from scripts.bench_train import load_official, official_settings  # noqa: E402
from scripts.reproduce import prepare_quick_data  # noqa: E402
from training import train_epoch, training_setup  # noqa: E402

VARIANTS = ['default', 'all'] + list(QUIRKS)


def official_module(folder):
    """The official module (loaded once) with its numpy initialisation cast to float32, and its
    evaluation module, which imports the former by its file name."""
    module = load_official(folder)
    draw = module.GRU4RecModel._init_numpy_weights

    def float32_draw(self, shape):
        return draw(self, shape).astype(np.float32)
    module.GRU4RecModel._init_numpy_weights = float32_draw
    sys.modules['gru4rec_pytorch'] = module
    path = os.path.join(folder, 'evaluation.py')
    spec = importlib.util.spec_from_file_location('official_evaluation', path)
    evaluation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluation)
    return module, evaluation


def read_frame(path):
    return pd.read_csv(path, sep='\t', dtype={'SessionId': 'int64', 'ItemId': 'str', 'Time': 'float64'})


def official_run(official, train_frame, test_frame, config, seed, n_epochs):
    """(Recall@20, MRR@20) of the official code, default initialisation, torch seeded with `seed`."""
    module, evaluation = official
    torch.manual_seed(seed)
    model = module.GRU4Rec(**dict(official_settings(config), n_epochs=n_epochs), device=torch.device('cpu'))
    with contextlib.redirect_stdout(io.StringIO()):
        model.fit(train_frame.copy())
        recall, mrr = evaluation.batch_eval(model, test_frame.copy(), cutoff=[20], batch_size=512, mode='standard')
    return float(recall[20]), float(mrr[20])


def variant_config(config, variant):
    quirks = list(QUIRKS) if variant == 'all' else [] if variant == 'default' else [variant]
    return {**DEFAULTS, **config, 'official_quirks': quirks}


def our_run(train, test, config, seed, n_epochs, variant, step_mode='fast'):
    """(Recall@20, MRR@20) of our GRU4Rec in one variant, trained with --step_mode `step_mode`."""
    config = {**variant_config(config, variant), 'seed': seed, 'n_epochs': n_epochs, 'step_mode': step_mode}
    torch.manual_seed(seed)
    np.random.seed(seed)
    run = training_setup(config, train, 'cpu')
    for _ in range(n_epochs):
        train_epoch(*run, config, 'cpu')
    metrics = evaluate(run[0], test, [1, 5, 10, 20], 'standard', 512, 'cpu')
    return metrics['Recall@20'], metrics['MRR@20'], metrics


# ---------------------------------------------------------------- lockstep

def lockstep(official, frame, config, steps):
    """{name: largest relative difference over `steps` steps} between the official step and ours taken
    from the same point (see the module docstring); 'loss' compares the step losses."""
    module, _ = official
    settings = dict(official_settings(config), dropout_p_embed=0.0, dropout_p_hidden=0.0)
    gru = module.GRU4Rec(**settings, device=torch.device('cpu'))
    torch.manual_seed(1)
    with contextlib.redirect_stdout(io.StringIO()):
        gru.data_iterator = module.SessionDataIterator(frame.copy(), gru.batch_size, n_sample=gru.n_sample,
                                                       sample_alpha=gru.sample_alpha, device=torch.device('cpu'))
    counts = torch.tensor(frame.groupby('ItemId').size()[gru.data_iterator.itemidmap.index.values].to_numpy(),
                          dtype=torch.float32)
    gru.P0 = counts
    theirs = module.GRU4RecModel(gru.data_iterator.n_items, gru.layers, 0.0, 0.0, 0, True)
    theirs._reset_weights_to_compatibility_mode()
    gru.model = theirs
    their_optimizer = module.IndexedAdagradM(theirs.parameters(), gru.learning_rate, gru.momentum)
    ours = GRU4Rec(gru.data_iterator.n_items, layers=gru.layers)
    our_optimizer = AdagradM(ours.parameters(), lr=gru.learning_rate, momentum=gru.momentum)
    loss_fn = loss_function(config['loss_type'], config['final_act'], gru.batch_size, config['bpreg'])
    use_logq = gru.logq > 0 and gru.loss == 'cross-entropy'
    pairs = [('Wy', ours.Wy, theirs.Wy.weight), ('By', ours.By, theirs.By.weight)]
    for i, cell in enumerate(ours.cells):
        pairs += [(f'cells.{i}.{n}', getattr(cell, n), getattr(theirs.G[i], n))
                  for n in ('weight_ih', 'weight_hh', 'bias_ih', 'bias_hh')]
    worst = {name: 0.0 for name, _, _ in pairs}
    worst.update({f'{name} velocity': 0.0 for name, _, _ in pairs}, loss=0.0)
    H = [torch.zeros(gru.batch_size, size) for size in gru.layers]
    hook = lambda n_valid, finished, valid: gru._adjust_hidden(n_valid, finished, valid, H)   # noqa: E731
    batches = gru.data_iterator(enable_neg_samples=gru.n_sample > 0, reset_hook=hook)
    for step, (inputs, candidates) in enumerate(batches):
        if step == steps:
            break
        with torch.no_grad():                  # ours starts where theirs stands
            for name, mine, their in pairs:
                mine.copy_(their.view_as(mine))
                state = their_optimizer.state[their]
                our_optimizer.state[mine] = {
                    'acc': state['acc'].view_as(mine).clone(),
                    'velocity': state['mom'].view_as(mine).clone() if 'mom' in state else torch.zeros_like(mine)}
        hidden = [h.detach().clone() for h in H]
        for h in H:
            h.detach_()
        theirs.zero_grad()
        scores = theirs.forward(inputs, H, candidates, training=True)
        their_loss = gru.loss_function(scores, candidates, gru.batch_size) / gru.batch_size
        their_loss.backward()
        their_optimizer.step()
        inputs, candidates = inputs.long(), candidates.long()
        correction = None
        if use_logq:                           # the official split: the first B candidates in-batch
            correction = gru.logq * torch.log(torch.cat([counts[candidates[:gru.batch_size]],
                                                         counts[candidates[gru.batch_size:]] ** gru.sample_alpha]))
        our_loss, _ = ours.train_step(inputs, hidden, candidates, loss_fn, correction)
        our_optimizer.update()
        worst['loss'] = max(worst['loss'], abs(our_loss.item() - their_loss.item()) / abs(their_loss.item()))
        for name, mine, their in pairs:
            worst[name] = max(worst[name], relative(mine, their.view_as(mine)))
            if 'mom' in their_optimizer.state[their]:
                worst[f'{name} velocity'] = max(worst[f'{name} velocity'], relative(
                    our_optimizer.state[mine]['velocity'], their_optimizer.state[their]['mom'].view_as(mine)))
    return {name: value for name, value in worst.items() if 'velocity' not in name or gru.momentum > 0}, step


def relative(a, b):
    """max |a - b| relative to the largest |b| (0 for equal tensors)."""
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / scale if scale > 0 else (a - b).abs().max().item()


# ---------------------------------------------------------------- the table

def summary(rows, seeds):
    lines = ['| preset | code | ' + ' | '.join(f'R@20 seed {s}' for s in seeds) +
             ' | R@20 mean ± sd | vs official | MRR@20 mean ± sd | vs official |',
             '|---|---|' + '---|' * len(seeds) + '---|---|---|---|']
    for preset, name, runs in rows:
        reference = next((r for q, n, r in rows if q == preset and n == 'official'), None)
        cells = []
        for i in (0, 1):
            values = [r[i] for r in runs]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f'{statistics.mean(values):.4f} ± {sd:.4f}')
            cells.append('-' if reference is None else
                         f'{statistics.mean(values) / statistics.mean(r[i] for r in reference) - 1:+.2%}')
        lines.append(f'| {preset} | {name} | ' + ' | '.join(f'{r[0]:.4f}' for r in runs) + ' | ' +
                     ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main(argv=None):
    p = ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--official_code', metavar='DIR', help='a clone of hidasib/GRU4Rec_PyTorch_Official '
                   '(without it only our variants run)')
    p.add_argument('--seeds', type=int, nargs='*', default=[1, 2, 3], help='none: no training runs')
    p.add_argument('--presets', nargs='+', default=['rsc15_xe_shared_100', 'bprmax_shared'], choices=list(PRESETS))
    p.add_argument('--variants', nargs='*', default=['default'], choices=VARIANTS,
                   help='our runs: default, all (every official quirk) or one quirk: ' + ', '.join(QUIRKS))
    p.add_argument('--no_official', action='store_true', help='skip the official code\'s training runs')
    p.add_argument('--lockstep', type=int, default=300, metavar='STEPS', help='steps of the lockstep check '
                   'per preset (with --official_code; 0: none)')
    p.add_argument('--n_epochs', type=int, default=10)
    p.add_argument('--data_folder', help='folder of the four-file layout (default: the real sample, '
                   'preprocessed into a temporary folder)')
    p.add_argument('--name', default='rsc15', help='the files\' prefix in --data_folder')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--step_mode', default='fast', choices=STEP_MODES, help='how our runs compute a step '
                   '(main.py --step_mode)')
    p.add_argument('--out', help='also write the runs and the lockstep figures to this JSON file')
    args = p.parse_args(argv)
    if args.n_epochs < 1 or args.threads < 1 or args.lockstep < 0:
        raise InputError('--n_epochs and --threads must be >= 1 and --lockstep >= 0')
    torch.set_num_threads(args.threads)
    official = official_module(args.official_code) if args.official_code else None
    report = {'argv': sys.argv[1:], 'lockstep': {}, 'runs': []}
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.data_folder
        if folder is None:
            prepare_quick_data(scratch)
            folder = scratch
        train_path, test_path = (os.path.join(folder, f'{args.name}_{n}.txt') for n in ('train_full', 'test'))
        for path in (train_path, test_path):
            if not os.path.isfile(path):
                raise InputError(f'--data_folder {folder}: no {os.path.basename(path)} (see --name)')
        train = SessionData(train_path)
        test = SessionData(test_path, item_map=train.item_map)
        frames = (read_frame(train_path), read_frame(test_path)) if official else None
        if official and args.lockstep:
            for preset in args.presets:
                worst, steps = lockstep(official, frames[0], PRESETS[preset], args.lockstep)
                report['lockstep'][preset] = worst
                print(f'lockstep {preset}, {steps} steps, largest relative difference ours - official: ' +
                      ', '.join(f'{k} {v:.1e}' for k, v in worst.items()), flush=True)
        rows = []
        for preset in args.presets:
            sides = ([('official', None)] if official and not args.no_official else []) + \
                    [(f'ours: {v}' + ('' if args.step_mode == 'fast' else f' ({args.step_mode})'), v)
                     for v in args.variants]
            for name, variant in sides:
                runs = []
                for seed in args.seeds:
                    start = time.perf_counter()
                    result = official_run(official, *frames, PRESETS[preset], seed, args.n_epochs) \
                        if variant is None else our_run(train, test, PRESETS[preset], seed, args.n_epochs, variant,
                                                     args.step_mode)
                    runs.append(result)
                    report['runs'].append(dict(preset=preset, code=name, seed=seed, recall=result[0], mrr=result[1],
                                               metrics=result[2] if len(result) > 2 else None))
                    print(f'{preset} {name} seed {seed}: R@20 {result[0]:.4f} MRR@20 {result[1]:.4f} '
                          f'({time.perf_counter() - start:.0f} s)', flush=True)
                if runs:
                    rows.append((preset, name, runs))
    if rows:
        print(f'\n{args.n_epochs} epochs on {train_path} ({train.n_events:,} events), evaluated on {test_path} '
              f'({len(test.items) - len(test.session_ids):,} predictions); seeds {" ".join(map(str, args.seeds))}; '
              f'standard ties\n')
        print(summary(rows, args.seeds))
    if args.out:
        write_atomically([args.out], lambda tmp: json.dump(report, open(tmp[args.out], 'w'), indent=1))


if __name__ == '__main__':
    run_cli(main)
