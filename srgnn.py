"""The SRG protocol: the "YOOCHOOSE 1/64", "YOOCHOOSE 1/4" and "DIGINETICA" sets of the NARM / STAMP /
SR-GNN / GCE-GNN tables (datasets-spec J2), from the raw files or from the pickles that circulate.

Two routes to the same four-file layout (<name>_train_full / _test / _train_tr / _train_valid.txt, TAB,
header SessionId ItemId Time, and <name>_stats.json), so every command of the repository reads them:

* `srg_sets` (preprocessing.py --protocol srgnn): J2 from yoochoose-clicks.dat or train-item-views.csv.
  1. clicks in file order; Diginetica's clicks ordered inside a session by `timeframe` (stable);
  2. session date = the date of the session's LAST row in file order (Yoochoose: its timestamp truncated to
     whole seconds; Diginetica: its eventdate, midnight UTC);
  3. drop length-1 sessions; count items over the rest; drop clicks on items with count < 5; drop sessions
     left shorter than 2 (one pass each, repeats kept);
  4. split = max date - 1 day (Yoochoose) / 7 days (Diginetica); train = date < split, test = date > split
     (equal dates go nowhere); sessions in (stable) date order, ties in order of first appearance;
  5. test clicks on items absent from train dropped, then test sessions shorter than 2;
  7. with recent_fraction N: of the training PREFIXES (a session of n clicks owns n - 1, sessions in date
     order) the last floor(P / N) are kept, and as training sessions every session from the one owning the
     first kept prefix on. The test set stays the full one (filtered against the full train, step 5).
  train_tr / train_valid: the same rule one window earlier, inside train (valid = train sessions dated
  after split - window; its clicks filtered against train_tr; the 1/N cut on train_tr's prefixes).
* `convert_files` (preprocessing.py --dataset srgnn_files): all_train_seq.txt (training sessions, date
  order) and test.txt ((prefixes, labels); a session is rebuilt from its run of pairs, whose first is the
  longest prefix plus its label), or, when a `*test*_time.txt` is there, its sessions of (item, time) pairs
  (test.txt must then hold their n - 1 pairs each, or the n - 2 of variants that leave out ([s1], s2), as
  the RetailRocket files do); train_tr / train_valid = the training sessions split 9:1 in their order.
  The files are pickles: `load_pickle` allows list / tuple / int / float / str and nothing else, so no
  code chosen by the file's author can run.

Times written: the raw route writes the session's SRG date plus 0.001 s per click position, so sessions
keep SRG's date order and clicks their SRG order (the click's own timestamp may disagree with both);
the files route writes order-keeping synthetic times (the click's position in train then test, in
seconds), or, for the test file, the real times of `*test*_time.txt` when given. Session ids are
renumbered 1.. in date order (train first, then test); item ids keep their values (raw ids, or the
circulated files' numbers).
"""
import io
import itertools
import json
import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from cli import InputError, write_atomically

DAY = 86400
WINDOW_DAYS = {'yoochoose': 1, 'diginetica': 7}
ALLOWED = (list, tuple, int, float, str)


# ---------------------------------------------------------------- the restricted unpickler

class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves no global at all: a pickle of lists, tuples, ints, floats and strings
    loads, anything that names a class or function (the only way a pickle can run code) is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f'refused to load {module}.{name} (only list, tuple, int, float and str '
                                     f'are allowed)')

    def persistent_load(self, pid):
        raise pickle.UnpicklingError('refused a persistent id (only list, tuple, int, float and str are allowed)')


