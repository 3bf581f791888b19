"""Speed of recommend.py (issue #18 §4): click() latency, recommend_batch throughput and HTTP round trips,
for GRU4Rec (one GRU step per click) and the history models NARM and SASRec (the encoder over the session's
history at every click, so their cost grows with the session's length: a second table shows it).

    python scripts/bench_recommend.py                   # 37.5k items, about 3 minutes on 2 CPU cores
    python scripts/bench_recommend.py --quick           # fewer clicks and requests, under a minute

Data: scripts/make_synthetic.py's clicks with an item map of 37,500 items (the RSC15 training map's size;
ids the clicks do not reach pad the map, with no clicks);
the sessions' lengths are the generator's (long-tailed, mean about 3.6 before the filters). Models: GRU4Rec
with the official RSC15 settings' shape (100 units, shared embedding), NARM and SASRec with their defaults,
untrained (the speed of a ranking does not depend on the weights), saved as main.py's checkpoints so the
HTTP service loads them as a user's.
* click: `click()` of live sessions, click by click, each timed alone (p50 / p99 over all clicks), with 2
  torch threads and with 1 (a click's operations are small: on a busy machine the second thread mostly
  makes each operation wait for it);
* batch: `recommend_batch` over whole sessions, sessions per second (2 threads);
* HTTP: `recommend.py --serve` in a subprocess (--threads 1, its default, and 2), 8 client threads sending
  /click requests of their own sessions (p50 / p99 of the round trips, requests per second of all eight);
* by length: click latency (median, 1 thread) at history lengths 1, 5, 10, 20, 50.
Timings on a shared VM move with its load.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from checkpoints import build_model, save_checkpoint  # noqa: E402
from config import COMPARISON_DEFAULTS, DEFAULTS  # noqa: E402
from dataset import ItemMap  # noqa: E402
from recommend import SessionRecommender  # noqa: E402
from scripts.make_synthetic import generate  # noqa: E402

MODELS = ('GRU4Rec', 'NARM', 'SASRec')
LENGTHS = (1, 5, 10, 20, 50)


def synthetic_sessions(n_items, n_sessions, seed=1):
    """(item ids of the map: n_items strings, support per item, sessions as lists of item ids)."""
    clicks = generate(n_sessions, int(n_items * 1.15), seed=seed)
    ids = ItemMap.from_items(clicks['item'].astype(str)).to_list()[:n_items]
    ids += [str(900_000_000 + i) for i in range(n_items - len(ids))]      # never clicked: support 0
    index = {item: i for i, item in enumerate(ids)}
    mapped = np.array([index.get(str(i), -1) for i in clicks['item']])
    support = np.bincount(mapped[mapped >= 0], minlength=n_items)
    bounds = np.flatnonzero(np.r_[True, clicks['session'][1:] != clicks['session'][:-1], True])
    sessions = [[ids[i] for i in mapped[a:b] if i >= 0] for a, b in zip(bounds[:-1], bounds[1:])]
    return ids, support, [s for s in sessions if s]


def make_checkpoint(name, ids, support, folder):
    config = dict(DEFAULTS) if name == 'GRU4Rec' else dict(COMPARISON_DEFAULTS[name])
    model = build_model(dict(config, model=name), len(ids), 'cpu')
    path = os.path.join(folder, f'{name}.pt')
    save_checkpoint(path, model, dict(config, model=name), ItemMap(ids), None, None, 0, None, None,
                    item_support=support)
    return path


def percentiles(seconds):
    ms = np.asarray(seconds) * 1000.0
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def time_clicks(recommender, sessions, n_clicks, k):
    times, done = [], 0
    for s, session in enumerate(sessions):
        for item in session:
            start = time.perf_counter()
            recommender.click(s, item, k)
            times.append(time.perf_counter() - start)
            done += 1
        recommender.end(s)
        if done >= n_clicks:
            break
    return times


def time_by_length(recommender, ids, k, repeats, rng):
    """Median click latency when the session already holds L - 1 clicks, for L in LENGTHS."""
    out = {}
    for length in LENGTHS:
        times = []
        for r in range(repeats):
            history = list(rng.choice(ids, size=length))
            for item in history[:-1]:
                recommender.click('long', item, k)
            start = time.perf_counter()
            recommender.click('long', history[-1], k)
            times.append(time.perf_counter() - start)
            recommender.end('long')
        out[length] = float(np.median(times)) * 1000.0
    return out


def time_http(checkpoint, sessions, n_requests, k, threads, clients=8):
    """Round trips of /click requests from `clients` threads to a recommend.py --serve subprocess."""
    server = subprocess.Popen([sys.executable, os.path.join(ROOT, 'recommend.py'), '--load_model', checkpoint,
                               '--serve', '--port', '0', '--threads', str(threads)], stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    try:
        url = re.search(r'http://[0-9.]+:\d+', server.stdout.readline()).group(0)
        times = [[] for _ in range(clients)]

        def client(c):
            clicks = [(f'{c}-{s}', item) for s, session in enumerate(sessions[c::clients]) for item in session]
            for session_id, item in clicks[:n_requests]:
                body = json.dumps({'session_id': session_id, 'item_id': item, 'k': k}).encode()
                start = time.perf_counter()
                with urllib.request.urlopen(urllib.request.Request(url + '/click', data=body), timeout=60) as a:
                    json.loads(a.read())
                times[c].append(time.perf_counter() - start)

        threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - start
        flat = [t for per in times for t in per]
        return (*percentiles(flat), len(flat) / wall)
    finally:
        server.terminate()
        server.wait(timeout=30)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help='fewer clicks and requests (under a minute)')
    p.add_argument('--n_items', type=int, default=37_500)
    p.add_argument('--k', type=int, default=20)
    p.add_argument('--models', nargs='+', default=list(MODELS), choices=MODELS)
    args = p.parse_args(argv)
    n_clicks, n_batch, n_requests, repeats = (300, 500, 25, 5) if args.quick else (2000, 4000, 150, 20)
    ids, support, sessions = synthetic_sessions(args.n_items, 60_000 if args.quick else 120_000)
    rng = np.random.default_rng(0)
    print(f'{len(ids):,} items, {len(sessions):,} synthetic sessions (mean length '
          f'{np.mean([len(s) for s in sessions]):.2f}), k {args.k}, CPU, '
          f'{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}', flush=True)
    rows, by_length = [], {}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            checkpoint = make_checkpoint(name, ids, support, folder)
            recommender = SessionRecommender.load(checkpoint, max_sessions=10_000)
            row = [name]
            for threads in (2, 1):
                torch.set_num_threads(threads)
                time_clicks(recommender, sessions[:50], 100, args.k)          # warm-up
                row += percentiles(time_clicks(recommender, sessions[100:], n_clicks, args.k))
            torch.set_num_threads(2)
            batch = sessions[:n_batch]
            start = time.perf_counter()
            recommender.recommend_batch(batch, args.k)
            row.append(len(batch) / (time.perf_counter() - start))
            torch.set_num_threads(1)
            by_length[name] = time_by_length(recommender, ids, args.k, repeats, rng)
            for threads in (1, 2):
                row += time_http(checkpoint, sessions[1000:], n_requests, args.k, threads)
            rows.append(row)
            print(f'  {name} done', flush=True)
    print('\n| model | click p50 / p99 (ms), 2 threads | click p50 / p99 (ms), 1 thread | recommend_batch '
          'sessions/s (2 threads) | HTTP /click p50 / p99 (ms), server --threads 1 | requests/s | '
          'HTTP p50 / p99 (ms), --threads 2 | requests/s |')
    print('|---|---|---|---|---|---|---|---|')
    for name, a50, a99, b50, b99, rate, h50, h99, hrate, i50, i99, irate in rows:
        print(f'| {name} | {a50:.2f} / {a99:.2f} | {b50:.2f} / {b99:.2f} | {rate:,.0f} | {h50:.2f} / {h99:.2f} | '
              f'{hrate:,.0f} | {i50:.2f} / {i99:.2f} | {irate:,.0f} |')
    print('\nclick latency (median, ms, 1 thread) by the session\'s length after the click:\n')
    print('| model | ' + ' | '.join(f'{n} clicks' for n in LENGTHS) + ' |')
    print('|---|' + '---|' * len(LENGTHS))
    for name, values in by_length.items():
        print(f'| {name} | ' + ' | '.join(f'{values[n]:.2f}' for n in LENGTHS) + ' |')
    return rows, by_length


if __name__ == '__main__':
    main()
