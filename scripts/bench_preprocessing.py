"""Preprocessing speed and memory at full RSC15 scale, side by side with a bare pandas.read_csv.

    python scripts/bench_preprocessing.py            # builds data/synthetic_full/yoochoose-clicks.dat once (~1.5 GB)
    python scripts/bench_preprocessing.py --clicks data/yoochoose-clicks.dat   # the real file

Each measurement runs in a fresh process (wall seconds measured here, peak RSS of that process from
wait4); the two are alternated `--repeats` times with a warm page cache and the medians are printed.
Targets (issue 2): preprocessing <= 3x the bare read, peak RSS <= 6 GB.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

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


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--clicks', default=DEFAULT, help='raw click file (default: the cached full-size synthetic one)')
    p.add_argument('--repeats', type=int, default=3)
    args = p.parse_args()
    if not os.path.isfile(args.clicks):
        if args.clicks != DEFAULT:
            sys.exit(f'error: {args.clicks}: no such file')
        print(f'building {DEFAULT} (once) ...', flush=True)
        subprocess.run([sys.executable, 'scripts/make_synthetic.py', '--full', '--out', DEFAULT], cwd=ROOT, check=True)
    with open(args.clicks, 'rb') as f:          # warm the page cache for both contenders
        while f.read(1 << 24):
            pass
    bare = [sys.executable, '-c', f'import pandas; pandas.read_csv({args.clicks!r}, header=None)']
    runs = {'bare pandas.read_csv': [], 'preprocessing.py': []}
    for _ in range(args.repeats):
        runs['bare pandas.read_csv'].append(measure(bare))
        out = tempfile.mkdtemp(prefix='bench_pre_')
        try:
            runs['preprocessing.py'].append(measure([sys.executable, 'preprocessing.py', '--input', args.clicks,
                                                     '--output_dir', out]))
        finally:
            shutil.rmtree(out)
    size = os.path.getsize(args.clicks) / 1024 ** 3
    print(f'\n{args.clicks} ({size:.2f} GB), {os.cpu_count()} CPU cores, median of {args.repeats} runs\n')
    print('| step | seconds | peak RSS (GB) |')
    print('|---|---|---|')
    medians = {}
    for name, values in runs.items():
        medians[name] = statistics.median(s for s, _ in values)
        print(f'| {name} | {medians[name]:.1f} | {max(r for _, r in values):.2f} |')
    ratio = medians['preprocessing.py'] / medians['bare pandas.read_csv']
    print(f'| ratio preprocessing / bare read | {ratio:.2f} (target <= 3) | |')


if __name__ == '__main__':
    main()
