"""preprocessing.py --dataset NAME: J1's rules on hand-made raw files of every format (datasets-spec J1, J3, J4).

One scenario, written by hand, is rendered in each raw format; the rows each output file must hold were
worked out by hand from J1's words (EXPECTED below). Reader rules that differ between formats (the 3600 s
gap, measured before or after the event filter; Diginetica's time; ISO / s / ms times; string ids) have
their own small cases.
"""
import datetime
import json
import os
import random

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import datasets
import preprocessing
from conftest import ROOT, run_command

DAY = 86400
DIGINETICA_SAMPLE = os.path.join(ROOT, '..', 'shared', 'data', 'diginetica-sample', 'sample_train-item-views.csv')

# sessions A..Q: (t_day multiples, seconds, item) relative to t_split T; every session its own user
SCENARIO = {
    'A': [(-5, 0, 10), (-5, 60, 20), (-5, 120, 30)],
    'B': [(-5, 1000, 10), (-5, 1060, 10), (-5, 1120, 20)],              # consecutive repeat: i,i,j -> i,j
    'C': [(-5, 2000, 20), (-5, 2060, 10), (-5, 2120, 20)],              # i,j,i is kept
    'D': [(-5, 3000, 10), (-5, 3060, 40), (-5, 3120, 30)],
    'E': [(-5, 4000, 20), (-5, 4060, 40), (-5, 4120, 30)],
    'F': [(-5, 5000, 30), (-5, 5060, 40), (-5, 5120, 50), (-5, 5180, 10)],
    'G': [(-5, 6000, 40), (-5, 6060, 50)],
    'H': [(-5, 7000, 30), (-5, 7060, 50), (-5, 7120, 10)],
    'I': [(-5, 8000, 50), (-5, 8060, 40)],
    'J': [(-2, 100, 10), (-2, 160, 20)],                                # starts in the validation window
    'K': [(-2, -100, 20), (-2, 100, 30), (-2, 200, 10)],                # straddles t_split - 2 t_day
    'L': [(-1, -200, 10), (-1, -100, 20), (-1, 100, 30)],               # straddles t_split - t_day
    'M': [(-1, 0, 10), (-1, 60, 60), (-1, 120, 20)],                    # starts exactly at t_split - t_day
    'N': [(-1, 1000, 60), (-1, 1060, 30)],
    'O': [(-1, 2000, 60), (-1, 2060, 10)],
    'P': [(-1, 3000, 60), (-1, 3060, 20)],
    'Q': [(0, -60, 60), (0, 0, 30)],                                    # the last event: T itself
}
# Worked out by hand. Step 4: B loses its second 10. Step 5, round 1: item 50 has 4 events -> gone; round 2:
# G and I are left with one event -> gone, so item 40 falls to 3 events (D, E, F) -> gone; round 3: no change.
# Item 60 lives only in the test window (5 events): it stays in the test file (J1.6: test not filtered).
# Step 6: test = sessions starting >= T - t_day (M..Q, all events); train_full = events < T - t_day, sessions
# of one event dropped: L keeps 10, 20 (its 30 is cut off), M (start exactly T - t_day) is test only.
# Step 7: train_tr = events < T - 2 t_day: K keeps only its 20 -> dropped; J is later; train_valid = the
# train_full events of sessions starting >= T - 2 t_day: J and L (K started 100 s before).
EXPECTED = {
    'train_full': {'A': [0, 1, 2], 'B': [0, 2], 'C': [0, 1, 2], 'D': [0, 2], 'E': [0, 2], 'F': [0, 3],
                   'H': [0, 2], 'J': [0, 1], 'K': [0, 1, 2], 'L': [0, 1]},
    'test': {'M': [0, 1, 2], 'N': [0, 1], 'O': [0, 1], 'P': [0, 1], 'Q': [0, 1]},
    'train_tr': {'A': [0, 1, 2], 'B': [0, 2], 'C': [0, 1, 2], 'D': [0, 2], 'E': [0, 2], 'F': [0, 3], 'H': [0, 2]},
    'train_valid': {'J': [0, 1], 'L': [0, 1]},
}
AFTER_FILTERING = {'events': 35, 'sessions': 15, 'items': 4}
NUMBER = {name: k + 1 for k, name in enumerate(SCENARIO)}        # users / sessions 1..17 in name order


def iso(seconds, form='%Y-%m-%d %H:%M:%S UTC'):
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime(form)


