"""srgnn.py: the SRG protocol (datasets-spec J2) from raw files and from the circulated pickles."""
import datetime
import json
import os
import pickle

import numpy as np
import pytest

import srgnn
from cli import InputError
from conftest import ROOT, run_command

SHARED = os.path.join(ROOT, '..', 'shared', 'data')
DIGINETICA = os.path.join(SHARED, 'diginetica-sample', 'sample_train-item-views.csv')


def read_sessions(path):
    """{session id: [(item, time)]} of a split file, in file order."""
    sessions = {}
    with open(path) as f:
        assert f.readline() == 'SessionId\tItemId\tTime\n'
        for line in f:
            s, i, t = line.rstrip('\n').split('\t')
            sessions.setdefault(int(s), []).append((int(i), float(t)))
    return sessions


def items_of(path):
    return [[i for i, _ in clicks] for clicks in read_sessions(path).values()]


# ---------------------------------------------------------------- the raw route, on a hand-made file

# session: [(item, day, timeframe)] in file order; checked by hand below
RAW = {
    1: [(1, 0, 0), (2, 0, 1)],
    2: [(2, 1, 0), (1, 1, 1), (1, 1, 2)],                 # repeats kept
    3: [(1, 2, 0), (3, 2, 1)],                            # item 3 goes (4 clicks once length-1 sessions are gone)
    4: [(3, 2, 0)],                                       # length 1: dropped BEFORE items are counted
    5: [(2, 4, 30), (1, 4, 10), (2, 4, 20)],              # ordered by timeframe: 1 2 2
    6: [(1, 12, 1), (2, 3, 2)],                           # date = its LAST row's (day 3), not its latest (day 12)
    7: [(1, 11, 0), (2, 11, 1)],                          # dated exactly at the split: in no set
    8: [(2, 14, 0), (1, 14, 1), (3, 14, 2)],              # test: 2 1
    9: [(4, 12, 0), (1, 12, 1)],                          # test, item 4 unknown to train: left with 1 click, dropped
    10: [(4, 13, 0), (4, 13, 1), (4, 13, 2), (4, 13, 3)],
    11: [(3, 5, 0), (2, 5, 1)],
    12: [(3, 6, 0), (5, 6, 1)],                           # -> [5]: dropped; one pass, so item 5 keeps its 5 clicks
    13: [(5, 6, 0), (2, 6, 1), (5, 6, 2), (5, 6, 3), (5, 6, 4)],
    14: [(1, 9, 0), (2, 9, 1)],                           # validation (dated after split - window)
}


def write_raw(path, rows=RAW):
    day0 = datetime.date(2016, 1, 1)
    with open(path, 'w') as f:
        f.write('sessionId;userId;itemId;timeframe;eventdate\n')
        for session, clicks in rows.items():
            for item, day, timeframe in clicks:
                f.write(f'{session};NA;{item};{timeframe};{day0 + datetime.timedelta(days=day)}\n')
    return str(path)


def raw_clicks(rows=RAW):
    import numpy as np
    flat = [(s, i, d, t) for s, clicks in rows.items() for i, d, t in clicks]
    return {'session': np.array([r[0] for r in flat]), 'item': np.array([r[1] for r in flat]),
            'date': np.array([r[2] for r in flat]) * 86400, 'order_key': np.array([r[3] for r in flat])}


def sets_of(rows, codes, items):
    """{set: [[items] per session]} from srg_sets' rows."""
    out = {}
    for part, r in rows.items():
        sessions, last = [], None
        for row in r:
            if sessions and codes[row] == last:
                sessions[-1].append(int(items[row]))
            else:
                sessions.append([int(items[row])])
            last = codes[row]
        out[part] = sessions
    return out


def test_srg_rules_on_a_hand_made_log():
    rows, codes, items, _, prefixes = srgnn.srg_sets(raw_clicks(), window_days=3)    # split day 11, valid day 8
    sets = sets_of(rows, codes, items)
    assert sets['train_full'] == [[1, 2], [2, 1, 1], [1, 2], [1, 2, 2], [5, 2, 5, 5, 5], [1, 2]]
    assert sets['test'] == [[2, 1]]
    assert sets['train_tr'] == [[1, 2], [2, 1, 1], [1, 2], [1, 2, 2], [5, 2, 5, 5, 5]]
    assert sets['train_valid'] == [[1, 2]]
    assert prefixes == {}


