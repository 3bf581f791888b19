"""Our SKNN / V-SKNN / STAN / VSTAN beside session-rec's own classes, prediction by prediction (issue #33).

    python3 scripts/session_rec_check.py --session_rec DIR                       # the real sample, defaults
    python3 scripts/session_rec_check.py --session_rec DIR --models STAN --params STAN "k=500,lambda_spw=0.5"
    python3 scripts/session_rec_check.py --session_rec DIR --variants patched as_is loader_order

DIR: a checkout of rn5l/session-rec (none of its code is in this repository; its `algorithms/knn/` classes
are imported from there, with stand-ins for the modules they import but never use: pympler, psutil, and
time.clock / numpy.in1d, which today's Python and NumPy no longer have).

Both sides get the same training file (`<name>_train_full.txt`) and the same predictions: every non-first
click of every test session (`<name>_test.txt`, read with the training item map as evaluation.py reads it),
predicted from the clicks before it; session-rec's predict_next is called as its evaluate_sessions calls it
(the session id, the previous click, all training items, the timestamp of the click to predict). Both
sides' scores are ranked by evaluation.target_ranks (standard ties, every item), so only the models differ.
Printed per model and variant: Recall@20 / MRR@20 of each side, how many predictions got another rank
and the largest change, and each side's seconds for fit + every prediction (ours: blocks of 64 rows).
The load average is printed before and after.

Variants of the session-rec side:
  patched       session-rec's classes with our two tie rules (session_knn.py's docstring): candidates of
                equal recency and neighbours of equal similarity ordered by (last click time, session id),
                most recent first. Where Python's set order decided, this decides; nothing else changes.
  as_is         session-rec's classes unchanged (its ties follow the iteration order of a Python set).
  loader_order  unchanged, and the training clicks in the order session-rec's evaluation/loader.py hands
                them to fit: sorted by (SessionId, ItemId), not by time (so its "session time" is the time of
                the click with the largest item id, and STAN's positions inside a neighbour are item-id order).
"""
import argparse
import importlib
import os
import sys
import time
import types

import numpy as np
import pandas as pd
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cli import ArgumentParser, InputError, run_cli  # noqa: E402
from config import OTHER_DEFAULTS, _read_raw  # noqa: E402
from dataset import SessionData  # noqa: E402
from evaluation import target_ranks  # noqa: E402
from session_knn import SESSION_KNN  # noqa: E402
from scripts.reproduce import prepare_quick_data  # noqa: E402

CLASSES = {'SKNN': ('knn.sknn', 'ContextKNN'), 'VSKNN': ('knn.vsknn', 'VMContextKNN'),
           'STAN': ('knn.stan', 'STAN'), 'VSTAN': ('knn.vstan', 'VSKNN_STAN')}
VARIANTS = ('patched', 'as_is', 'loader_order')


def import_session_rec(folder):
    """session-rec's knn classes {our name: class}, importable under today's Python and NumPy."""
    algorithms = os.path.join(folder, 'algorithms')
    if not os.path.isfile(os.path.join(algorithms, 'knn', 'stan.py')):
        raise InputError(f'--session_rec {folder}: no algorithms/knn/stan.py there (expected a checkout of '
                         'rn5l/session-rec)')
    for name in ('pympler', 'psutil'):                       # imported by the classes, never used by them
        stub = types.ModuleType(name)
        stub.asizeof = types.SimpleNamespace(asizeof=lambda *a: 0)
        sys.modules.setdefault(name, stub)
    if not hasattr(time, 'clock'):
        time.clock = time.perf_counter
    if not hasattr(np, 'in1d'):
        np.in1d = np.isin
    sys.path.insert(0, algorithms)
    return {ours: getattr(importlib.import_module(module), cls) for ours, (module, cls) in CLASSES.items()}