def scenario_rows(t_split, t_day):
    """(session name, time in s, item) of every event."""
    return [(name, t_split + k * t_day + s, item) for name, events in SCENARIO.items() for k, s, item in events]


def shuffled(lines, seed=0):
    lines = list(lines)
    random.Random(seed).shuffle(lines)
    return lines


def write(path, header, lines):
    with open(path, 'w') as f:
        f.write(''.join(line + '\n' for line in ([header] if header else []) + lines))
    return str(path)


# ---------------------------------------------------------------- the scenario in every raw format

def render_retailrocket(folder, T, d):
    lines = [f'{t * 1000},{NUMBER[n]},view,{item},' for n, t, item in scenario_rows(T, d)]
    lines += [f'{(T - 5 * d + 90) * 1000},{NUMBER["A"]},addtocart,20,',          # not a view: filtered out
              f'{(T - 3 * d) * 1000},99,transaction,20,7', f'{(T - 3 * d + 5) * 1000},99,addtocart,10,']
    return [write(folder / 'events.csv', 'timestamp,visitorid,event,itemid,transactionid', shuffled(lines))], {}


def render_rees46(folder, T, d):
    def line(t, kind, item, user):
        return f'{iso(t)},{kind},{item},2053013555631882655,,brand,1.5,{user},0f6a-{user}'
    lines = [line(t, 'view', item, 500 + NUMBER[n]) for n, t, item in scenario_rows(T, d)]
    lines += [line(T - 5 * d + 90, 'cart', 20, 500 + NUMBER['A']), line(T - 3 * d, 'purchase', 20, 599)]
    lines = shuffled(lines)
    header = 'event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session'
    return [write(folder / '2019-Oct.csv', header, lines[:20]), write(folder / '2019-Nov.csv', header, lines[20:])], {}


def render_coveo(folder, T, d):
    lines = [f'h{NUMBER[n]:02d},event_product,detail,sku{item},{t * 1000},url' for n, t, item in scenario_rows(T, d)]
    lines += [f'h{NUMBER["A"]:02d},pageview,,,{(T - 5 * d + 90) * 1000},url',
              f'h{NUMBER["A"]:02d},event_product,add,sku20,{(T - 5 * d + 95) * 1000},url']
    header = 'session_id_hash,event_type,product_action,product_skus_hash,server_timestamp_epoch_ms,hashed_url'
    return [write(folder / 'release_10_23_2020.csv', header, shuffled(lines))], {}


def render_diginetica(folder, T, d, header='sessionId;userId;itemId;timeframe;eventdate'):
    rows = scenario_rows(T, d)
    first = {}
    for n, t, _ in rows:
        first[n] = min(first.get(n, t), t)
    lines = []
    for n, t, item in rows:                      # timeframe: ms since the midnight of the session's first day
        midnight = first[n] // DAY * DAY
        lines.append(f'{NUMBER[n]};NA;{item};{(t - midnight) * 1000};{iso(t, "%Y-%m-%d")}')
    return [write(folder / 'train-item-views.csv', header, shuffled(lines))], {}


def render_yoochoose(folder, T, d):
    lines = [f'{NUMBER[n]},{iso(t, "%Y-%m-%dT%H:%M:%S")}.{NUMBER[n] * 7 % 1000:03d}Z,{item},0'
             for n, t, item in scenario_rows(T, d)]
    return [write(folder / 'yoochoose-clicks.dat', None, shuffled(lines))], {}


def render_custom(folder, T, d, unit='s'):
    def when(t):
        return {'s': str(t), 'ms': str(t * 1000), 'iso': iso(t, '%Y-%m-%dT%H:%M:%SZ')}[unit]
    lines = [f'{NUMBER[n]}\t{when(t)}\tsku{item}\tview' for n, t, item in scenario_rows(T, d)]
    lines += [f'{NUMBER["A"]}\t{when(T - 5 * d + 90)}\tsku20\tbuy']
    return [write(folder / 'log.tsv', 'SessionId\tTime\tItemId\tevent', shuffled(lines))], dict(
        time_unit=unit, event_key='event', events_kept=['view'])


# dataset -> (renderer, t_split, t_day, item labels are strings)
FORMATS = {
    'retailrocket': (render_retailrocket, 1442545200, 7 * DAY, False),
    'rees46': (render_rees46, 1575158400, DAY, False),
    'coveo': (render_coveo, 1602000000, DAY, True),
    'diginetica': (render_diginetica, 1464739300, 7 * DAY, False),     # 00:01:40: L crosses a midnight
    'yoochoose': (render_yoochoose, 1399000000, DAY, False),
    'custom': (render_custom, 1700000000, DAY, True),
}