def load_pickle(path):
    """The object in a pickle of lists / tuples / ints / floats / strs; anything else is an InputError."""
    if not os.path.isfile(path):
        raise InputError(f'{path}: no such file')
    try:
        with open(path, 'rb') as f:
            value = RestrictedUnpickler(io.BytesIO(f.read())).load()
    except pickle.UnpicklingError as err:
        raise InputError(f'{path}: {err}') from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError,
            UnicodeDecodeError, MemoryError) as err:
        raise InputError(f'{path}: not a readable pickle ({type(err).__name__}: {err})') from None
    stack = [value]
    while stack:                 # dict, set, bytes, None, bool can be built without a global: refuse them too
        v = stack.pop()
        if type(v) not in ALLOWED:
            raise InputError(f'{path}: refused a value of type {type(v).__name__} (only list, tuple, int, float '
                             f'and str are allowed)')
        if type(v) in (list, tuple) and v and type(v[0]) in (list, tuple):
            stack.extend(v)
        elif type(v) in (list, tuple):
            for x in v:
                if type(x) not in ALLOWED:
                    raise InputError(f'{path}: refused a value of type {type(x).__name__} (only list, tuple, int, '
                                     f'float and str are allowed)')
                if type(x) in (list, tuple):
                    stack.append(x)
    return value


# ---------------------------------------------------------------- the circulated files

def sessions_from_pairs(prefixes, labels, path):
    """Test sessions from (prefixes, labels): each run starts with (s[:-1], s[-1]) and continues with
    (s[:-2], s[-2]), ..., ([s1], s2); a pair that does not continue its run is an error."""
    if len(prefixes) != len(labels):
        raise InputError(f'{path}: {len(prefixes):,} prefixes but {len(labels):,} labels')
    sessions, i = [], 0
    while i < len(prefixes):
        prefix = list(prefixes[i])
        if not prefix:
            raise InputError(f'{path}: pair {i} has an empty prefix')
        session = prefix + [labels[i]]
        for k in range(1, len(prefix)):
            j = i + k
            if j >= len(prefixes) or list(prefixes[j]) != session[:-k - 1] or labels[j] != session[-k - 1]:
                raise InputError(f'{path}: pair {j} does not continue the session started at pair {i} '
                                 f'(expected the prefix {session[:-k - 1][:5]}... and the label {session[-k - 1]})')
        sessions.append(session)
        i += len(prefix)
    return sessions


def check_sessions(value, path, what):
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, (list, tuple)) for s in value):
        raise InputError(f'{path}: expected {what}')
    return [list(s) for s in value]


def read_files(folder):
    """(training sessions, test sessions, test times or None) from a folder of circulated SRG pickles."""
    train_path, test_path = os.path.join(folder, 'all_train_seq.txt'), os.path.join(folder, 'test.txt')
    for path in (train_path, test_path):
        if not os.path.isfile(path):
            raise InputError(f'--input {folder}: no {os.path.basename(path)} (expected the circulated SR-GNN '
                             f'files all_train_seq.txt and test.txt)')
    train = check_sessions(load_pickle(train_path), train_path, 'a list of training sessions (lists of items)')
    pairs = load_pickle(test_path)
    if not isinstance(pairs, (list, tuple)) or len(pairs) != 2:
        raise InputError(f'{test_path}: expected a pair (prefixes, labels)')
    prefixes, labels = check_sessions(pairs[0], test_path, 'a list of prefixes'), list(pairs[1])
    timed = [name for name in sorted(os.listdir(folder)) if name.endswith('_time.txt') and 'test' in name]
    if not timed:
        return train, checked(train_path, train, test_path, sessions_from_pairs(prefixes, labels, test_path)), None
    path = os.path.join(folder, timed[0])     # the whole test sessions, with their real times
    sessions = check_sessions(load_pickle(path), path, 'a list of sessions of (item, time) pairs')
    if not all(isinstance(pair, (list, tuple)) and len(pair) == 2 for s in sessions for pair in s):
        raise InputError(f'{path}: expected sessions of (item, time) pairs')
    test = [[pair[0] for pair in s] for s in sessions]
    full, without_first = sum(len(s) - 1 for s in test), sum(max(len(s) - 2, 0) for s in test)
    if len(prefixes) not in (full, without_first):     # some variants leave out every ([s1], s2) pair
        raise InputError(f'{test_path}: {len(prefixes):,} pairs, but the sessions of {path} give {full:,} '
                         f'(or {without_first:,} without their first prediction)')
    return train, checked(train_path, train, path, test), [[float(pair[1]) for pair in s] for s in sessions]


