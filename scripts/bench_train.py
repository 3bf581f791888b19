"""Training and evaluation speed of GRU4Rec (events/s), side by side for n_sample 0 / 512 / 2048.

    python scripts/bench_train.py                      # CPU; also the GPU when one is available
    python scripts/bench_train.py --device cpu --steps 800

Data: the real 84k-click sample (../shared/data/yoochoose-clicks-sample.dat, preprocessed into a temporary
folder; skipped when absent) and a synthetic split at RSC15 scale in items (about 37.5k training items,
made by scripts/make_synthetic.py). Settings: the official RSC15 paramfile (`rsc15_xe_shared_100`: XE,
shared embedding, 100 units, batch 32, dropout 0.4, momentum 0.2, logQ) with n_sample varied.
Training speed = targets per second over `--steps` mini-batches after a 50-step warm-up; evaluation
speed = predictions per second over the whole test split (batch 512). Each cell is the best of
`--repeats` runs (the shared 2-core machines are noisy; the best run is the least disturbed one).
Reference (issue 3): the official PyTorch code trains at about 9,200 events/s (n_sample 2048) and
14,000 (n_sample 512) with two threads on these 2-core machines.
"""
import argparse
import contextlib
import io
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import main  # noqa: E402
import preprocessing  # noqa: E402
from dataset import SampleStore, SessionData, SessionParallelIterator  # noqa: E402
from evaluation import evaluate  # noqa: E402
from scripts.make_synthetic import generate, write_raw  # noqa: E402

SAMPLE = os.path.join(ROOT, '..', 'shared', 'data', 'yoochoose-clicks-sample.dat')


def sync(device):
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def train_speed(data, config, device, steps, repeats):
    model = main.build_model(config, len(data.item_map), device)
    optimizer = main.make_optimizer(config['optimizer_type'], model.parameters(), config['lr'], config['momentum'])
    loss_fn = main.loss_function(config['loss_type'], config['final_act'], config['batch_size'], config['bpreg'])
    iterator = SessionParallelIterator(data, config['batch_size'])
    support = data.item_support()
    sampler = SampleStore(support, config['n_sample'], config['sample_alpha'], config['sample_store'],
                          device=device) if config['n_sample'] else None
    log_support = torch.log(torch.from_numpy(support).clamp(min=1).float()).to(device)
    logq = (log_support, config['sample_alpha'] * log_support)
    main.train_epoch(model, optimizer, loss_fn, iterator, sampler, logq, config, device, max_steps=50)
    best = 0.0
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        _, n_targets, _ = main.train_epoch(model, optimizer, loss_fn, iterator, sampler, logq, config, device,
                                           max_steps=steps)
        sync(device)
        best = max(best, n_targets / (time.perf_counter() - start))
    return best, model


def eval_speed(model, test, device, repeats):
    best = 0.0
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = evaluate(model, test, batch_size=512, device=device)
        sync(device)
        best = max(best, result['n_predictions'] / (time.perf_counter() - start))
    return best


def datasets(folder):
    out = []
    if os.path.isfile(SAMPLE):
        with contextlib.redirect_stdout(io.StringIO()):
            preprocessing.preprocess(SAMPLE, os.path.join(folder, 'sample') + '/')
        out.append(('real sample', os.path.join(folder, 'sample')))
    raw = os.path.join(folder, 'synthetic', 'yoochoose-clicks.dat')
    os.makedirs(os.path.dirname(raw))
    write_raw(raw, generate(800_000, 52_739, days=30, seed=11))
    with contextlib.redirect_stdout(io.StringIO()):
        preprocessing.preprocess(raw, os.path.dirname(raw) + '/')
    out.append(('synthetic, RSC15 items', os.path.dirname(raw)))
    return out


def main_():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='auto', help='auto = cpu, plus cuda when available')
    p.add_argument('--steps', type=int, default=1500)
    p.add_argument('--repeats', type=int, default=2)
    args = p.parse_args()
    devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else []) if args.device == 'auto' else [args.device]
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, devices: {", ".join(devices)}')
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, path in datasets(folder):
            train = SessionData(os.path.join(path, 'rsc15_train_full.txt'))
            test = SessionData(os.path.join(path, 'rsc15_test.txt'), item_map=train.item_map)
            for device in devices:
                for n_sample in (0, 512, 2048):
                    config = {**main.DEFAULTS, **main.PRESETS['rsc15_xe_shared_100'], 'n_sample': n_sample}
                    speed, model = train_speed(train, config, device, args.steps, args.repeats)
                    rows.append((name, len(train.item_map), device, n_sample, speed,
                                 eval_speed(model, test, device, args.repeats)))
                    print(f'  {rows[-1][0]}, {device}, n_sample {n_sample}: {speed:,.0f} train events/s', flush=True)
    print()
    print('| data | items | device | n_sample | train events/s | eval events/s |')
    print('|---|---|---|---|---|---|')
    for name, items, device, n_sample, train_eps, eval_eps in rows:
        print(f'| {name} | {items:,} | {device} | {n_sample} | {train_eps:,.0f} | {eval_eps:,.0f} |')


if __name__ == '__main__':
    main_()