def with_our_ties(cls):
    """cls with recency and similarity ties broken by (session time, session id), most recent first."""

    class Patched(cls):
        def most_recent_sessions(self, sessions, number):
            return set(sorted(sessions, key=lambda s: (self.session_time[s], s), reverse=True)[:number])

        def find_neighbors(self, session_items, input_item_id, session_id, *rest):
            candidates = self.possible_neighbor_sessions(session_items, input_item_id, session_id)
            scored = self.calc_similarity(session_items, candidates, *rest)
            scored.sort(key=lambda pair: (pair[1], self.session_time[pair[0]], pair[0]), reverse=True)
            return scored[:self.k]

    return Patched


def session_rec_params(name, ours):
    """session-rec's constructor arguments for our settings (same names; 0 means off where they take None)."""
    params = {k: v for k, v in ours.items() if k not in ('max_seq_length', 'seed')}
    if name == 'VSKNN':
        params['idf_weighting'] = params['idf_weighting'] or False
    for key in ('lambda_spw', 'lambda_snh', 'lambda_inh', 'lambda_ipw', 'lambda_idf'):
        if key in params and not params[key]:
            params[key] = None if key != 'lambda_idf' else False
    return params


def predictions(test):
    """(prefix states (P, L + 1) as SequenceModel keeps them, targets (P,), the session of each) of a test set."""
    rows, targets, sessions = [], [], []
    for s in range(test.n_sessions):
        clicks = test.items[test.offsets[s]:test.offsets[s + 1]]
        for t in range(1, len(clicks)):
            rows.append(clicks[:t])
            targets.append(clicks[t])
            sessions.append(s)
    return rows, np.array(targets), np.array(sessions)


def our_ranks(model, rows, targets, block=64):
    width = max(len(r) for r in rows)
    if width > model.max_seq_length:
        raise InputError(f'a test session has {width} clicks: raise max_seq_length to compare')
    ranks = []
    for lo in range(0, len(rows), block):
        chunk = rows[lo:lo + block]
        state = torch.zeros(len(chunk), model.max_seq_length + 1, dtype=torch.long)
        for i, r in enumerate(chunk):
            state[i, 0] = len(r)
            state[i, 1:len(r) + 1] = torch.from_numpy(r)
        scores = model.score_all(state)
        ranks.append(target_ranks(scores, torch.from_numpy(targets[lo:lo + block]), 'standard'))
    return torch.cat(ranks).numpy()


def their_ranks(cls, params, train_frame, test, test_frame, item_index, order):
    """Ranks of the targets under session-rec's class, called as its evaluate_sessions calls it."""
    model = cls(**params)
    frame = train_frame.sort_values(['SessionId', 'ItemId'], kind='stable') if order == 'loader' else train_frame
    model.fit(frame)
    items = train_frame['ItemId'].unique()
    position = item_index[items]                 # our index of each entry of session-rec's score vector
    ranks = []
    for s in range(test.n_sessions):
        session = test_frame[s]
        for t in range(1, len(session)):
            series = model.predict_next(s, session[t - 1][0], items, timestamp=session[t][1])
            values = np.nan_to_num(series.to_numpy(dtype=np.float64))
            scores = np.zeros(len(item_index), dtype=np.float64)
            scores[position] = values
            target = torch.tensor([test.items[test.offsets[s] + t]])
            ranks.append(float(target_ranks(torch.from_numpy(scores)[None, :], target, 'standard')[0]))
    return np.array(ranks)


def metrics(ranks, k=20):
    hit = ranks <= k
    return hit.mean(), np.where(hit, 1.0 / ranks, 0.0).mean()