def checked(train_path, train, test_path, test):
    """Raise unless every session holds at least two integer items; returns test."""
    for path, sessions in ((train_path, train), (test_path, test)):
        for s in sessions:
            if len(s) < 2 or not all(type(x) is int for x in s):
                raise InputError(f'{path}: a session must hold at least two integer items, got {s[:5]}')
    return test


def convert_files(folder, output_dir, name, log=print):
    """--dataset srgnn_files: the circulated files of one folder -> the four-file layout + stats."""
    train, test, test_times = read_files(folder)
    n_train_clicks = sum(map(len, train))
    cut = len(train) * 9 // 10
    sets = {'train_full': flat_sessions(train), 'test': flat_sessions(test), 'train_tr': flat_sessions(train[:cut]),
            'train_valid': flat_sessions(train[cut:])}
    clock = np.arange(n_train_clicks + sum(map(len, test)), dtype=np.float64)
    if test_times is not None:                   # real test times; synthetic train times end before them
        first = min(min(t) for t in test_times)
        clock[:n_train_clicks] += first - n_train_clicks
    times = {'train_full': clock[:n_train_clicks], 'train_tr': clock[:sum(map(len, train[:cut]))],
             'train_valid': clock[sum(map(len, train[:cut])):n_train_clicks],
             'test': np.concatenate([np.asarray(t, dtype=np.float64) for t in test_times]) if test_times
             else clock[n_train_clicks:]}
    first_id = {'train_full': 1, 'train_tr': 1, 'train_valid': cut + 1, 'test': len(train) + 1}
    doc = {'input': os.path.abspath(folder), 'dataset': 'srgnn_files',
           'times': 'real (test)' if test_times else 'synthetic, order-keeping',
           'train_tr / train_valid': 'training sessions split 9:1 in their order'}
    return write(output_dir, name, sets, times, first_id, doc, log)


# ---------------------------------------------------------------- the protocol from the raw files

def srg_sessions(session, item, date, order_key):
    """J2 steps 1-3: (session codes of the kept clicks in SRG order, items, session dates, session lengths).

    session, item, date (int64 seconds), order_key (int64: the in-session order, equal keys keep file
    order): one entry per click in file order. Sessions are coded by first appearance."""
    import pandas as pd
    codes, _ = pd.factorize(session)
    n = codes.max() + 1
    rows = np.arange(len(codes))
    last_row = np.full(n, -1)
    np.maximum.at(last_row, codes, rows)
    session_date = date[last_row]                                               # J2.2
    order = np.lexsort((rows, order_key, codes))                                # J2.1, stable
    codes, item = codes[order], item[order]
    keep = (np.bincount(codes, minlength=n) > 1)[codes]                         # J2.3
    inverse, _ = pd.factorize(item[keep])          # a hash: np.unique's sort took 34 s at 33M clicks
    count = np.zeros(len(item), dtype=np.int64)
    count[keep] = np.bincount(inverse)[inverse]
    keep &= count >= 5
    keep &= (np.bincount(codes[keep], minlength=n) >= 2)[codes]
    return codes[keep], item[keep], session_date, np.bincount(codes[keep], minlength=n)


def date_split(session_date, length, sessions, split):
    """J2.4 inside `sessions` (bool per session): (sessions dated < split, sessions dated > split), each in
    (stable) date order."""
    present = sessions & (length > 0)
    train = np.flatnonzero(present & (session_date < split))
    test = np.flatnonzero(present & (session_date > split))
    train = train[np.argsort(session_date[train], kind='stable')]
    test = test[np.argsort(session_date[test], kind='stable')]
    return train, test


