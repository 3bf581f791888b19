"""Preprocessing speed and memory at full scale, side by side with a bare read of the same input.

    python scripts/bench_preprocessing.py            # builds data/synthetic_full/yoochoose-clicks.dat once (~1.5 GB)
    python scripts/bench_preprocessing.py --clicks data/yoochoose-clicks.dat   # the real file
    python scripts/bench_preprocessing.py --dataset rees46                     # ~110M events, built once (~13 GB)
    python scripts/bench_preprocessing.py --dataset rees46 --rows 2000000      # a quick check at small scale
    python scripts/bench_preprocessing.py --protocol srgnn --recent_fraction 4  # SR-GNN's sets from the raw file

rsc15: against a bare pandas.read_csv of the click file; targets (issue 2): <= 3x, peak RSS <= 6 GB.
rees46 (issue 15): two synthetic monthly CSVs with the real columns (`event_time,event_type,product_id,
category_id,category_code,brand,price,user_id,user_session`, October 42.4M + November 67.5M rows at full
scale, as the real files), cached under data/synthetic_rees46/<rows>/; `preprocessing.py --dataset rees46`
against a bare pyarrow read of the four columns it needs; targets: <= 3x, peak RSS <= 12 GB.
--protocol srgnn (issue 21): `preprocessing.py --dataset yoochoose --protocol srgnn [--recent_fraction N]` on
the same RSC15-scale click file (no target: a check that the SR-GNN route is practical at full scale).

Each measurement runs in a fresh process (wall seconds measured here, peak RSS of that process from
wait4); the two are alternated `--repeats` times with a warm page cache and the medians are printed.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(ROOT, 'data', 'synthetic_full', 'yoochoose-clicks.dat')


def measure(args):
    """Run a command; return (wall seconds, peak RSS in GB) of that process alone."""
    start = time.perf_counter()
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        sys.exit(f'error: {" ".join(args)} failed')
    return seconds, usage.ru_maxrss / 1024 ** 2


REES46_ROWS = 109_950_743            # 2019-Oct.csv 42,448,764 + 2019-Nov.csv 67,501,979 rows
OCTOBER_SHARE = 42_448_764 / REES46_ROWS
REES46_COLUMNS = 'event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session'
MONTH_START = {'2019-Oct.csv': 1569888000, '2019-Nov.csv': 1572566400}      # UTC seconds of the 1st
MONTH_DAYS = {'2019-Oct.csv': 31, '2019-Nov.csv': 30}
MONTH_NUMBER = {'2019-Oct.csv': b'10', '2019-Nov.csv': b'11'}
HEX = np.frombuffer(b'0123456789abcdef', dtype=np.uint8)
TWO_DIGITS = np.frombuffer(''.join(f'{i:02d}' for i in range(100)).encode(), dtype=np.uint8).reshape(100, 2)


def fixed_strings(chars):
    """A (rows, width) uint8 array of ASCII -> a pyarrow string array (no per-row Python)."""
    rows, width = chars.shape
    offsets = np.arange(0, rows * width + 1, width, dtype=np.int64)
    return pa.LargeStringArray.from_buffers(rows, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(chars)))


def rees46_chunk(rng, month, n, lo, hi, n_users, n_items):
    """n rows of one month, times in [lo, hi) seconds after its start (sorted, as the real files are)."""
    seconds = np.sort(rng.integers(lo, hi, n))
    day, rest = np.divmod(seconds, 86400)
    hour, rest = np.divmod(rest, 3600)
    minute, second = np.divmod(rest, 60)
    stamp = np.empty((n, 23), dtype=np.uint8)
    stamp[:] = np.frombuffer(b'2019-' + MONTH_NUMBER[month] + b'-00 00:00:00 UTC', dtype=np.uint8)
    for at, values in ((8, day + 1), (11, hour), (14, minute), (17, second)):
        stamp[:, at:at + 2] = TWO_DIGITS[values]
    # users: a Zipf-like activity, each event's user drawn from it; items: Zipf-like popularity
    user = 512_000_000 + (n_users * rng.random(n) ** 3).astype(np.int64)
    item = 1_000_000 + (n_items * rng.random(n) ** 4).astype(np.int64)
    kind = np.searchsorted([0.94, 0.98], rng.random(n))              # view 94%, cart 4%, purchase 2%
    words = pa.array(['view', 'cart', 'purchase']).take(pa.array(kind))
    session = HEX[np.frombuffer(rng.bytes(n * 36), dtype=np.uint8).reshape(n, 36) & 15]
    session[:, [8, 13, 18, 23]] = ord('-')
    codes = pa.array(['', 'electronics.smartphone', 'appliances.kitchen.washer', 'computers.notebook'])
    brands = pa.array(['', 'samsung', 'apple', 'xiaomi', 'huawei', 'lucente'])
    return pa.table({'event_time': fixed_strings(stamp), 'event_type': words, 'product_id': item,
                     'category_id': 2053013555631882655 + item % 997, 'category_code': codes.take(pa.array(item % 4)),
                     'brand': brands.take(pa.array(item % 6)), 'price': np.round(rng.random(n) * 500, 2),
                     'user_id': user, 'user_session': fixed_strings(session)})


def build_rees46(folder, rows, chunk=2_000_000):
    """The two monthly files, written chunk by chunk (a few hundred MB of memory whatever the size)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(46)
    n_users, n_items = max(rows // 21, 10), max(rows // 580, 50)      # the real files: ~5.3M users, ~190k items
    for month, share in (('2019-Oct.csv', OCTOBER_SHARE), ('2019-Nov.csv', 1 - OCTOBER_SHARE)):
        path = os.path.join(folder, month)
        total = int(round(rows * share))
        span = MONTH_DAYS[month] * 86400
        with open(path + '.part', 'wb') as f:
            f.write((REES46_COLUMNS + '\n').encode())
            for lo in range(0, total, chunk):
                n = min(chunk, total - lo)
                table = rees46_chunk(rng, month, n, span * lo // total, span * (lo + n) // total, n_users, n_items)
                pacsv.write_csv(table, f, pacsv.WriteOptions(include_header=False, quoting_style='none'))
        os.replace(path + '.part', path)
    return [os.path.join(folder, month) for month in MONTH_START]


def bench_rees46(args):
    folder = os.path.join(ROOT, 'data', 'synthetic_rees46', str(args.rows))
    paths = [os.path.join(folder, month) for month in MONTH_START]
    if not all(os.path.isfile(p) for p in paths):
        print(f'building {folder} (once) ...', flush=True)
        start = time.perf_counter()         # in a child: a forked child's peak RSS starts at its parent's
        subprocess.run([sys.executable, '-c', 'import sys; sys.path.insert(0, "scripts"); import bench_preprocessing '
                        f'as b; b.build_rees46({folder!r}, {args.rows})'], cwd=ROOT, check=True)
        print(f'built in {time.perf_counter() - start:.0f} s', flush=True)
    columns = ['event_time', 'event_type', 'product_id', 'user_id']
    bare = [sys.executable, '-c', 'import pyarrow.csv as c, sys\n'
            'for p in sys.argv[1:]: c.read_csv(p, convert_options=c.ConvertOptions(include_columns='
            f'{columns!r}))', *paths]
    runs = {'bare pyarrow read_csv (4 columns)': [], 'preprocessing.py --dataset rees46': []}
    for _ in range(args.repeats):
        runs['bare pyarrow read_csv (4 columns)'].append(measure(bare))
        out = tempfile.mkdtemp(prefix='bench_pre_', dir=os.path.join(ROOT, 'data'))
        try:
            runs['preprocessing.py --dataset rees46'].append(measure(
                [sys.executable, 'preprocessing.py', '--dataset', 'rees46', '--input', *paths, '--output_dir', out]))
        finally:
            shutil.rmtree(out)
    size = sum(os.path.getsize(p) for p in paths) / 1024 ** 3
    print(f'\n{folder}: {args.rows:,} rows ({size:.2f} GB), {os.cpu_count()} CPU cores, '
          f'median of {args.repeats} run(s)\n')
    table(runs, 'bare pyarrow read_csv (4 columns)', 'preprocessing.py --dataset rees46', rss_target=12)


def table(runs, bare_name, ours_name, rss_target, ratio_target=3):
    print('| step | seconds | peak RSS (GB) |')
    print('|---|---|---|')
    medians = {}
    for name, values in runs.items():
        medians[name] = statistics.median(s for s, _ in values)
        print(f'| {name} | {medians[name]:.1f} | {max(r for _, r in values):.2f} |')
    ratio = medians[ours_name] / medians[bare_name]
    if ratio_target is None:
        print(f'| ratio preprocessing / bare read | {ratio:.2f} | |')
    else:
        print(f'| ratio preprocessing / bare read | {ratio:.2f} (target <= {ratio_target}) | (target <= {rss_target}) |')


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--dataset', choices=['rsc15', 'rees46'], default='rsc15')
    p.add_argument('--clicks', default=DEFAULT, help='rsc15: raw click file (default: the cached synthetic one)')
    p.add_argument('--rows', type=int, default=REES46_ROWS, help='rees46: rows of the two files together')
    p.add_argument('--repeats', type=int, default=None, help='runs of each (default: 3 for rsc15, 1 for rees46)')
    p.add_argument('--protocol', choices=['srgnn'], help='rsc15: the SR-GNN protocol\'s sets (J2) instead')
    p.add_argument('--recent_fraction', type=int, help='--protocol srgnn: keep the most recent 1/N (64 or 4)')
    args = p.parse_args()
    if args.recent_fraction and not args.protocol:
        p.error('--recent_fraction goes with --protocol srgnn')
    if args.protocol and args.dataset != 'rsc15':
        p.error('--protocol srgnn is for --dataset rsc15 (the yoochoose click file)')
    if args.dataset == 'rees46':
        args.repeats = args.repeats or 1
        return bench_rees46(args)
    args.repeats = args.repeats or 3
    if not os.path.isfile(args.clicks):
        if args.clicks != DEFAULT:
            sys.exit(f'error: {args.clicks}: no such file')
        print(f'building {DEFAULT} (once) ...', flush=True)
        subprocess.run([sys.executable, 'scripts/make_synthetic.py', '--full', '--out', DEFAULT], cwd=ROOT, check=True)
    with open(args.clicks, 'rb') as f:          # warm the page cache for both contenders
        while f.read(1 << 24):
            pass
    bare = [sys.executable, '-c', f'import pandas; pandas.read_csv({args.clicks!r}, header=None)']
    ours, command = 'preprocessing.py', [sys.executable, 'preprocessing.py', '--input', args.clicks]
    if args.protocol:
        ours += ' --protocol srgnn' + (f' --recent_fraction {args.recent_fraction}' if args.recent_fraction else '')
        command += ['--dataset', 'yoochoose', '--protocol', 'srgnn'] + \
            (['--recent_fraction', str(args.recent_fraction)] if args.recent_fraction else [])
    runs = {'bare pandas.read_csv': [], ours: []}
    for _ in range(args.repeats):
        runs['bare pandas.read_csv'].append(measure(bare))
        out = tempfile.mkdtemp(prefix='bench_pre_')
        try:
            runs[ours].append(measure(command + ['--output_dir', out]))
        finally:
            shutil.rmtree(out)
    size = os.path.getsize(args.clicks) / 1024 ** 3
    print(f'\n{args.clicks} ({size:.2f} GB), {os.cpu_count()} CPU cores, median of {args.repeats} runs\n')
    table(runs, 'bare pandas.read_csv', ours, rss_target=6, ratio_target=None if args.protocol else 3)


if __name__ == '__main__':
    main()
