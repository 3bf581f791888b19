"""preprocessing.py: the official RSC15 rules (spec A), the yoochoose variant (A10) and bad input."""
import errno
import json
import os

import numpy as np
import pandas as pd
import pytest

import preprocessing
from conftest import SAMPLE, needs_sample, run_command, write_raw
from scripts.make_synthetic import generate, write_raw as write_synthetic

DAY = 86400


# ---------------------------------------------------------------- slow references, written for the tests

def read_raw_reference(path):
    df = pd.read_csv(path, header=None, usecols=[0, 1, 2], names=['SessionId', 'TimeStr', 'ItemId'])
    stamps = pd.to_datetime(df.TimeStr, format='%Y-%m-%dT%H:%M:%S.%fZ', utc=True)
    df['Time'] = (stamps - pd.Timestamp('1970-01-01', tz='UTC')) / pd.Timedelta(seconds=1)
    return df[['SessionId', 'ItemId', 'Time']]


def rsc15_reference(df, days=1):
    """Spec A3-A6 with pandas groupby, one step per line as the spec words it."""
    size = df.groupby('SessionId').size()
    df = df[df.SessionId.isin(size[size > 1].index)]
    support = df.groupby('ItemId').size()
    df = df[df.ItemId.isin(support[support >= 5].index)]
    size = df.groupby('SessionId').size()
    df = df[df.SessionId.isin(size[size >= 2].index)]

    def split(data):
        end = data.groupby('SessionId').Time.max()
        cut = data.Time.max() - days * DAY
        train = data[data.SessionId.isin(end[end < cut].index)]
        test = data[data.SessionId.isin(end[end >= cut].index)]
        test = test[test.ItemId.isin(train.ItemId)]
        size = test.groupby('SessionId').size()
        return train, test[test.SessionId.isin(size[size >= 2].index)]

    train_full, test = split(df)
    train_tr, valid = split(train_full)
    return {'train_full': train_full, 'test': test, 'train_tr': train_tr, 'train_valid': valid}


def read_output(path):
    return pd.read_csv(path, sep='\t')


def assert_same_rows(ours, reference):
    assert list(ours.columns) == ['SessionId', 'ItemId', 'Time']
    assert len(ours) == len(reference)
    np.testing.assert_array_equal(ours.SessionId.values, reference.SessionId.values)
    np.testing.assert_array_equal(ours.ItemId.values, reference.ItemId.values)
    np.testing.assert_allclose(ours.Time.values, reference.Time.values, rtol=0, atol=5e-4)


# ---------------------------------------------------------------- rsc15, by hand

def stamp(seconds):
    return pd.Timestamp(1396310400 + seconds, unit='s').strftime('%Y-%m-%dT%H:%M:%S.%f')[:-3] + 'Z'


def test_rsc15_rules_on_a_hand_made_file(tmp_path):
    # items 1..3 get >= 5 clicks, item 9 only 4 (dropped), item 7 only in the test window
    rows = []
    for s in range(1, 6):                       # five old sessions: 1 2 3 ... plenty of support
        rows += [(s, stamp(s * 100), 1), (s, stamp(s * 100 + 10), 2), (s, stamp(s * 100 + 20), 3)]
    rows += [(6, stamp(700), 9), (6, stamp(710), 9), (7, stamp(800), 9), (7, stamp(810), 9)]  # item 9: 4 clicks
    rows += [(8, stamp(900), 1)]                                                 # single click: dropped first
    t_end = 10 * DAY
    rows += [(20, stamp(t_end - DAY - 50), 1), (20, stamp(t_end - 5), 2)]       # ends in the last day -> test
    rows += [(21, stamp(t_end - 30), 7)] * 0                                    # (no unseen-only session)
    rows += [(22, stamp(t_end - 20), 3), (22, stamp(t_end - 10), 7), (22, stamp(t_end - 9), 7),
             (22, stamp(t_end - 8), 7), (22, stamp(t_end - 7), 7), (22, stamp(t_end - 6), 7)]  # 7 unseen in train
    rows += [(23, stamp(t_end), 2), (23, stamp(t_end + 0), 1)]                  # last event of the data
    path = write_raw(tmp_path / 'clicks.dat', rows)
    stats = preprocessing.preprocess(path, str(tmp_path / 'out'), log=lambda *a: None)
    train = read_output(tmp_path / 'out' / 'rsc15_train_full.txt')
    test = read_output(tmp_path / 'out' / 'rsc15_test.txt')
    assert sorted(train.SessionId.unique()) == [1, 2, 3, 4, 5]                   # 6, 7 lost item 9; 8 too short
    assert sorted(test.SessionId.unique()) == [20, 23]                           # 22 keeps one click -> dropped
    assert test[test.SessionId == 20].Time.min() < t_end + 1396310400 - DAY     # started before the cut
    assert stats['rsc15_test.txt'] == {'events': 4, 'sessions': 2, 'items': 2}
    assert list(test.ItemId) == [1, 2, 2, 1]                                     # file order kept
    written = json.load(open(tmp_path / 'out' / 'rsc15_stats.json'))
    assert written['sets'] == stats