def expected_rows(part, T, d, strings):
    events = {name: [(T + k * d + s, item) for k, s, item in evs] for name, evs in SCENARIO.items()}
    return [(NUMBER[name], f'sku{events[name][i][1]}' if strings else str(events[name][i][1]),
             float(events[name][i][0])) for name, kept in EXPECTED[part].items() for i in kept]


def output_rows(path):
    df = pd.read_csv(path, sep='\t', dtype={'ItemId': str})
    assert list(df.columns) == ['SessionId', 'ItemId', 'Time']
    return list(zip(df.SessionId.tolist(), df.ItemId.tolist(), df.Time.tolist()))


@pytest.mark.parametrize('dataset', FORMATS)
def test_the_j1_rules_on_a_hand_made_file_of_every_format(dataset, tmp_path):
    render, T, d, strings = FORMATS[dataset]
    paths, custom = render(tmp_path, T, d)
    stats = preprocessing.preprocess(paths, str(tmp_path / 'out'), dataset, custom=custom or None,
                                     log=lambda *a: None)
    for part in EXPECTED:
        assert output_rows(tmp_path / 'out' / f'{dataset}_{part}.txt') == expected_rows(part, T, d, strings), part
    doc = json.load(open(tmp_path / 'out' / f'{dataset}_stats.json'))
    assert doc['after_filtering'] == AFTER_FILTERING and doc['sets'] == stats
    assert stats[f'{dataset}_test.txt'] == {'events': 11, 'sessions': 5, 'items': 4}
    assert doc['test_days'] == d / DAY


def test_custom_times_in_milliseconds_and_iso_and_parquet(tmp_path):
    _, T, d, _ = FORMATS['custom']
    for unit in ('ms', 'iso'):
        paths, custom = render_custom(tmp_path, T, d, unit)
        preprocessing.preprocess(paths, str(tmp_path / unit), 'custom', custom=dict(custom, name='log'),
                                 log=lambda *a: None)
        for part in EXPECTED:
            assert output_rows(tmp_path / unit / f'log_{part}.txt') == expected_rows(part, T, d, True), (unit, part)
    table = pd.read_csv(paths[0], sep='\t', dtype={'Time': str})
    table['Time'] = pd.to_datetime(table.Time, utc=True)
    parquet = str(tmp_path / 'log.parquet')
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False).set_column(
        1, 'Time', pa.array(table.Time.dt.strftime('%Y-%m-%d %H:%M:%S').tolist())), parquet)
    preprocessing.preprocess(parquet, str(tmp_path / 'pq'), 'custom', custom=dict(custom, time_unit='iso'),
                             log=lambda *a: None)
    assert output_rows(tmp_path / 'pq' / 'custom_test.txt') == expected_rows('test', T, d, True)
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), parquet)     # a timestamp column
    preprocessing.preprocess(parquet, str(tmp_path / 'pq2'), 'custom', custom=custom, log=lambda *a: None)
    assert output_rows(tmp_path / 'pq2' / 'custom_test.txt') == expected_rows('test', T, d, True)


# ---------------------------------------------------------------- reader rules that differ between formats

def gap_case(unit):
    """User 1: views 0, +3600 s (same session), +3600 s +1 unit (new session); user 2: view, another event
    3000 s later, view 6000 s after the first (one session when the gap is measured on all events)."""
    one = 1 if unit == 's' else 0.001
    return [(1, 0, 'view', 10), (1, 3600, 'view', 20), (1, 7200 + one, 'view', 30),
            (2, 0, 'view', 10), (2, 3000, 'other', 20), (2, 6000, 'view', 30)]


def reader_rows(events):
    return [(int(s), int(i), float(t) / events['scale']) for s, i, t in
            zip(events['session'], events['item'], events['time'])]