def test_recent_fraction_cuts_training_prefixes():
    # 11 training prefixes (1 2 1 2 4 1 in date order): the last 11 // 4 = 2 are owned by sessions 13 and 14
    rows, codes, items, _, prefixes = srgnn.srg_sets(raw_clicks(), window_days=3, recent_fraction=4)
    sets = sets_of(rows, codes, items)
    assert sets['train_full'] == [[5, 2, 5, 5, 5], [1, 2]]
    assert sets['train_tr'] == [[5, 2, 5, 5, 5]]                 # 10 prefixes: the last 2 are session 13's
    assert sets['test'] == [[2, 1]]                              # the full test set, filtered on the full train
    assert prefixes == {'train_full': 2, 'train_tr': 2}
    # 1/2: the last 5 of 11 start exactly at session 13's first prefix; of train_tr's 10, the last 5 in session 5
    rows, codes, items, _, _ = srgnn.srg_sets(raw_clicks(), window_days=3, recent_fraction=2)
    assert sets_of(rows, codes, items)['train_full'] == [[5, 2, 5, 5, 5], [1, 2]]
    assert sets_of(rows, codes, items)['train_tr'] == [[1, 2, 2], [5, 2, 5, 5, 5]]


def test_command_writes_the_four_files_in_date_order(tmp_path):
    raw = write_raw(tmp_path / 'train-item-views.csv')
    # diginetica's window is 7 days: split = day 7, validation split = day 0 -> no train_tr, one line of error
    result = run_command('preprocessing.py', '--dataset', 'diginetica', '--protocol', 'srgnn', '--input', raw,
                         '--output_dir', str(tmp_path / 'out'))
    assert result.returncode == 2 and 'validation split' in result.stderr and result.stderr.count('\n') == 1
    assert not os.path.exists(tmp_path / 'out') or not os.listdir(tmp_path / 'out')
    shifted = {s: [(i, d * 3, t) for i, d, t in clicks] for s, clicks in RAW.items()}   # days x3: windows of 7 days
    shifted[7] = [(1, 35, 0), (2, 35, 1)]                        # exactly at the split (42 - 7)
    shifted[14] = [(1, 30, 0), (2, 30, 1)]                       # validation: after 35 - 7
    raw = write_raw(tmp_path / 'train-item-views.csv', shifted)
    result = run_command('preprocessing.py', '--dataset', 'diginetica', '--protocol', 'srgnn', '--input', raw,
                         '--output_dir', str(tmp_path / 'out'))
    assert result.returncode == 0, result.stderr
    train = read_sessions(tmp_path / 'out' / 'diginetica_srgnn_train_full.txt')
    assert [[i for i, _ in c] for c in train.values()] == [[1, 2], [2, 1, 1], [1, 2], [1, 2, 2], [5, 2, 5, 5, 5],
                                                           [1, 2]]
    assert list(train) == [1, 2, 3, 4, 5, 6]                      # renumbered in date order
    day0 = datetime.datetime(2016, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
    assert [t for _, t in train[3]] == [day0 + 9 * 86400, day0 + 9 * 86400 + 0.001]    # session 6: its last row's day
    test = read_sessions(tmp_path / 'out' / 'diginetica_srgnn_test.txt')
    assert list(test) == [7] and [i for i, _ in test[7]] == [2, 1]
    assert items_of(tmp_path / 'out' / 'diginetica_srgnn_train_valid.txt') == [[1, 2]]
    stats = json.loads((tmp_path / 'out' / 'diginetica_srgnn_stats.json').read_text())
    assert stats['sets']['diginetica_srgnn_train_full.txt'] == {'events': 17, 'sessions': 6, 'items': 3,
                                                               'predictions': 11}


@pytest.mark.skipif(not os.path.isfile(DIGINETICA), reason='../shared/data sample not present')
def test_j4_figures_on_the_diginetica_sample(tmp_path):
    result = run_command('preprocessing.py', '--dataset', 'diginetica', '--protocol', 'srgnn', '--input', DIGINETICA,
                         '--output_dir', str(tmp_path))
    assert result.returncode == 0, result.stderr
    sets = json.loads((tmp_path / 'diginetica_srgnn_stats.json').read_text())['sets']
    assert sets['diginetica_srgnn_train_full.txt'] == {'events': 1674, 'sessions': 469, 'items': 309,
                                                       'predictions': 1205}
    assert sets['diginetica_srgnn_test.txt']['events'] == 138 and sets['diginetica_srgnn_test.txt']['sessions'] == 39
    assert sets['diginetica_srgnn_test.txt']['predictions'] == 99


# ---------------------------------------------------------------- the circulated files

def write_files(folder, train, pairs, extra=None):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, 'all_train_seq.txt'), 'wb') as f:
        pickle.dump(train, f, protocol=3)
    with open(os.path.join(folder, 'test.txt'), 'wb') as f:
        f.write(pairs if isinstance(pairs, bytes) else pickle.dumps(pairs, protocol=3))
    for name, value in (extra or {}).items():
        with open(os.path.join(folder, name), 'wb') as f:
            pickle.dump(value, f, protocol=3)
    return str(folder)