def test_rsc15_matches_the_reference_on_synthetic_data(tmp_path):
    clicks = generate(n_sessions=4000, n_items=400, days=20, seed=3)
    path = str(tmp_path / 'clicks.dat')
    write_synthetic(path, clicks)
    preprocessing.preprocess(path, str(tmp_path), log=lambda *a: None)
    reference = rsc15_reference(read_raw_reference(path))
    for name, expected in reference.items():
        assert len(expected) > 0
        assert_same_rows(read_output(tmp_path / f'rsc15_{name}.txt'), expected)


@needs_sample
def test_rsc15_on_the_real_sample_gives_the_spec_figures(tmp_path):
    result = run_command('preprocessing.py', '--input', SAMPLE, '--output_dir', str(tmp_path))
    assert result.returncode == 0, result.stderr
    stats = json.load(open(tmp_path / 'rsc15_stats.json'))['sets']
    assert stats == {
        'rsc15_train_full.txt': {'events': 69786, 'sessions': 17688, 'items': 2808},
        'rsc15_test.txt': {'events': 13505, 'sessions': 3403, 'items': 1727},
        'rsc15_train_tr.txt': {'events': 52869, 'sessions': 13543, 'items': 2751},
        'rsc15_train_valid.txt': {'events': 16447, 'sessions': 4065, 'items': 1968}}
    assert 'rsc15_train_full.txt\n\tEvents: 69786\n\tSessions: 17688\n\tItems: 2808' in result.stdout
    reference = rsc15_reference(read_raw_reference(SAMPLE))
    for name, expected in reference.items():
        assert_same_rows(read_output(tmp_path / f'rsc15_{name}.txt'), expected)
    clicks = preprocessing.read_clicks(SAMPLE)
    first = clicks['session'][0], clicks['time_ms'][0], clicks['item'][0]
    assert first == (1, 1396867869277, 214536502)        # 2014-04-07T10:51:09.277Z read as UTC


def test_test_days_widens_the_test_window(tmp_path):
    clicks = generate(n_sessions=3000, n_items=300, days=20, seed=1)
    path = str(tmp_path / 'clicks.dat')
    write_synthetic(path, clicks)
    one = preprocessing.preprocess(path, str(tmp_path / 'a'), test_days=1, log=lambda *a: None)
    three = preprocessing.preprocess(path, str(tmp_path / 'b'), test_days=3, log=lambda *a: None)
    assert three['rsc15_test.txt']['sessions'] > 2 * one['rsc15_test.txt']['sessions']
    reference = rsc15_reference(read_raw_reference(path), days=3)
    assert_same_rows(read_output(tmp_path / 'b' / 'rsc15_test.txt'), reference['test'])


def test_recent_fraction_keeps_the_latest_prefixes(tmp_path):
    clicks = generate(n_sessions=4000, n_items=300, days=20, seed=2)
    path = str(tmp_path / 'clicks.dat')
    write_synthetic(path, clicks)
    preprocessing.preprocess(path, str(tmp_path), log=lambda *a: None)
    quarter = preprocessing.preprocess(path, str(tmp_path), recent_fraction=4, log=lambda *a: None)
    whole = read_output(tmp_path / 'rsc15_train_full.txt')
    part = read_output(tmp_path / 'rsc15_1_4_train_full.txt')
    ends = whole.groupby('SessionId').Time.max().sort_values(kind='stable')
    prefixes = (whole.groupby('SessionId').size() - 1)[ends.index]       # J2.7: a 1/4 of the prefixes, by last click
    kept = prefixes.sum() // 4
    first = int(np.flatnonzero(np.cumsum(prefixes.values) > prefixes.sum() - kept)[0])
    assert set(part.SessionId) == set(ends.index[first:])
    assert prefixes.values[first + 1:].sum() < kept <= prefixes.values[first:].sum()
    assert quarter['rsc15_1_4_train_full.txt']['sessions'] == len(ends) - first
    test = read_output(tmp_path / 'rsc15_1_4_test.txt')
    assert set(test.ItemId) <= set(part.ItemId)                          # test re-filtered on the reduced items
    assert test.groupby('SessionId').size().min() >= 2