def recent_cut(train, length, fraction):
    """J2.7: the sessions from the one owning the first of the last floor(P / N) prefixes on."""
    prefixes = length[train] - 1
    total = int(prefixes.sum())
    kept = total // fraction
    if kept == 0:
        raise InputError(f'--recent_fraction {fraction}: {total} training prefixes leave none to keep')
    owner = np.searchsorted(np.cumsum(prefixes), total - kept, side='right')
    return train[owner:], kept


def session_rows(length, chosen):
    """The click rows of the chosen sessions, in the order of `chosen`; `length`: clicks per session code,
    the clicks in SRG order (srg_sessions': sorted by session code, so session c's rows are contiguous)."""
    starts = np.cumsum(length) - length
    chosen_len = length[chosen]
    offsets = np.repeat(np.cumsum(chosen_len) - chosen_len, chosen_len)
    within = np.arange(int(chosen_len.sum())) - offsets
    return np.repeat(starts[chosen], chosen_len) + within


def filtered_against(rows, codes, item_codes, known):
    """Drop clicks on unknown items (`known`: a flag per item code), then sessions of fewer than 2 clicks
    (J2.5)."""
    rows = rows[known[item_codes[rows]]]
    left = np.bincount(codes[rows], minlength=codes.max() + 1)
    return rows[left[codes[rows]] >= 2]


def items_of(rows, item_codes, n_items):
    """A flag per item code: clicked in `rows`."""
    flags = np.zeros(n_items, dtype=bool)
    flags[item_codes[rows]] = True
    return flags


def srg_sets(clicks, window_days, recent_fraction=None):
    """J2 on clicks (dict: session, item, date, order_key in file order). Returns
    ({set: [rows of each session, date order]}, session codes, items, session dates, {set: prefixes})."""
    import pandas as pd
    codes, items, session_date, length = srg_sessions(clicks['session'], clicks['item'], clicks['date'],
                                                      clicks['order_key'])
    if len(codes) == 0:
        raise InputError('nothing is left after filtering (sessions of >= 2 clicks on items with >= 5 clicks)')
    window = window_days * DAY
    split = session_date[length > 0].max() - window
    everything = np.ones(len(length), dtype=bool)
    train, test = date_split(session_date, length, everything, split)
    if len(train) == 0:
        raise InputError(f'no session is dated before the split (last date - {window_days} day(s))')
    in_train = np.zeros(len(length), dtype=bool)
    in_train[train] = True
    train_tr, valid = date_split(session_date, length, in_train, split - window)
    if len(train_tr) == 0:
        raise InputError(f'no training session is dated before the validation split (last date - '
                         f'{2 * window_days} days)')
    item_codes, item_values = pd.factorize(items)
    known = {'test': items_of(session_rows(length, train), item_codes, len(item_values)),
             'train_valid': items_of(session_rows(length, train_tr), item_codes, len(item_values))}   # J2.5:
    prefixes = {}                                                                      # before the 1/N cut
    if recent_fraction:
        train, prefixes['train_full'] = recent_cut(train, length, recent_fraction)
        train_tr, prefixes['train_tr'] = recent_cut(train_tr, length, recent_fraction)
    rows = {name: session_rows(length, chosen) for name, chosen in
            (('train_full', train), ('test', test), ('train_tr', train_tr), ('train_valid', valid))}
    for part in ('test', 'train_valid'):
        rows[part] = filtered_against(rows[part], codes, item_codes, known[part])
    return rows, codes, items, session_date, prefixes