TRAIN = [[10, 11, 12], [11, 12], [12, 13, 10]]
PAIRS = ([[10, 12], [10], [13]], [11, 12, 10])                  # test sessions 10 12 11 and 13 10


def test_files_are_converted_exactly(tmp_path):
    folder = write_files(tmp_path / 'toy', TRAIN, PAIRS)
    result = run_command('preprocessing.py', '--dataset', 'srgnn_files', '--input', folder,
                         '--output_dir', str(tmp_path / 'out'))
    assert result.returncode == 0, result.stderr
    out = tmp_path / 'out'
    assert sorted(os.listdir(out)) == ['toy_stats.json', 'toy_test.txt', 'toy_train_full.txt', 'toy_train_tr.txt',
                                       'toy_train_valid.txt']
    assert (out / 'toy_train_full.txt').read_text().splitlines()[1:4] == ['1\t10\t0.000', '1\t11\t1.000', '1\t12\t2.000']
    assert read_sessions(out / 'toy_test.txt') == {4: [(10, 8.0), (12, 9.0), (11, 10.0)], 5: [(13, 11.0), (10, 12.0)]}
    assert items_of(out / 'toy_train_tr.txt') == TRAIN[:2]     # 3 * 9 // 10 = 2 sessions, then the rest
    assert read_sessions(out / 'toy_train_valid.txt') == {3: [(12, 5.0), (13, 6.0), (10, 7.0)]}
    stats = json.loads((out / 'toy_stats.json').read_text())['sets']
    assert stats['toy_test.txt'] == {'events': 5, 'sessions': 2, 'items': 4, 'predictions': 3}
    twenty = write_files(tmp_path / 'twenty', [[k, k + 1] for k in range(20)], PAIRS)
    stats = srgnn.convert_files(twenty, str(tmp_path / 'out'), 'twenty', log=lambda *a: None)
    assert stats['twenty_train_tr.txt']['sessions'] == 18 and stats['twenty_train_valid.txt']['sessions'] == 2


def test_real_test_times_are_used(tmp_path):
    times = [[(10, 1000), (12, 1005), (11, 1009)], [(13, 2000), (10, 2001)]]
    folder = write_files(tmp_path / 'toy', TRAIN, PAIRS, {'all_test_seq_time.txt': times})
    srgnn.convert_files(folder, str(tmp_path / 'out'), 'toy', log=lambda *a: None)
    assert read_sessions(tmp_path / 'out' / 'toy_test.txt')[4] == [(10, 1000.0), (12, 1005.0), (11, 1009.0)]
    assert read_sessions(tmp_path / 'out' / 'toy_train_full.txt')[3][-1] == (10, 999.0)     # train ends before
    variant = write_files(tmp_path / 'variant', TRAIN, ([[10, 12]], [11]), {'all_test_seq_time.txt': times})
    assert srgnn.read_files(variant)[1] == [[10, 12, 11], [13, 10]]     # its ([s1], s2) pairs left out: accepted
    short = write_files(tmp_path / 'short', TRAIN, ([[10, 12], [10]], [11, 12]), {'all_test_seq_time.txt': times})
    with pytest.raises(InputError, match='2 pairs, but the sessions of .* give 3 [(]or 1 without'):
        srgnn.read_files(short)