# ---------------------------------------------------------------- yoochoose variant

def yoochoose_reference(df, days=1):
    """Spec A10 with pandas, integer seconds, written from the spec's words."""
    df = df.assign(Time=np.floor(df.Time).astype('int64')).sort_values(['SessionId', 'Time', 'ItemId'],
                                                                        kind='stable')
    repeat = (df.SessionId.values[1:] == df.SessionId.values[:-1]) & (df.ItemId.values[1:] == df.ItemId.values[:-1])
    df = df[~np.r_[False, repeat]]
    while True:
        before = len(df)
        size = df.groupby('SessionId').size()
        df = df[df.SessionId.isin(size[size > 1].index)]
        support = df.groupby('ItemId').size()
        df = df[df.ItemId.isin(support[support >= 5].index)]
        if len(df) == before:
            break
    start = df.groupby('SessionId').Time.min()
    t = df.Time.max()
    test = df[df.SessionId.isin(start[start >= t - days * DAY].index)]
    train = df[df.Time < t - days * DAY]
    size = train.groupby('SessionId').size()
    train = train[train.SessionId.isin(size[size > 1].index)]
    train_tr = train[train.Time < t - 2 * days * DAY]
    size = train_tr.groupby('SessionId').size()
    train_tr = train_tr[train_tr.SessionId.isin(size[size > 1].index)]
    valid = train[train.SessionId.isin(start[start >= t - 2 * days * DAY].index)]
    return {'full': df, 'test': test, 'train_full': train, 'train_tr': train_tr, 'train_valid': valid}


def test_yoochoose_variant_matches_the_reference(tmp_path):
    clicks = generate(n_sessions=4000, n_items=300, days=20, seed=4)
    path = str(tmp_path / 'clicks.dat')
    write_synthetic(path, clicks)
    preprocessing.preprocess(path, str(tmp_path), variant='yoochoose', log=lambda *a: None)
    reference = yoochoose_reference(read_raw_reference(path))
    full = reference.pop('full')
    assert json.load(open(tmp_path / 'yoochoose_stats.json'))['after_filtering'] == {
        'events': len(full), 'sessions': full.SessionId.nunique(), 'items': full.ItemId.nunique()}
    for name, expected in reference.items():
        assert len(expected) > 0
        ours = read_output(tmp_path / f'yoochoose_{name}.txt')
        np.testing.assert_array_equal(ours.values, expected[['SessionId', 'ItemId', 'Time']].values)


def test_yoochoose_removes_consecutive_repeats_and_reads_the_test_file(tmp_path):
    rows = [(s, stamp(s * 60 + k), item) for s in range(1, 8) for k, item in enumerate([1, 1, 2, 1])]
    rows += [(9, stamp(20 * DAY), 1), (9, stamp(20 * DAY + 1), 2)]
    write_raw(tmp_path / 'yoochoose-clicks.dat', rows)
    write_raw(tmp_path / 'yoochoose-test.dat', [(10, stamp(20 * DAY + 5), 2), (10, stamp(20 * DAY + 6), 1)])
    stats = preprocessing.preprocess(str(tmp_path / 'yoochoose-clicks.dat'), str(tmp_path), variant='yoochoose',
                                     log=lambda *a: None)
    train = read_output(tmp_path / 'yoochoose_train_full.txt')
    assert list(train[train.SessionId == 1].ItemId) == [1, 2, 1]         # the repeated 1 went
    assert stats['yoochoose_test.txt'] == {'events': 4, 'sessions': 2, 'items': 2}


# ---------------------------------------------------------------- bad input

def outputs(directory):
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def check_fails(tmp_path, raw_path, *expected, extra=()):
    out = tmp_path / 'out'
    result = run_command('preprocessing.py', '--input', str(raw_path), '--output_dir', str(out), *extra)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in result.stderr, result.stderr
    for fragment in expected:
        assert fragment in lines[0], lines[0]
    assert outputs(out) == []
    return lines[0]


