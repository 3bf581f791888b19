"""Synthetic clicks in the raw yoochoose-clicks.dat format: the project's built-in data.

    python scripts/make_synthetic.py                       # demo size -> data/synthetic/yoochoose-clicks.dat
    python scripts/make_synthetic.py --full --out data/synthetic_full/yoochoose-clicks.dat   # RSC15 scale

Deterministic for a given seed and size. What it models, all vectorised with numpy:
* item popularity: Zipf-like, weight of the item of popularity rank r is 1 / (r + 10);
* session lengths: long-tailed, 1 + floor(X) with X lognormal (sigma 1, capped at 200), mean `mean_length`,
  so about a quarter of the sessions have one click (the preprocessing filters drop them);
* sequential structure: every item has 4 fixed successors (drawn by popularity); a session is a walk
  that moves to a successor of the current item with probability 0.6 (the successors weighted
  0.5/0.25/0.15/0.1), repeats the current item with probability 0.1, and otherwise jumps to an item
  drawn by popularity. A session model can learn the successors; a popularity model cannot.
* time: session starts uniform over `days` days from 2014-04-01 UTC, clicks 1 s + Exp(60 s) apart,
  millisecond precision; session ids follow the start time with a few hours of jitter, so id order
  and time order differ slightly, as in the real file. Rows are written in session-id order.
* ids: sessions 1..n; item ids spread over the real file's range (214,500,000 + up to 430M).
"""
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from cli import ArgumentParser, InputError, run_cli, write_atomically  # noqa: E402

START_MS = 1396310400000  # 2014-04-01T00:00:00Z
FULL = dict(n_sessions=9_249_729, n_items=52_739, mean_length=3.568, days=183)
DEMO = dict(n_sessions=30_000, n_items=3_000, mean_length=3.6, days=60)
P_FOLLOW, P_REPEAT = 0.6, 0.1
SUCCESSOR_WEIGHTS = np.array([0.5, 0.25, 0.15, 0.1])


def generate(n_sessions, n_items, mean_length=3.6, days=60, seed=0):
    """Return the clicks as a dict of numpy arrays (session, time_ms, item), in session-id order."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / (np.arange(n_items) + 10.0)
    cdf = np.cumsum(popularity[rng.permutation(n_items)])
    cdf /= cdf[-1]

    def draw_popular(size):
        return np.minimum(np.searchsorted(cdf, rng.random(size), side='right'), n_items - 1)

    successors = draw_popular(n_items * 4).reshape(n_items, 4)
    mu = np.log(max(mean_length - 0.5, 0.6)) - 0.5    # E[1 + floor(X)] ~ exp(mu + 1/2) + 1/2
    lengths = 1 + np.minimum(np.floor(rng.lognormal(mu, 1.0, n_sessions)), 199).astype(np.int64)
    offsets = np.r_[0, np.cumsum(lengths)]
    items = np.empty(offsets[-1], dtype=np.int64)
    active = np.arange(n_sessions)
    current = draw_popular(n_sessions)
    items[offsets[:-1]] = current
    for position in range(1, lengths.max()):
        still = lengths[active] > position
        active, current = active[still], current[still]
        u = rng.random(len(active))
        choice = np.searchsorted(np.cumsum(SUCCESSOR_WEIGHTS), rng.random(len(active)), side='right')
        current = np.where(u < P_FOLLOW, successors[current, np.minimum(choice, 3)],
                           np.where(u < P_FOLLOW + P_REPEAT, current, draw_popular(len(active))))
        items[offsets[active] + position] = current

    span_ms = int(days * 86400 * 1000)
    start = rng.integers(0, span_ms, n_sessions)
    gaps = (1000 + rng.exponential(60_000, len(items))).astype(np.int64)
    gaps[offsets[:-1]] = 0
    within = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[offsets[:-1]], lengths)
    time_ms = START_MS + np.repeat(start, lengths) + within
    jitter = rng.normal(0, 3 * 3600 * 1000, n_sessions)
    session_ids = np.empty(n_sessions, dtype=np.int64)
    session_ids[np.argsort(start + jitter, kind='stable')] = np.arange(1, n_sessions + 1)
    by_id = np.argsort(session_ids, kind='stable')
    rows = _rows_in_session_order(offsets, lengths, by_id)
    item_ids = 214_500_000 + rng.choice(430_000_000, n_items, replace=False)   # the real ids' range
    return {'session': np.repeat(session_ids, lengths)[rows], 'time_ms': time_ms[rows],
            'item': item_ids[items[rows]]}


def _rows_in_session_order(offsets, lengths, order):
    """Row indices that list the sessions in `order`, each session's rows in place (vectorised)."""
    reordered = lengths[order]
    first = np.repeat(offsets[:-1][order] - (np.cumsum(reordered) - reordered), reordered)
    return first + np.arange(reordered.sum())


def write_raw(path, clicks, chunk=4_000_000):
    """Write clicks as session,timestamp,item,category lines (category 0), no header."""
    with open(path, 'wb') as f:
        for lo in range(0, len(clicks['item']), chunk):
            part = slice(lo, lo + chunk)
            stamps = pc.strftime(pa.array(clicks['time_ms'][part], type=pa.timestamp('ms', tz='UTC')),
                                 format='%Y-%m-%dT%H:%M:%SZ')
            n = len(stamps)
            table = pa.table({'s': clicks['session'][part], 't': stamps, 'i': clicks['item'][part],
                              'c': pa.array(np.zeros(n, dtype=np.int8))})
            pacsv.write_csv(table, f, pacsv.WriteOptions(include_header=False, quoting_style='none'))


def main(argv=None):
    p = ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default='data/synthetic/yoochoose-clicks.dat', help='output file (default: %(default)s)')
    p.add_argument('--full', action='store_true', help='RSC15 scale: 9.25M sessions, 52.7k items, ~33M clicks, 183 days')
    p.add_argument('--sessions', type=int, help=f'number of sessions (default {DEMO["n_sessions"]})')
    p.add_argument('--items', type=int, help=f'number of items (default {DEMO["n_items"]})')
    p.add_argument('--mean_length', type=float, help='mean clicks per session')
    p.add_argument('--days', type=float, help='time span in days')
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args(argv)
    size = dict(FULL if args.full else DEMO)
    for key, value in (('n_sessions', args.sessions), ('n_items', args.items),
                       ('mean_length', args.mean_length), ('days', args.days)):
        if value is not None:
            size[key] = value
    if size['n_sessions'] < 1 or size['n_items'] < 5 or size['mean_length'] < 1 or size['days'] <= 0:
        raise InputError(f'need --sessions >= 1, --items >= 5, --mean_length >= 1, --days > 0; got {size}')
    clicks = generate(seed=args.seed, **size)
    write_atomically([args.out], lambda tmp: write_raw(tmp[args.out], clicks))
    print(f'wrote {len(clicks["item"])} clicks of {size["n_sessions"]} sessions on up to {size["n_items"]} items '
          f'to {args.out}')


if __name__ == '__main__':
    run_cli(main)