def parse_args(argv):
    p = ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--session_rec', required=True, help='a checkout of rn5l/session-rec')
    p.add_argument('--data_folder', help='preprocessed files (default: the real sample, preprocessed here)')
    p.add_argument('--name', default='rsc15', help='file prefix: <name>_train_full.txt, <name>_test.txt')
    p.add_argument('--models', nargs='+', default=list(SESSION_KNN), choices=list(SESSION_KNN))
    p.add_argument('--params', nargs=2, action='append', default=[], metavar=('MODEL', 'KEY=VALUE,...'),
                   help='settings of one model (ours and theirs alike)')
    p.add_argument('--variants', nargs='+', default=['patched', 'as_is'], choices=VARIANTS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    classes = import_session_rec(args.session_rec)
    folder = args.data_folder
    if folder is None:
        import tempfile
        folder = tempfile.mkdtemp(prefix='session_rec_check_')
        print('data:', prepare_quick_data(folder))
    train = SessionData(os.path.join(folder, f'{args.name}_train_full.txt'))
    test = SessionData(os.path.join(folder, f'{args.name}_test.txt'), item_map=train.item_map)
    raw = pd.read_csv(os.path.join(folder, f'{args.name}_train_full.txt'), sep='\t', dtype={'ItemId': str})
    ids = train.item_map.to_list()
    item_index = pd.Series(np.arange(len(ids)), index=ids)
    # session-rec's side reads integer item ids when they are integers (its loader's dtype), else our index
    numeric = all(i.lstrip('-').isdigit() for i in ids)
    key = (lambda i: int(i)) if numeric else (lambda i: int(item_index[i]))
    item_index = pd.Series(np.arange(len(ids)), index=[key(i) for i in ids])
    train_frame = pd.DataFrame({'SessionId': raw['SessionId'], 'ItemId': [key(i) for i in raw['ItemId']],
                                'Time': raw['Time'].astype(np.float64)})
    train_frame = train_frame.sort_values(['SessionId', 'Time'], kind='stable').reset_index(drop=True)
    test_raw = pd.read_csv(os.path.join(folder, f'{args.name}_test.txt'), sep='\t', dtype={'ItemId': str})
    test_raw = test_raw[test_raw['ItemId'].isin(set(ids))].sort_values(['SessionId', 'Time'], kind='stable')
    by_session = {sid: list(zip((key(i) for i in g['ItemId']), g['Time'].astype(np.float64)))
                  for sid, g in test_raw.groupby('SessionId', sort=True)}
    test_frame = [by_session[sid] for sid in test.session_ids]
    rows, targets, _ = predictions(test)
    given = {name: _read_raw(spec) for name, spec in args.params}
    print(f'{len(targets):,} predictions, {len(ids):,} items, {train.n_sessions:,} training sessions; '
          f'load average {os.getloadavg()[0]:.2f}')
    print('| model | settings | side | Recall@20 | MRR@20 | predictions ranked otherwise | largest rank change | fit + predict (s) | predictions/s |')
    print('|---|---|---|---|---|---|---|---|---|')
    for name in args.models:
        settings = dict(OTHER_DEFAULTS[name], **given.get(name, {}))
        shown = ', '.join(f'{k}={v}' for k, v in settings.items() if k not in ('seed', 'max_seq_length'))
        ours = SESSION_KNN[name](len(ids), **settings)
        start = time.perf_counter()
        for _ in ours.fit(train):
            pass
        mine = our_ranks(ours, rows, targets)
        seconds = time.perf_counter() - start
        recall, mrr = metrics(mine)
        print(f'| {name} | {shown} | ours | {recall:.4f} | {mrr:.4f} | | | {seconds:.1f} | '
              f'{len(targets) / seconds:,.0f} |', flush=True)
        for variant in args.variants:
            cls = with_our_ties(classes[name]) if variant == 'patched' else classes[name]
            start = time.perf_counter()
            theirs = their_ranks(cls, session_rec_params(name, settings), train_frame, test, test_frame, item_index,
                                 'loader' if variant == 'loader_order' else 'time')
            seconds = time.perf_counter() - start
            recall, mrr = metrics(theirs)
            changed = int((theirs != mine).sum())
            largest = float(np.abs(theirs - mine).max())
            print(f'| {name} | {shown} | session-rec, {variant} | {recall:.4f} | {mrr:.4f} | {changed:,} | '
                  f'{largest:g} | {seconds:.1f} | {len(targets) / seconds:,.0f} |', flush=True)
    print(f'load average after: {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
    run_cli(main)