def good_rows():
    return [(s, stamp(s * 60 + k), item) for s in range(1, 10) for k, item in enumerate([1, 2, 3])]


def test_missing_input_names_the_path_and_the_kaggle_location(tmp_path):
    check_fails(tmp_path, tmp_path / 'nowhere.dat', 'nowhere.dat', '../input/recsys-challenge-2015/yoochoose-clicks.dat')


def test_empty_input(tmp_path):
    (tmp_path / 'empty.dat').write_text('')
    check_fails(tmp_path, tmp_path / 'empty.dat', 'empty.dat', 'empty')


def test_wrong_number_of_columns_names_the_line(tmp_path):
    path = write_raw(tmp_path / 'c.dat', good_rows())
    with open(path, 'a') as f:
        f.write('10,2014-04-02T10:00:00.000Z,5\n')
    check_fails(tmp_path, path, 'c.dat, line 28', 'expected 4 comma-separated fields', 'got 3')


def test_non_integer_ids_name_the_line(tmp_path):
    rows = good_rows()
    rows[4] = ('abc', rows[4][1], rows[4][2])
    check_fails(tmp_path, write_raw(tmp_path / 's.dat', rows), 'line 5', 'session id must be an integer', "'abc'")
    rows = good_rows()
    rows[6] = (rows[6][0], rows[6][1], '12x')
    check_fails(tmp_path, write_raw(tmp_path / 'i.dat', rows), 'line 7', 'item id must be an integer')


def test_unparsable_timestamp_names_the_line(tmp_path):
    rows = good_rows()
    rows[10] = (rows[10][0], '2014-13-45T99:00:00.000Z', rows[10][2])
    check_fails(tmp_path, write_raw(tmp_path / 't.dat', rows), 't.dat, line 11', 'unparsable timestamp',
                '2014-13-45T99:00:00.000Z')


def test_nothing_left_after_filtering(tmp_path):
    rows = [(s, stamp(s * 60), s) for s in range(1, 20)]       # every session has one click
    check_fails(tmp_path, write_raw(tmp_path / 'n.dat', rows), 'nothing is left after filtering')


def test_unwritable_output_directory(tmp_path):
    path = write_raw(tmp_path / 'g.dat', good_rows() + [(50, stamp(30 * DAY), 1), (50, stamp(30 * DAY + 1), 2)])
    blocker = tmp_path / 'file'
    blocker.write_text('not a directory')
    result = run_command('preprocessing.py', '--input', path, '--output_dir', str(blocker / 'sub'))
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and 'cannot write' in result.stderr
    assert 'Traceback' not in result.stderr


def test_a_failed_write_leaves_no_partial_files_and_keeps_earlier_ones(tmp_path, monkeypatch):
    path = write_raw(tmp_path / 'g.dat', good_rows() + [(50, stamp(30 * DAY), 1), (50, stamp(30 * DAY + 1), 2)])
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'rsc15_test.txt').write_text('an earlier run')
    calls = []
    real = preprocessing.format_rows

    def failing(*args):
        calls.append(1)
        if len(calls) == 2:     # the first group (train_full with train_tr) is written by then
            raise OSError(28, 'No space left on device')
        return real(*args)
    monkeypatch.setattr(preprocessing, 'format_rows', failing)
    with pytest.raises(preprocessing.InputError, match='No space left'):
        preprocessing.preprocess(path, str(tmp_path / 'out'), log=lambda *a: None)
    assert outputs(tmp_path / 'out') == ['rsc15_test.txt']
    assert (tmp_path / 'out' / 'rsc15_test.txt').read_text() == 'an earlier run'


def test_milliseconds_are_written_as_seconds_with_three_decimals():
    ms = np.array([1396867869277, 1396867869000, 1396867869005, 999999999999, 0])
    assert preprocessing.milliseconds_as_seconds(ms).to_pylist() == [
        '1396867869.277', '1396867869.000', '1396867869.005', '0999999999.999', '0000000000.000']
    assert list(preprocessing.milliseconds_as_seconds(np.array([-1500, 2000]))) == [-1.5, 2.0]