@pytest.mark.parametrize('dataset,before_filter', [('retailrocket', True), ('coveo', True), ('rees46', False)])
def test_the_3600_s_gap_and_whether_it_is_measured_before_the_event_filter(dataset, before_filter, tmp_path):
    T = 1575158400
    if dataset == 'retailrocket':
        kinds = {'view': 'view', 'other': 'addtocart'}
        lines = [f'{round((T + t) * 1000)},{u},{kinds[k]},{i},' for u, t, k, i in gap_case('ms')]
        paths = [write(tmp_path / 'e.csv', 'timestamp,visitorid,event,itemid,transactionid', shuffled(lines))]
    elif dataset == 'coveo':
        kinds = {'view': 'detail', 'other': 'remove'}
        lines = [f'h{u},event_product,{kinds[k]},sku{i},{round((T + t) * 1000)},url' for u, t, k, i in gap_case('ms')]
        paths = [write(tmp_path / 'c.csv', 'session_id_hash,event_type,product_action,product_skus_hash,'
                                           'server_timestamp_epoch_ms,hashed_url', shuffled(lines))]
    else:
        kinds = {'view': 'view', 'other': 'cart'}
        lines = [f'{iso(T + t)},{kinds[k]},{i},1,,,1.0,{u},x' for u, t, k, i in gap_case('s')]
        header = 'event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session'
        paths = [write(tmp_path / 'o.csv', header, lines[:2]), write(tmp_path / 'n.csv', header, lines[2:])]
    events = datasets.READERS[dataset](paths)
    if dataset == 'coveo':
        events['item'] = np.array([int(events['item_labels'][i].as_py()[3:]) for i in events['item']])
    late = 7200.001 if dataset != 'rees46' else 7201
    second_user = [(3, 10, T), (3, 30, T + 6000)] if before_filter else [(3, 10, T), (4, 30, T + 6000)]
    assert reader_rows(events) == [(1, 10, T), (1, 20, T + 3600), (2, 30, T + late)] + second_user


def test_custom_user_histories_cut_after_the_event_filter(tmp_path):
    lines = [f'u{u};{t};{i};{k}' for u, t, k, i in gap_case('s')]
    path = write(tmp_path / 'log.csv', 'user;when;item;kind', lines)
    events = datasets.read_custom([path], user_key='user', item_key='item', time_key='when', event_key='kind',
                                  events_kept=['view'])
    assert reader_rows(events) == [(1, 10, 0), (1, 20, 3600), (2, 30, 7201), (3, 10, 0), (4, 30, 6000)]
    events = datasets.read_custom([path], user_key='user', item_key='item', time_key='when', session_gap=7201)
    assert [int(s) for s in events['session']] == [1, 1, 1, 2, 2, 2]


def test_diginetica_time_is_the_sessions_first_day_plus_timeframe(tmp_path):
    # session 7 spans midnight: its rows' own eventdates differ, the time counts from its earliest day;
    # its rows are out of timeframe order in the file
    lines = ['7;NA;30;86500000;2016-05-10', '7;NA;10;86300000;2016-05-09', '7;NA;20;86400000;2016-05-10',
             '3;5;40;1000;2016-05-12']
    for header in ('sessionId;userId;itemId;timeframe;eventdate', 'session_id;user_id;item_id;timeframe;eventdate'):
        events = datasets.read_diginetica([write(tmp_path / 'd.csv', header, lines)])
        day = 1462752000                                                 # 2016-05-09 00:00 UTC
        assert reader_rows(events) == [(3, 40, day + 3 * DAY + 1), (7, 10, day + 86300), (7, 20, day + 86400),
                                       (7, 30, day + 86500)]


@pytest.mark.skipif(not os.path.isfile(DIGINETICA_SAMPLE), reason='../shared/data sample not present')
def test_the_real_diginetica_sample_gives_the_j4_figures(tmp_path):
    result = run_command('preprocessing.py', '--dataset', 'diginetica', '--input', DIGINETICA_SAMPLE,
                         '--output_dir', str(tmp_path))
    assert result.returncode == 0, result.stderr
    doc = json.load(open(tmp_path / 'diginetica_stats.json'))
    assert doc['after_filtering'] == {'events': 779, 'sessions': 235, 'items': 121}
    assert doc['sets'] == {
        'diginetica_test.txt': {'events': 69, 'sessions': 20, 'items': 35},
        'diginetica_train_full.txt': {'events': 707, 'sessions': 214, 'items': 120},
        'diginetica_train_tr.txt': {'events': 644, 'sessions': 200, 'items': 116},
        'diginetica_train_valid.txt': {'events': 63, 'sessions': 14, 'items': 25}}
    test = pd.read_csv(tmp_path / 'diginetica_test.txt', sep='\t')
    assert len(test) == 69 and test.SessionId.nunique() == 20          # the files hold what the stats say