def test_broken_runs_of_pairs_are_refused():
    assert srgnn.sessions_from_pairs([[1, 2, 3], [1, 2], [1], [4]], [4, 3, 2, 5], 'x') == [[1, 2, 3, 4], [4, 5]]
    with pytest.raises(InputError, match='pair 2 does not continue the session started at pair 0'):
        srgnn.sessions_from_pairs([[1, 2, 3], [1, 2], [9], [4]], [4, 3, 2, 5], 'x')
    with pytest.raises(InputError, match='pair 3 does not continue'):
        srgnn.sessions_from_pairs([[1, 2, 3, 4], [1, 2, 3], [1, 2], [1, 3]], [5, 4, 3, 2], 'x')
    with pytest.raises(InputError, match='pair 1 does not continue'):
        srgnn.sessions_from_pairs([[1, 2], [1]], [3, 9], 'x')           # the label must be the prefix's next item


class Creates:
    """Unpickling this runs open(target, 'w'): it creates a file."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return open, (self.target, 'w')


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    target = tmp_path / 'created-by-the-pickle'
    payload = pickle.dumps(([[1, 2]], [Creates(str(target))]), protocol=3)
    folder = write_files(tmp_path / 'evil', TRAIN, payload)
    result = run_command('preprocessing.py', '--dataset', 'srgnn_files', '--input', folder,
                         '--output_dir', str(tmp_path / 'out'))
    assert result.returncode == 2
    assert result.stderr.startswith('error: ') and result.stderr.count('\n') == 1
    assert 'test.txt: refused to load builtins.open' in result.stderr or 'refused to load io.open' in result.stderr
    assert not target.exists() and not (tmp_path / 'out').exists()


@pytest.mark.parametrize('value, refused', [({'a': 1}, 'dict'), ([[1, 2], None], 'NoneType'), ([[True, 2]], 'bool'),
                                            ([[1, b'x']], 'bytes'), ({1, 2}, 'set')])
def test_only_lists_tuples_ints_floats_and_strings_load(tmp_path, value, refused):
    path = tmp_path / 'p.txt'
    path.write_bytes(pickle.dumps(value, protocol=3))
    with pytest.raises(InputError, match=f'refused .*{refused}'):
        srgnn.load_pickle(str(path))
    path.write_bytes(pickle.dumps([[1, 2.5, 'x'], (3,)], protocol=3))
    assert srgnn.load_pickle(str(path)) == [[1, 2.5, 'x'], (3,)]


# (folder, train sessions / clicks / items, test sessions / clicks / predictions) as ../shared/data/README.md lists
README_STATS = [('yoochoose1_64', (116167, 486026, 17376), (15324, 71222, 55898)),
                ('retailrocket', (126168, 685984, 36968), (4775, 24682, 19907)),
                ('tmall', (65286, 416554, 40727), (1027, 26925, 25898))]


@pytest.mark.parametrize('name, train, test', README_STATS)
def test_statistics_of_the_circulated_files_equal_the_data_readme(tmp_path, name, train, test):
    folder = os.path.join(SHARED, 'srgnn', name)
    if not os.path.isdir(folder):
        pytest.skip('../shared/data/srgnn not present')
    stats = srgnn.convert_files(folder, str(tmp_path), name, log=lambda *a: None)
    full, tested = stats[f'{name}_train_full.txt'], stats[f'{name}_test.txt']
    assert (full['sessions'], full['events'], full['items']) == train
    assert (tested['sessions'], tested['events'], tested['predictions']) == test


def test_times_are_written_with_three_decimals_as_printf_would():
    times = np.array([0.0, 0.001, 0.01, 0.999, 7.25, 1396310400.0, 1396310400.002, 1396310459.12, 86399.0101])
    assert srgnn.time_text(times).to_pylist() == [f'{t:.3f}' for t in times]
    assert srgnn.time_text(np.array([-1.5, 2.0])).to_pylist() == ['-1.500', '2.000']    # the printf fallback