@pytest.mark.parametrize('max_runs,kernel_copy', [(0, True), (1000, True), (1000, False)])
def test_every_file_is_cut_from_the_right_rows_across_chunks(tmp_path, monkeypatch, max_runs, kernel_copy):
    monkeypatch.setattr(preprocessing, 'MAX_RUNS', max_runs)
    monkeypatch.setattr(preprocessing.OutputFile, 'kernel_copy', kernel_copy and hasattr(os, 'copy_file_range'))
    clicks = generate(n_sessions=3000, n_items=300, days=20, seed=5)
    path = str(tmp_path / 'clicks.dat')
    write_synthetic(path, clicks)
    raw = preprocessing.read_clicks(path)
    raw['time'] = raw['time_ms']
    sets = preprocessing.rsc15(raw)
    with preprocessing.ThreadPoolExecutor(2) as pool:
        preprocessing.write_sets([(str(tmp_path / f'{n}.txt'), m) for n, m in sets.items()], raw, pool,
                                 preprocessing.milliseconds_as_seconds, chunk=777)
    for name, mask in sets.items():
        ours = read_output(tmp_path / f'{name}.txt')
        np.testing.assert_array_equal(ours.SessionId.values, raw['session'][mask])
        np.testing.assert_array_equal(ours.ItemId.values, raw['item'][mask])
        np.testing.assert_array_equal(ours.Time.values, raw['time_ms'][mask] / 1000)


def test_bad_flags(tmp_path):
    path = write_raw(tmp_path / 'g.dat', good_rows())
    for flags in (['--test_days', '0'], ['--recent_fraction', '0'], ['--variant', 'rsc16']):
        result = run_command('preprocessing.py', '--input', path, '--output_dir', str(tmp_path / 'o'), *flags)
        assert result.returncode == 2 and flags[0] in result.stderr


def test_output_file_falls_back_to_writing_when_the_kernel_cannot_copy(tmp_path, monkeypatch):
    def cross_device(*args):
        raise OSError(errno.EXDEV, 'Invalid cross-device link')
    monkeypatch.setattr(os, 'copy_file_range', cross_device, raising=False)
    monkeypatch.setattr(preprocessing.OutputFile, 'kernel_copy', True)
    source, target = preprocessing.OutputFile(str(tmp_path / 'a')), preprocessing.OutputFile(str(tmp_path / 'b'))
    source.write(b'head\nline 1\nline 2\n')
    target.write(b'head\n')
    target.copy_from(source, 12, b'line 2\n')
    target.copy_from(source, 5, b'line 1\n')
    assert not target.kernel_copy and target.size == 19
    source.close()
    assert (tmp_path / 'b').read_bytes() == b'head\nline 2\nline 1\n'

    def disk_full(*args):
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(os, 'copy_file_range', disk_full, raising=False)
    other = preprocessing.OutputFile(str(tmp_path / 'c'))
    with pytest.raises(OSError, match='No space'):              # a real error is not taken for "unsupported"
        other.copy_from(target, 0, b'head\n')
    other.close(), target.close()


# ---------------------------------------------------------------- wrong dates (issue #32)

def test_a_click_dated_2999_is_named_and_refused_or_dropped(tmp_path):
    """Every window is measured back from the last click: one click dated 2999 made the test set that
    click's session alone (147 sessions -> 1 on the real sample), with exit 0 and no word."""
    raw = tmp_path / 'clean.dat'
    write_synthetic(str(raw), generate(600, 60, days=12, seed=5))
    lines = open(raw).read().splitlines()
    session, stamp, item, category = lines[40].split(',')
    bad_line = f'{session},2999-01-01T00:00:00.000Z,{item},{category}'
    dated = tmp_path / 'dated.dat'
    dated.write_text('\n'.join(lines[:41] + [bad_line] + lines[41:]) + '\n')
    result = run_command('preprocessing.py', '--input', str(dated), '--output_dir', str(tmp_path / 'refused'))
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert result.stderr.startswith(f'error: 1 click(s) dated after a gap of more than 365 days following the other '
                                    f'{len(lines):,} (last of those ')
    assert f'line 42: session {session}, item {item}, 2999-01-01 00:00:00' in result.stderr
    assert '--time_outliers drop' in result.stderr
    assert not (tmp_path / 'refused').exists() or not os.listdir(tmp_path / 'refused')
    logged = []
    preprocessing.preprocess(str(raw), str(tmp_path / 'clean') + '/', log=logged.append)
    preprocessing.preprocess(str(dated), str(tmp_path / 'drop') + '/', time_outliers='drop', log=logged.append)
    for name in ('train_full', 'test', 'train_tr', 'train_valid'):
        assert read_output(tmp_path / 'drop' / f'rsc15_{name}.txt').equals(
            read_output(tmp_path / 'clean' / f'rsc15_{name}.txt'))
    assert any(line.startswith('warning: 1 click(s) dated') and line.endswith('dropped (--time_outliers drop)')
               for line in logged)
    stats = preprocessing.preprocess(str(dated), str(tmp_path / 'keep') + '/', time_outliers='keep', log=logged.append)
    assert stats['rsc15_test.txt']['sessions'] <= 1                       # what keeping them means
    test_span = [line for line in logged if line.startswith('rsc15_test.txt')][-1]
    assert test_span.endswith(' - 2999-01-01 00:00:00 UTC'), test_span     # the log shows it