def preprocess_raw(dataset, clicks, output_dir, recent_fraction, input_paths, log=print):
    """--protocol srgnn: J2 on the raw clicks of `dataset` (yoochoose or diginetica) -> the four files."""
    rows, codes, items, session_date, prefixes = srg_sets(clicks, WINDOW_DAYS[dataset], recent_fraction)
    name = f'{dataset}_srgnn' + (f'_1_{recent_fraction}' if recent_fraction else '')
    sets, times = {}, {}
    for part, r in rows.items():
        c = codes[r]                                    # each session's clicks together
        starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]]) if len(c) else np.zeros(0, int)
        lengths = np.diff(np.r_[starts, len(c)])
        sets[part] = items[r], lengths
        position = np.arange(len(c)) - np.repeat(starts, lengths)
        times[part] = session_date[c].astype(np.float64) + 0.001 * position
    first_id = {'train_full': 1, 'train_tr': 1, 'test': len(sets['train_full'][1]) + 1,
                'train_valid': len(sets['train_tr'][1]) + 1}          # ids unique within each pair
    doc = {'input': [os.path.abspath(p) for p in input_paths], 'dataset': dataset, 'protocol': 'srgnn (J2)',
           'window_days': WINDOW_DAYS[dataset], 'recent_fraction': recent_fraction,
           'kept_training_prefixes': prefixes or None,
           'times': 'session date + 0.001 s per click position (SRG order)'}
    return write(output_dir, name, sets, times, first_id, doc, log)


# ---------------------------------------------------------------- output

def flat_sessions(sessions):
    """A list of sessions (sequences of items) -> (items of all sessions in order, length of each)."""
    lengths = np.fromiter(map(len, sessions), dtype=np.int64, count=len(sessions))
    return np.fromiter(itertools.chain.from_iterable(sessions), dtype=np.int64, count=int(lengths.sum())), lengths


def set_stats(flat, lengths):
    import pandas as pd
    return {'events': len(flat), 'sessions': len(lengths), 'items': len(pd.unique(flat)),   # a hash, not a sort
            'predictions': len(flat) - len(lengths)}


def time_text(times):
    """'%.3f' of every time (seconds), without a Python call per row: integer milliseconds split in two."""
    ms = np.rint(np.asarray(times, dtype=np.float64) * 1000).astype(np.int64)
    if len(ms) and ms.min() < 0:
        return pa.array(np.char.mod('%.3f', times))
    whole, frac = np.divmod(ms, 1000)
    return pc.binary_join_element_wise(pc.cast(pa.array(whole), pa.string()),
                                       pc.utf8_lpad(pc.cast(pa.array(frac), pa.string()), 3, '0'), '.')


def write(output_dir, name, sets, times, first_id, doc, log, chunk=2_000_000):
    """The four TAB files and <name>_stats.json, together or not at all. sets: {part: (items, lengths)}
    (flat_sessions'); times: {part: seconds per click}; first_id: {part: the first session id}."""
    stats = {f'{name}_{part}.txt': set_stats(*sets[part]) for part in sets}
    paths = {part: os.path.join(output_dir, f'{name}_{part}.txt') for part in sets}
    stats_path = os.path.join(output_dir, f'{name}_stats.json')
    options = pacsv.WriteOptions(include_header=False, delimiter='\t', quoting_style='none')

    def write_all(tmp):
        for part, (flat, lengths) in sets.items():
            ids = np.repeat(np.arange(first_id[part], first_id[part] + len(lengths)), lengths)
            with open(tmp[paths[part]], 'wb') as f:
                f.write(b'SessionId\tItemId\tTime\n')
                for lo in range(0, len(flat), chunk):
                    hi = lo + chunk
                    pacsv.write_csv(pa.table({'SessionId': ids[lo:hi], 'ItemId': flat[lo:hi],
                                              'Time': time_text(times[part][lo:hi])}), f, options)
        with open(tmp[stats_path], 'w') as f:
            f.write(json.dumps(dict(doc, sets=stats), indent=2) + '\n')

    write_atomically(list(paths.values()) + [stats_path], write_all)
    for file_name, c in stats.items():
        log(f'{file_name}\n\tEvents: {c["events"]}\n\tSessions: {c["sessions"]}\n\tItems: {c["items"]}'
            f'\n\tPredictions: {c["predictions"]}')
    log(f'wrote {len(paths) + 1} files to {output_dir}')
    return stats