# ---------------------------------------------------------------- times

def test_iso_times_of_every_form():
    values = ['2019-10-01 00:00:00 UTC', '2019-11-30 23:59:59 UTC', '2020-02-29 12:00:01 UTC']
    assert list(datasets.iso_to_ms(pa.chunked_array([values]), 'f') // 1000) == [1569888000, 1575158399,
                                                                                  1582977601]
    assert list(datasets.iso_to_ms(pa.array(['2014-04-07T10:51:09.277Z', '2014-04-07T12:51:09+02:00']), 'f')) \
        == [1396867869277, 1396867869000]
    assert list(datasets.iso_to_ms(pa.array(['2014-04-07 10:51:09.5', '2014-04-07']), 'f')) == [
        1396867869500, 1396828800000]
    with pytest.raises(preprocessing.InputError, match="f, line 3: unparsable time '2019-13-01 00:00:00 UTC'"):
        datasets.iso_to_ms(pa.array(['2019-10-01 00:00:00 UTC', '2019-13-01 00:00:00 UTC']), 'f')


def test_seconds_and_milliseconds():
    time, scale = datasets.numeric_time(pa.array([5, 7]), 'f', 's')
    assert (list(time), scale) == ([5, 7], 1)
    time, scale = datasets.numeric_time(pa.array([5.25, 7.0]), 'f', 's')
    assert (list(time), scale) == ([5250, 7000], 1000)
    time, scale = datasets.numeric_time(pa.array([5250, 7000]), 'f', 'ms')
    assert (list(time), scale) == ([5250, 7000], 1000)
    with pytest.raises(preprocessing.InputError, match="f, line 4: unparsable time 'noon'"):
        datasets.numeric_time(pa.array(['1', '2', 'noon']), 'f', 's')


def test_equal_times_are_ordered_by_item_label_numbers_as_numbers(tmp_path):
    lines = ['1,100,b', '1,100,a', '1,50,c', '2,100,10', '2,100,9']
    events = datasets.read_custom([write(tmp_path / 'l.csv', 'SessionId,Time,ItemId', lines)])
    assert [events['item_labels'][i].as_py() for i in events['item']] == ['c', 'a', 'b', '10', '9']   # strings
    events = datasets.read_custom([write(tmp_path / 'n.csv', 'SessionId,Time,ItemId', lines[3:])])
    assert list(events['item']) == [9, 10]                                                          # numbers


def test_the_combined_sort_key_and_the_lexsort_fallback_give_the_same_order(monkeypatch):
    rng = np.random.default_rng(0)
    keys = [rng.integers(0, 50, 2000) * 2 ** 40, rng.integers(-3, 7, 2000), rng.integers(0, 5, 2000)]
    expected = np.lexsort(keys[::-1])
    for bits in (62, 8):            # 8: the codes (50 x 10 x 5) do not fit, np.lexsort sorts
        monkeypatch.setattr(datasets, 'SORT_KEY_BITS', bits)
        order = datasets.sort_order(*keys)
        np.testing.assert_array_equal(np.stack(keys)[:, order], np.stack(keys)[:, expected])


def test_an_item_id_the_split_files_cannot_hold_is_one_error_naming_the_row(tmp_path):
    # a quoted CSV field may hold a TAB, a line break or a quote; the TAB split files cannot (issue #32:
    # pyarrow's ArrowInvalid traceback at write time, after the whole run)
    for bad, shown in (('"a\tb"', r"'a\tb'"), ('"a""b"', """'a"b'"""), ('"a\nb"', r"'a\nb'")):
        lines = [f'{s},{s * 7200 + t},{bad if t == 4 and s > 2 else f"i{(s + t) % 3}"}'
                 for s in range(1, 40) for t in range(1, 5 if 2 < s < 10 else 4)]   # 7 clicks on it: it is kept
        path = write(tmp_path / 'log.csv', 'SessionId,Time,ItemId', lines)
        with pytest.raises(preprocessing.InputError) as err:
            preprocessing.preprocess(path, str(tmp_path / 'out'), 'custom', log=lambda *a: None)
        assert str(err.value) == (f'{path}, line 11: item id {shown} holds a TAB, a line break or a double quote, '
                                  f'which the TAB-separated split files cannot hold')
        assert not (tmp_path / 'out').exists() or not os.listdir(tmp_path / 'out')