def test_late_outliers_rule():
    per_day = 10                       # time in tenths of a day
    bulk = np.arange(0, 3000, 7)       # 300 days of clicks
    rule = preprocessing.late_outliers
    assert rule(bulk, per_day) is None
    assert list(np.flatnonzero(rule(np.r_[bulk, 2999 + 3660], per_day))) == [len(bulk)]   # 366 days later
    assert rule(np.r_[bulk, 2999 + 3650], per_day) is None                                   # 365: a gap allowed
    early = np.r_[-9000, bulk]                    # one click 900 days before the rest: the later part is the data
    assert rule(early, per_day) is None
    two = np.r_[bulk, bulk + 10_000]              # two real periods, the later one not a minority
    assert rule(two, per_day) is None
    far = np.r_[bulk, bulk[:400] + 400_000]       # over 100 years after the first click: wrong, whatever the count
    assert np.count_nonzero(rule(far, per_day)) == 400


def test_each_split_logs_the_dates_it_covers(tmp_path):
    raw = tmp_path / 'clicks.dat'
    write_raw(raw, [(s, f'2014-04-{1 + s % 9:02d}T10:00:0{k}.000Z', 100 + (s + k) % 4) for s in range(1, 60)
                    for k in range(3)])
    logged = []
    preprocessing.preprocess(str(raw), str(tmp_path) + '/', log=logged.append)
    test = [line for line in logged if line.startswith('rsc15_test.txt')][0]
    assert test.endswith('\tSpan: 2014-04-08 10:00:00 - 2014-04-09 10:00:02 UTC'), test


def test_wrong_dates_are_caught_in_every_route(tmp_path):
    """The J1 datasets and custom logs (events sorted: no line number, the session, item and date), and the
    SR-GNN protocol (its split is the last date minus a window too)."""
    lines = [f'{s},{1_700_000_000 + s * 7200 + k},i{(s + k) % 4}' for s in range(1, 50) for k in range(3)]
    lines[10] = '4,32503680000,i2'                                       # 3000-01-01
    path = tmp_path / 'log.csv'
    path.write_text('SessionId,Time,ItemId\n' + '\n'.join(lines) + '\n')
    with pytest.raises(preprocessing.InputError, match=r'^1 click\(s\) dated after .*: session 4, item i2, '
                                                        r'3000-01-01 00:00:00; every split window'):
        preprocessing.preprocess(str(path), str(tmp_path / 'out'), 'custom', log=lambda *a: None)
    raw = tmp_path / 'clicks.dat'
    write_synthetic(str(raw), generate(300, 40, days=12, seed=6))
    with open(raw, 'a') as f:
        f.write('7,2999-06-01T00:00:00.000Z,5,0\n')
    for extra in (['--dataset', 'yoochoose', '--protocol', 'srgnn'], ['--dataset', 'yoochoose']):
        result = run_command('preprocessing.py', '--input', str(raw), '--output_dir', str(tmp_path / 'o'), *extra)
        assert result.returncode == 2 and 'item 5, 2999-06-01 00:00:00' in result.stderr, (extra, result.stderr)
    result = run_command('preprocessing.py', '--input', str(raw), '--output_dir', str(tmp_path / 'o'),
                         '--dataset', 'yoochoose', '--protocol', 'srgnn', '--time_outliers', 'drop')
    assert result.returncode == 0 and 'warning: 1 click(s) dated' in result.stdout, result.stderr
