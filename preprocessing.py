"""Preprocessing: raw session data -> time-split train/valid/test files.

Implements the rules of the official GRU4Rec example (examples/rsc15/preprocess.py of
hidasib/GRU4Rec), spec A1-A8, and those of the authors' third-party comparison (datasets-spec J1,
spec A10 for Yoochoose) for every dataset of the official results; the raw formats are read by datasets.py.

    python preprocessing.py                                   # data/yoochoose-clicks.dat -> data/rsc15_*.txt
    python preprocessing.py --input ../input/recsys-challenge-2015/yoochoose-clicks.dat
    python preprocessing.py --dataset diginetica --input data/train-item-views.csv
    python preprocessing.py --dataset rees46 --input data/2019-Oct.csv data/2019-Nov.csv
    python preprocessing.py --dataset custom --input log.csv --user_key user --time_unit iso
    python preprocessing.py --dataset yoochoose --protocol srgnn --recent_fraction 64   # SR-GNN's sets (srgnn.py)
    python preprocessing.py --dataset srgnn_files --input DIR        # the circulated SR-GNN pickles (srgnn.py)

rsc15 (default), spec A3-A7:
  1. keep sessions with more than one click; 2. keep clicks on items with support >= 5;
  3. keep sessions with at least two clicks (one pass each, in this order, no de-duplication).
  test = sessions whose LAST click is within `test_days` days of the last click of the data;
  test clicks on items unseen in train_full are dropped, then test sessions shorter than 2.
  The same rule applied to train_full gives train_tr / train_valid.
  Output: rsc15_train_full.txt, rsc15_test.txt, rsc15_train_tr.txt, rsc15_train_valid.txt
  (TAB, header SessionId ItemId Time, Time in UTC seconds written with 3 decimals, rows in raw-file order).

yoochoose | diginetica | retailrocket | rees46 | coveo | custom (J1 steps 3-7, cmp_sets): events sorted by
  (session, time, item); consecutive repeats removed; {drop length-1 sessions; drop items with support < 5}
  repeated until stable; test = sessions that START at or after t_split - t_day (the test set is not
  filtered further), train_full = events before that point (sessions cut there, length-1 sessions
  dropped); train_tr / train_valid the same with t_split - 2 t_day. t_split and t_day per dataset are in
  datasets.py. Output: <name>_train_full.txt, _test.txt, _train_tr.txt, _train_valid.txt (rows in sorted
  order; Time in seconds: integers where the data has seconds, 3 decimals where it has milliseconds) and
  <name>_stats.json. `--variant yoochoose` is the old name of `--dataset yoochoose`.

--recent_fraction N keeps the most recent 1/N of the training data by the rule of the "YOOCHOOSE 1/64"
  sets (datasets-spec J2.7): the training sessions are ordered by their last click (ties by session id),
  the last floor(P/N) of their P prefixes are kept, and with them every session from the one owning
  the first kept prefix on; in train_full and in train_tr alike. (The whole SRG protocol, with its own
  filtering and split, is --protocol srgnn: srgnn.py.) For
  rsc15 the test and validation files are then filtered again against the reduced training items
  (unseen items out, then sessions shorter than 2), so every file pair stays consistent.
  The files get the prefix `<name>_1_<N>_`.

Timestamps are parsed as UTC (the official script used the machine's local zone; a constant
offset cannot change any split, spec A2). Wrong dates: every window is measured back from the last click,
so a few clicks dated far after the rest (a row dated 2999) would be the whole test set; `late_outliers`
finds them (a minority after a gap of more than a year, or over 100 years after the first click) and
--time_outliers says what happens: error (default, naming the first rows), drop, or keep (a warning).
The log gives the dates each file covers. Reading uses pyarrow's multi-threaded CSV parser.
"""
import argparse
import errno
import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from cli import ArgumentParser, InputError, run_cli, write_atomically
from datasets import DATASETS, READERS, SESSION_GAP, read_custom
import srgnn

DAY = 86400
MAX_RUNS = 1000   # a file taking more runs of lines than this from a formatted chunk is cut by a byte mask
RAW_COLUMNS = ['SessionId', 'Timestamp', 'ItemId', 'Category']
KAGGLE_HINT = 'on Kaggle: --input ../input/recsys-challenge-2015/yoochoose-clicks.dat'
OUTLIER_GAP_DAYS = 365      # a minority of clicks dated this long after all the others: wrong dates
FAR_DAYS = 36525            # clicks more than 100 years after the first: wrong dates whatever their number


# ---------------------------------------------------------------- reading the raw file

def read_clicks(path):
    """Read a raw yoochoose click file (no header; session,timestamp,item,category).

    Returns a dict of numpy arrays: session (int64), time_ms (int64, UTC milliseconds), item (int64),
    in file order. Any malformed line raises InputError naming the file and the line number.
    """
    if not os.path.isfile(path):
        raise InputError(f'{path}: no such file (download yoochoose-clicks.dat from the RecSys '
                         f'Challenge 2015 and pass --input; {KAGGLE_HINT})')
    if os.path.getsize(path) == 0:
        raise InputError(f'{path}: the file is empty (expected lines of session,timestamp,item,category)')
    types = {'SessionId': pa.int64(), 'Timestamp': pa.timestamp('ms', tz='UTC'), 'ItemId': pa.int64()}
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=RAW_COLUMNS, block_size=1 << 22),
            parse_options=pacsv.ParseOptions(delimiter=','),
            convert_options=pacsv.ConvertOptions(include_columns=RAW_COLUMNS[:3], column_types=types,
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError) as err:
        raise InputError(find_bad_line(path) or f'{path}: cannot be read as session,timestamp,item,category '
                                                f'lines ({str(err).splitlines()[0]})') from None
    if table.num_rows == 0:
        raise InputError(f'{path}: the file holds no clicks')
    if any(table[c].null_count for c in RAW_COLUMNS[:3]):
        raise InputError(find_bad_line(path) or f'{path}: empty session, timestamp or item field')
    return {'session': table['SessionId'].to_numpy(),
            'time_ms': table['Timestamp'].cast(pa.int64()).to_numpy(),
            'item': table['ItemId'].to_numpy()}


def find_bad_line(path):
    """Slow line-by-line scan that names the first malformed line (only run after a failed fast read)."""
    import datetime
    with open(path, 'rb') as f:
        for number, raw in enumerate(f, 1):
            line = raw.rstrip(b'\r\n').decode('utf-8', errors='replace')
            shown = line if len(line) <= 80 else line[:77] + '...'
            fields = line.split(',')
            if len(fields) != 4:
                return (f'{path}, line {number}: expected 4 comma-separated fields '
                        f'(session,timestamp,item,category), got {len(fields)}: {shown!r}')
            for name, value in (('session id', fields[0]), ('item id', fields[2])):
                try:
                    int(value)
                except ValueError:
                    return f'{path}, line {number}: {name} must be an integer, got {value!r}'
            try:
                datetime.datetime.fromisoformat(fields[1].replace('Z', '+00:00'))
            except ValueError:
                return (f'{path}, line {number}: unparsable timestamp {fields[1]!r} '
                        f'(expected e.g. 2014-04-07T10:51:09.277Z)')
    return None


# ---------------------------------------------------------------- vectorised helpers

def group_codes(values):
    """Codes 0..m-1 of the distinct values, equal values getting equal codes; some codes may go unused.

    An id range no wider than the number of rows (the session ids of the real file: 1..11.6M over 33M
    clicks) is used as it is, shifted to start at 0; wider ranges (its item ids, 214M..643M) are hashed.
    The hash table starts small and grows with the distinct values: pandas' default sizes it for every
    row, and its cache misses make 33M clicks on 53k items 3x slower (0.87 s instead of 0.29 s).
    """
    low = values.min()
    if values.max() - low < len(values):
        return values - low
    import pandas as pd
    return pd.factorize(values, size_hint=1 << 16)[0]


def session_and_item_codes(clicks):
    """Group codes of sessions and items (computed side by side: numpy and pandas release the GIL)."""
    with ThreadPoolExecutor(2) as pool:
        items = pool.submit(group_codes, clicks['item'])
        clicks['s_code'] = group_codes(clicks['session'])
        clicks['i_code'] = items.result()
    return clicks['s_code'], clicks['i_code']


def group_size(codes, mask):
    """Number of masked rows in each row's group, broadcast back to the rows."""
    return np.bincount(codes[mask], minlength=codes.max() + 1)[codes]


NO_CLICK_MAX = np.iinfo(np.int64).min      # per_group's value for a group without masked rows
NO_CLICK_MIN = np.iinfo(np.int64).max


def per_group(reduce, codes, values, mask):
    """One reduced value (np.maximum or np.minimum) of the int64 values per group code; a group without
    masked rows gets NO_CLICK_MAX or NO_CLICK_MIN, the identity of the reduction."""
    out = np.full(codes.max() + 1, NO_CLICK_MAX if reduce is np.maximum else NO_CLICK_MIN, dtype=np.int64)
    reduce.at(out, codes[mask], values[mask])       # same dtypes: numpy's fast path
    return out


def split_by_session_end(s_codes, i_codes, end, mask, item_count, horizon):
    """Spec A4-A5 on the rows of `mask`: sessions ending before (last click - horizon) train, the rest test.

    end: each session's last click; item_count: clicks per item within mask. Test clicks on items
    absent from train are dropped, then test sessions left shorter than 2. Returns (train mask,
    test mask, clicks per item within train, `end` of the train sessions only, NO_CLICK_MAX elsewhere), the last
    two being what a further split of the train set needs. Only the (small) test side is row by row.
    """
    session_in_train = end < end.max() - horizon       # sessions without clicks in mask: never rows of mask
    in_train = session_in_train[s_codes]
    train = mask & in_train
    test_rows = np.flatnonzero(mask & ~in_train)
    train_count = item_count - np.bincount(i_codes[test_rows], minlength=len(item_count))
    test = rows_to_mask(refilter(s_codes, i_codes, test_rows, train_count > 0), len(mask))
    return train, test, train_count, np.where(session_in_train, end, NO_CLICK_MAX)


def refilter(s_codes, i_codes, rows, known_item):
    """Spec A5 on a few rows: drop clicks on items not `known_item`, then sessions left shorter than 2."""
    rows = rows[known_item[i_codes[rows]]]
    _, session, size = np.unique(s_codes[rows], return_inverse=True, return_counts=True)
    return rows[size[session] >= 2]


def rows_to_mask(rows, n):
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    return mask


def keep_recent_sessions(s_codes, session_ids, time, mask, fraction):
    """Datasets-spec J2.7 on the sessions of mask, ordered by last click then session id: of their training
    prefixes (a session of n clicks owns n - 1) the last floor(P / fraction) are kept, and as sessions every
    session from the one owning the first kept prefix on. (Before issue #21 this kept the last
    floor(n / fraction) sessions, a fraction of sessions rather than of prefixes.)"""
    end = per_group(np.maximum, s_codes, time, mask)
    ids = np.zeros(len(end), dtype=session_ids.dtype)
    ids[s_codes] = session_ids
    present = np.flatnonzero(end != NO_CLICK_MAX)
    order = present[np.lexsort((ids[present], end[present]))]
    prefixes = np.bincount(s_codes[mask], minlength=len(end))[order] - 1
    total = int(prefixes.sum())
    if total // fraction == 0:
        raise InputError(f'--recent_fraction {fraction}: {total} training prefixes leave none to keep')
    owner = np.searchsorted(np.cumsum(prefixes), total - total // fraction, side='right')
    keep = np.zeros(len(end), dtype=bool)
    keep[order[owner:]] = True
    return mask & keep[s_codes]


# ---------------------------------------------------------------- wrong dates

def late_outliers(time, per_day):
    """Row mask of the clicks with wrong, far-future dates: those after the last gap of more than
    OUTLIER_GAP_DAYS days between two clicks (in calendar days of the data) when they are fewer than half
    of all clicks, and any click more than FAR_DAYS after the first. Every split window is measured back
    from the last click, so one click dated 2999 would leave the test set with that click's session alone.
    None when there are none (one pass over the days, a bincount of at most FAR_DAYS + 1 bins)."""
    day = time // per_day
    day -= day.min()                                     # in place: days since the first click's day
    far = day > FAR_DAYS if day.max() > FAR_DAYS else None
    used = np.flatnonzero(np.bincount(day if far is None else day[~far]))
    gaps = np.flatnonzero(np.diff(used) > OUTLIER_GAP_DAYS)
    late = far if far is not None else np.zeros(len(day), dtype=bool)
    if len(gaps):
        after = day >= used[gaps[-1] + 1]
        if 2 * np.count_nonzero(after) < len(day):
            late = after | late
    return late if late.any() else None


def handle_time_outliers(clicks, time, per_day, policy, describe, log):
    """Apply --time_outliers (error | drop | keep) to the late outliers of `time`; returns the clicks (without
    them for drop). describe(rows) names a few rows (file line, session, item, date) for the messages."""
    late = late_outliers(time, per_day)
    if late is None:
        return clicks
    rows = np.flatnonzero(late)
    before = time[~late].max() if (~late).any() else time.min()
    what = (f'{len(rows):,} click(s) dated after a gap of more than {OUTLIER_GAP_DAYS} days following the '
            f'other {len(time) - len(rows):,} (last of those {date_text(before, per_day)}): {describe(rows[:3])}'
            + (', ...' if len(rows) > 3 else ''))
    if policy == 'error':
        raise InputError(f'{what}; every split window is measured back from the last click, so these would '
                         f'be the test set. Fix their dates, or pass --time_outliers drop (or keep)')
    log(f'warning: {what}; ' + ('dropped (--time_outliers drop)' if policy == 'drop' else
                                'kept as they are (--time_outliers keep)'))
    if policy == 'keep':
        return clicks
    n = len(time)
    return {k: v[~late] if isinstance(v, np.ndarray) and v.shape[:1] == (n,) else v for k, v in clicks.items()}


def date_text(value, per_day):
    """A timestamp of the data (units of 1 / per_day days) as a UTC date and time."""
    seconds = int(value) * DAY // per_day
    return str(np.datetime64(seconds, 's')).replace('T', ' ')


def click_descriptions(clicks, time, per_day, first_line=None):
    """describe() for handle_time_outliers: 'line 7: session 3, item 214, 2999-01-01 00:00:00' for rows."""
    labels = clicks.get('item_labels')

    def describe(rows):
        return '; '.join((f'line {r + first_line}: ' if first_line is not None else '')
                         + f'session {clicks["session"][r]}, item '
                         + (str(labels[int(clicks['item'][r])]) if labels is not None else str(clicks['item'][r]))
                         + f', {date_text(time[r], per_day)}' for r in rows)
    return describe


def span_line(time, mask, per_day):
    """The dates a set covers, for the log."""
    if not mask.any():
        return '\n\tSpan: (empty)'
    values = time[mask]
    return (f'\n\tSpan: {date_text(values.min(), per_day)} - {date_text(values.max(), per_day)} UTC')


# ---------------------------------------------------------------- the two rule sets: spec A, J1

def rsc15(clicks, test_days=1, recent_fraction=None):
    """Spec A3-A6 on clicks in file order. Returns {set name: boolean row mask over the clicks}."""
    s_codes, i_codes = session_and_item_codes(clicks)
    n_items = i_codes.max() + 1
    time = clicks['time_ms']
    keep = (np.bincount(s_codes) > 1)[s_codes]                                   # A3.1
    keep &= (np.bincount(i_codes[keep], minlength=n_items) >= 5)[i_codes]        # A3.2
    keep &= group_size(s_codes, keep) >= 2                                       # A3.3
    if not keep.any():
        raise InputError('nothing is left after filtering (sessions of >= 2 clicks on items with >= 5 clicks)')
    end = per_group(np.maximum, s_codes, time, keep)    # last click per session (NO_CLICK_MAX: filtered out)
    horizon = DAY * 1000 * test_days
    item_count = np.bincount(i_codes[keep], minlength=n_items)
    train_full, test, train_count, train_end = split_by_session_end(s_codes, i_codes, end, keep, item_count,
                                                                    horizon)
    if not train_full.any():
        raise InputError(f'no session ends more than {test_days} day(s) before the last click: train set would be empty')
    train_tr, valid, _, _ = split_by_session_end(s_codes, i_codes, train_end, train_full, train_count, horizon)
    if recent_fraction:
        train_full = keep_recent_sessions(s_codes, clicks['session'], time, train_full, recent_fraction)
        train_tr = keep_recent_sessions(s_codes, clicks['session'], time, train_tr, recent_fraction)
        test = refilter_against(s_codes, i_codes, test, train_full)
        valid = refilter_against(s_codes, i_codes, valid, train_tr)
    return {'train_full': train_full, 'test': test, 'train_tr': train_tr, 'train_valid': valid}


def refilter_against(s_codes, i_codes, test, train):
    """Spec A5 against a reduced train set (row masks in, row mask out)."""
    known = np.bincount(i_codes[train], minlength=i_codes.max() + 1) > 0
    return rows_to_mask(refilter(s_codes, i_codes, np.flatnonzero(test), known), len(test))


def sort_for_yoochoose(clicks):
    """Spec A10's order: sort the clicks by (session, time, item), time in integer UTC seconds."""
    seconds = clicks['time_ms'] // 1000
    order = np.lexsort((clicks['item'], seconds, clicks['session']))
    sorted_clicks = {key: values[order] for key, values in clicks.items()}
    sorted_clicks['time'] = seconds[order]
    return sorted_clicks


def cmp_sets(clicks, t_day, t_split=None, dedup=True, recent_fraction=None):
    """Datasets-spec J1 steps 4-7 (spec A10 for Yoochoose) on events sorted by (session, time, item).

    t_day and t_split are in the unit of clicks['time']; t_split None = the last timestamp after filtering.
    dedup=False skips step 4 (custom --dedup none). Returns {set name: boolean row mask}, 'full' being
    the events left by steps 4-5.
    """
    time = clicks['time']
    s_codes, i_codes = session_and_item_codes(clicks)
    keep = np.ones(len(time), dtype=bool)
    if dedup:                                                                    # step 4
        keep[1:] = ~((s_codes[1:] == s_codes[:-1]) & (i_codes[1:] == i_codes[:-1]))
    while True:                                                                  # step 5
        before = keep.sum()
        keep &= group_size(s_codes, keep) > 1
        keep &= np.bincount(i_codes[keep], minlength=i_codes.max() + 1)[i_codes] >= 5
        if keep.sum() == before:
            break
    if not keep.any():
        raise InputError('nothing is left after filtering (sessions of >= 2 events on items with >= 5 events)')
    if t_split is None:
        t_split = time[keep].max()
    start = per_group(np.minimum, s_codes, time, keep)[s_codes]
    full = keep
    test = keep & (start >= t_split - t_day)                                     # step 6
    train_full = keep & (time < t_split - t_day)
    train_full &= group_size(s_codes, train_full) > 1
    train_tr = train_full & (time < t_split - 2 * t_day)                         # step 7
    train_tr &= group_size(s_codes, train_tr) > 1
    valid = train_full & (start >= t_split - 2 * t_day)
    if not train_full.any():
        raise InputError('no session of two events lies before the test window (t_split - t_day): '
                         'train set would be empty')
    if not test.any():
        raise InputError('no session starts in the test window (at or after t_split - t_day): test set would be empty')
    if recent_fraction:
        train_full = keep_recent_sessions(s_codes, clicks['session'], time, train_full, recent_fraction)
        train_tr = keep_recent_sessions(s_codes, clicks['session'], time, train_tr, recent_fraction)
    return {'full': full, 'test': test, 'train_full': train_full, 'train_tr': train_tr, 'train_valid': valid}


# ---------------------------------------------------------------- output

def set_stats(clicks, mask):
    """Events, sessions and items of one set (counted on the group codes the variants left in clicks)."""
    return {'events': int(mask.sum()),
            'sessions': int(np.count_nonzero(np.bincount(clicks['s_code'][mask]))),
            'items': int(np.count_nonzero(np.bincount(clicks['i_code'][mask])))}


def write_sets(paths_and_masks, clicks, pool, format_time=None, chunk=1_000_000):
    """Write one TAB file (header SessionId ItemId Time, rows in input order) per (path, row mask).

    Formatting numbers is the main cost, so a row is formatted once for the big files: a mask holding at
    least half the rows of a larger "root" mask that contains it is grouped under that root (train_full
    holds train_tr; yoochoose's full holds train_full and train_tr), the root's rows are formatted by
    pyarrow chunk by chunk, two chunks at a time on the thread pool, and every file of the group takes
    its lines out of the same formatted chunk. Small sets (test, validation) are formatted on their own,
    which is cheaper than finding their lines in every chunk of a root. format_time turns a chunk of
    clicks['time'] into what is written.
    """
    groups = []     # [(root mask, [(file, mask), ...])], the root's own file first
    files = [(OutputFile(path), mask) for path, mask in paths_and_masks]
    try:
        for f, mask in sorted(files, key=lambda fm: -int(fm[1].sum())):
            f.write(b'SessionId\tItemId\tTime\n')
            size = np.count_nonzero(mask)
            root = next((g for g in groups if 2 * size >= np.count_nonzero(g[0]) and not (mask & ~g[0]).any()),
                        None)
            if root is None:
                groups.append((mask, [(f, mask)]))
            else:
                root[1].append((f, mask))
        for root, members in groups:
            rows = np.flatnonzero(root)
            parts = [rows[lo:lo + chunk] for lo in range(0, len(rows), chunk)]
            root_file = members[0][0]
            for part, formatted in zip(parts, pool.map(lambda p: format_rows(clicks, p, format_time), parts)):
                at = root_file.size                 # where this chunk starts in the root's file
                root_file.write(formatted)
                text = np.frombuffer(formatted, dtype=np.uint8)
                line_start = None
                for f, mask in members[1:]:
                    keep = mask[part]
                    if keep.all():
                        f.copy_from(root_file, at, text)
                        continue
                    if line_start is None:
                        line_start = np.r_[0, np.flatnonzero(text == 10) + 1]
                    for start, piece in cut_lines(text, line_start, keep):
                        if start is None:
                            f.write(piece)
                        else:
                            f.copy_from(root_file, at + start, piece)
    finally:
        for f, _ in files:
            f.close()


class OutputFile:
    """An output file written through its descriptor; `copy_from` appends bytes that another output
    file already holds, copied inside the kernel (os.copy_file_range, Linux): for train_tr, a 1 GB
    near-copy of train_full, that halves the cost of writing it. Where the kernel or the file system
    cannot, the caller's in-memory copy of the bytes is written instead."""

    kernel_copy = hasattr(os, 'copy_file_range')

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.size = 0

    def write(self, data):
        view = memoryview(data).cast('B')
        while len(view):
            written = os.write(self.fd, view)
            view = view[written:]
        self.size += len(data)

    def copy_from(self, source, offset, data):
        """Append len(data) bytes of `source` from `offset` (they equal `data`)."""
        done = 0
        while self.kernel_copy and done < len(data):
            try:
                copied = os.copy_file_range(source.fd, self.fd, len(data) - done, offset + done)
            except OSError as err:
                if err.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF):
                    raise
                copied = 0
            if copied == 0:                          # not supported here: write from memory from now on
                self.kernel_copy = False
                break
            done += copied
        self.size += done
        if done < len(data):
            self.write(data[done:])

    def close(self):
        os.close(self.fd)


def format_rows(clicks, rows, format_time):
    """TAB lines `SessionId ItemId Time` of the given rows, formatted by pyarrow."""
    time = clicks['time'][rows]
    sink = pa.BufferOutputStream()
    labels = clicks.get('item_labels')
    item = narrow(clicks['item'][rows]) if labels is None else labels.take(pa.array(clicks['item'][rows]))
    pacsv.write_csv(pa.table({'SessionId': narrow(clicks['session'][rows]), 'ItemId': item,
                              'Time': format_time(time) if format_time else time}),
                    sink, pacsv.WriteOptions(include_header=False, delimiter='\t', batch_size=1 << 16,
                                             quoting_style='none'))
    return sink.getvalue()


def cut_lines(text, line_start, keep):
    """The kept lines as (offset in text, bytes) for each run of kept lines, or, when the runs are many,
    one byte-masked copy (None, bytes)."""
    edges = np.flatnonzero(np.diff(np.r_[False, keep, False])).reshape(-1, 2)   # runs [start, stop)
    if len(edges) <= MAX_RUNS:
        return [(line_start[a], text[line_start[a]:line_start[b]]) for a, b in edges]
    return [(None, text[np.repeat(keep, np.diff(line_start))])]


def narrow(values):
    """int32 when the values fit: pyarrow formats int32 about 40% faster than int64."""
    if len(values) and -2 ** 31 <= values.min() and values.max() < 2 ** 31:
        return values.astype(np.int32)
    return values


FOUR_DIGITS = np.frombuffer(''.join(f'{i:04d}' for i in range(10_000)).encode(), dtype=np.uint32)  # '0000'..'9999'


def milliseconds_as_seconds(ms):
    """Integer milliseconds -> strings 'S.mmm' (seconds with exactly 3 decimals), built in numpy.

    Four digits at a time: each group of 4 decimal digits is looked up as one uint32 holding its 4 ASCII
    characters, which makes this four times cheaper than formatting the float seconds. Every string has
    the width of the largest value (smaller ones get leading zeros, which any float parser accepts).
    Negative times fall back to float formatting.
    """
    if len(ms) == 0 or ms.min() < 0:
        return ms / 1000.0
    seconds, millis = np.divmod(ms, 1000)
    width = len(str(int(seconds.max())))
    groups = -(-width // 4)
    packed = np.empty((len(ms), groups + 1), dtype=np.uint32)      # seconds in 4-digit groups, then '0mmm'
    packed[:, groups] = FOUR_DIGITS[millis]
    for g in range(groups - 1, -1, -1):
        seconds, rest = np.divmod(seconds, 10_000)
        packed[:, g] = FOUR_DIGITS[rest]
    chars = packed.view(np.uint8)
    text = np.empty((len(ms), width + 4), dtype=np.uint8)
    text[:, :width] = chars[:, 4 * groups - width:4 * groups]
    text[:, width] = ord('.')
    text[:, width + 1:] = chars[:, 4 * groups + 1:]
    offsets = np.arange(0, text.size + 1, width + 4, dtype=np.int64)
    return pa.LargeStringArray.from_buffers(len(ms), pa.py_buffer(offsets), pa.py_buffer(text))


DATASET_NAMES = ('rsc15', 'yoochoose', 'diginetica', 'retailrocket', 'rees46', 'coveo', 'custom', 'srgnn_files')
DEFAULT_INPUT = {'rsc15': ['data/yoochoose-clicks.dat'], 'yoochoose': ['data/yoochoose-clicks.dat'],
                 **{name: [os.path.join('data', f) for f in spec['files']] for name, spec in DATASETS.items()}}


def preprocess(input_path, output_dir, variant='rsc15', test_days=None, recent_fraction=None, test_input=None,
               log=print, custom=None, time_outliers='error'):
    """Run one dataset's rules end to end; returns {file name: stats}. All outputs appear together or not at all.

    variant: a name of DATASET_NAMES; input_path: the raw file or a list of them (Rees46: both months);
    test_days: t_day in days (default: the dataset's); custom: read_custom's keyword arguments plus
    `name`, `rules` ('cmp' or 'rsc15') and `dedup` (True/False) for variant 'custom'; time_outliers: what
    to do with clicks dated far after all others (late_outliers): 'error', 'drop' or 'keep'.
    """
    if variant == 'rsc15':
        return preprocess_rsc15(input_path, output_dir, 1 if test_days is None else test_days, recent_fraction, log,
                                time_outliers)
    paths = [input_path] if isinstance(input_path, str) else list(input_path)
    custom = dict(custom or {})
    name, rules, dedup = custom.pop('name', variant), custom.pop('rules', 'cmp'), custom.pop('dedup', True)
    t_split = None
    if variant == 'yoochoose':
        if len(paths) != 1:
            raise InputError(f'--input: yoochoose takes one clicks file (the test file beside it or --test_input), '
                             f'got {len(paths)}')
        clicks = read_yoochoose(paths[0], test_input, log)
        days = 1 if test_days is None else test_days
    elif variant == 'custom':
        if len(paths) != 1:
            raise InputError(f'--input: custom takes one file, got {len(paths)}')
        clicks = read_custom(paths, **custom)
        days = 1 if test_days is None else test_days
    else:
        spec = DATASETS[variant]
        if len(paths) != len(spec['files']):
            raise InputError(f'--input: {variant} takes {len(spec["files"])} file(s) ({" ".join(spec["files"])}), '
                             f'got {len(paths)}')
        clicks = READERS[variant](paths)
        days = spec['t_day'] if test_days is None else test_days
        t_split = spec['t_split']
    scale = clicks['scale']
    clicks = handle_time_outliers(clicks, clicks['time'], DAY * scale, time_outliers,
                                  click_descriptions(clicks, clicks['time'], DAY * scale), log)
    prefix = f'{name}_' + (f'1_{recent_fraction}_' if recent_fraction else '')
    if rules == 'rsc15':
        clicks['time_ms'] = clicks['time'] * (1000 // scale)
        clicks['time'] = clicks['time_ms']
        sets, format_time = rsc15(clicks, days, recent_fraction), milliseconds_as_seconds
    else:
        sets = cmp_sets(clicks, round(DAY * scale * days), t_split, dedup, recent_fraction)
        format_time = milliseconds_as_seconds if scale == 1000 else None
    filtered = set_stats(clicks, sets.pop('full')) if 'full' in sets else None
    with ThreadPoolExecutor(2) as pool:
        counts = pool.map(lambda mask: set_stats(clicks, mask), sets.values())
        stats = {prefix + part + '.txt': c for part, c in zip(sets, counts)}
    per_day = DAY * (1000 if rules == 'rsc15' else scale)
    spans = [span_line(clicks['time'], mask, per_day) for mask in sets.values()]
    if filtered:
        log(f'after filtering\n\tEvents: {filtered["events"]}\n\tSessions: {filtered["sessions"]}'
            f'\n\tItems: {filtered["items"]}')
    for (file_name, c), span in zip(stats.items(), spans):
        log(f'{file_name}\n\tEvents: {c["events"]}\n\tSessions: {c["sessions"]}\n\tItems: {c["items"]}{span}')
    stats_doc = {'input': [os.path.abspath(p) for p in paths], 'dataset': variant, 'rules': rules,
                 'test_days': days, 't_split': None if t_split is None else t_split / scale,
                 'recent_fraction': recent_fraction, 'after_filtering': filtered, 'sets': stats}
    if variant == 'custom':
        stats_doc['options'] = dict(custom, dedup='consecutive' if dedup else 'none')
    return write_outputs(output_dir, prefix, sets, stats, stats_doc, clicks, format_time, log)


def read_yoochoose(path, test_input, log):
    """yoochoose-clicks.dat (+ yoochoose-test.dat beside it or given), sorted as spec A10 says."""
    clicks = read_clicks(path)
    if test_input is None:
        candidate = os.path.join(os.path.dirname(path) or '.', 'yoochoose-test.dat')
        test_input = candidate if os.path.isfile(candidate) else None
        if test_input is None:
            log(f'note: no yoochoose-test.dat beside {path}; using the clicks file alone')
    if test_input is not None:
        extra = read_clicks(test_input)
        clicks = {k: np.concatenate([clicks[k], extra[k]]) for k in clicks}
    clicks = sort_for_yoochoose(clicks)
    clicks['scale'] = 1
    return clicks


def preprocess_rsc15(input_path, output_dir, test_days, recent_fraction, log, time_outliers='error'):
    """Spec A (the official GRU4Rec example) end to end."""
    if not isinstance(input_path, str):
        if len(input_path) != 1:
            raise InputError(f'--input: rsc15 takes one clicks file, got {len(input_path)}')
        input_path, = input_path
    clicks = read_clicks(input_path)
    clicks = handle_time_outliers(clicks, clicks['time_ms'], DAY * 1000, time_outliers,
                                  click_descriptions(clicks, clicks['time_ms'], DAY * 1000, first_line=1), log)
    clicks['time'] = clicks['time_ms']
    prefix = 'rsc15_' + (f'1_{recent_fraction}_' if recent_fraction else '')
    sets = rsc15(clicks, test_days, recent_fraction)
    with ThreadPoolExecutor(2) as pool:     # the masked gathers release the GIL
        counts = pool.map(lambda mask: set_stats(clicks, mask), sets.values())
        stats = {prefix + name + '.txt': c for name, c in zip(sets, counts)}
    for (file_name, counts), mask in zip(stats.items(), sets.values()):
        log(f'{file_name}\n\tEvents: {counts["events"]}\n\tSessions: {counts["sessions"]}\n\tItems: {counts["items"]}'
            + span_line(clicks['time_ms'], mask, DAY * 1000))
    stats_doc = {'input': os.path.abspath(input_path), 'variant': 'rsc15', 'test_days': test_days,
                 'recent_fraction': recent_fraction, 'sets': stats}
    return write_outputs(output_dir, prefix, sets, stats, stats_doc, clicks, milliseconds_as_seconds, log)


def write_outputs(output_dir, prefix, sets, stats, stats_doc, clicks, format_time, log):
    """The four split files and <prefix>stats.json, together or not at all."""
    paths = [(os.path.join(output_dir, prefix + name + '.txt'), mask) for name, mask in sets.items()]
    stats_path = os.path.join(output_dir, prefix + 'stats.json')
    with ThreadPoolExecutor(2) as pool:
        write_atomically([path for path, _ in paths] + [stats_path], lambda tmp: (
            write_sets([(tmp[path], mask) for path, mask in paths], clicks, pool, format_time),
            open(tmp[stats_path], 'w').write(json.dumps(stats_doc, indent=2) + '\n')))
    log(f'wrote {len(paths) + 1} files to {output_dir}')
    return stats


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split('\n')[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog='See the module docstrings of preprocessing.py and datasets.py for the exact rules.')
    p.add_argument('--dataset', choices=DATASET_NAMES, default=None,
                   help='which raw data and rules (default: rsc15)')
    p.add_argument('--input', nargs='+', default=None,
                   help='raw file(s) as distributed (default: data/<the file names of the dataset>)')
    p.add_argument('--output_dir', default='data/', help='where the split files go (default: %(default)s)')
    p.add_argument('--variant', choices=['rsc15', 'yoochoose'], default=None, help='old name of --dataset')
    p.add_argument('--test_days', type=float, default=None,
                   help="t_day: length of the test (and validation) window in days (default: the dataset's)")
    p.add_argument('--recent_fraction', type=int, default=None, metavar='N',
                   help='keep only the most recent 1/N of the training data (e.g. 64 or 4); with --protocol '
                        'srgnn: of the training prefixes (J2.7), otherwise of the training sessions')
    p.add_argument('--protocol', choices=['srgnn'], default=None,
                   help='srgnn: the NARM / STAMP / SR-GNN protocol (datasets-spec J2; --dataset yoochoose or '
                        'diginetica) instead of the dataset\'s default rules')
    p.add_argument('--time_outliers', choices=['error', 'drop', 'keep'], default='error',
                   help='clicks dated more than %d days after all the others (fewer than half of the data, or over '
                        '100 years after the first click): stop with an error naming them (default), drop them, or '
                        'keep them; every split window is measured back from the last click' % OUTLIER_GAP_DAYS)
    p.add_argument('--test_input', default=None, help='yoochoose-test.dat for the yoochoose dataset '
                                                      '(default: beside --input when present)')
    c = p.add_argument_group('--dataset custom: a log of your own (CSV / TSV / .parquet); --dataset srgnn_files: '
                             '--input DIR of the circulated SR-GNN pickles')
    c.add_argument('--name', default=None, help='prefix of the output files (default: custom, or the name of '
                   'the srgnn_files folder)')
    c.add_argument('--sep', default=None, help='field separator (default: sniffed among , TAB ;)')
    c.add_argument('--session_key', default=None, help='session id column (default SessionId unless --user_key)')
    c.add_argument('--user_key', default=None, help='user id column: histories cut into sessions by --session_gap')
    c.add_argument('--session_gap', type=float, default=SESSION_GAP,
                   help='new session when the gap to the previous event is > this many seconds (default: 3600)')
    c.add_argument('--item_key', default='ItemId', help='item id column (default: %(default)s)')
    c.add_argument('--time_key', default='Time', help='time column (default: %(default)s)')
    c.add_argument('--time_unit', choices=['s', 'ms', 'iso'], default='s',
                   help='seconds, milliseconds or ISO-8601 strings (default: %(default)s)')
    c.add_argument('--event_key', default=None, help='event type column, filtered by --events (applied first)')
    c.add_argument('--events', default=None, help='comma-separated event types to keep, e.g. view,click')
    c.add_argument('--dedup', choices=['consecutive', 'none'], default='consecutive',
                   help='remove consecutive repeats of an item in a session (default: %(default)s)')
    c.add_argument('--rules', choices=['cmp', 'rsc15'], default='cmp',
                   help="cmp: datasets-spec J1 steps 3-7 (default); rsc15: the official RSC15 example's steps")
    args = p.parse_args(argv)
    if args.variant and args.dataset and args.variant != args.dataset:
        p.error(f'--variant {args.variant} contradicts --dataset {args.dataset} (--variant is its old name)')
    args.dataset = args.dataset or args.variant or 'rsc15'
    if args.test_days is not None and args.test_days <= 0:
        p.error(f'--test_days must be positive, got {args.test_days}')
    if args.recent_fraction is not None and args.recent_fraction < 1:
        p.error(f'--recent_fraction must be a positive integer, got {args.recent_fraction}')
    if args.protocol and args.dataset not in ('yoochoose', 'diginetica'):
        p.error(f'--protocol srgnn is for --dataset yoochoose or diginetica, not {args.dataset}')
    if args.protocol and args.test_days is not None:
        p.error('--test_days does not apply to --protocol srgnn (its windows are fixed: 1 day yoochoose, 7 diginetica)')
    if args.dataset == 'srgnn_files':
        if not args.input or len(args.input) != 1 or not os.path.isdir(args.input[0]):
            p.error('--dataset srgnn_files needs --input DIR (the folder holding all_train_seq.txt and test.txt)')
        if args.recent_fraction or args.test_days is not None or args.test_input:
            p.error('--dataset srgnn_files converts the files as they are (no --recent_fraction, --test_days, '
                    '--test_input)')
        args.name = args.name or os.path.basename(os.path.normpath(args.input[0]))
        if os.sep in args.name:
            p.error(f'--name must be a plain file-name prefix, got {args.name!r}')
        return args
    if args.name is not None and args.dataset != 'custom':
        p.error('--name is for --dataset custom or srgnn_files')
    args.name = args.name or 'custom'
    given = [f for f in ('sep', 'session_key', 'user_key', 'event_key', 'events')
             if getattr(args, f) is not None] + [f for f, default in (
                 ('name', 'custom'), ('session_gap', SESSION_GAP), ('item_key', 'ItemId'), ('time_key', 'Time'),
                 ('time_unit', 's'), ('dedup', 'consecutive'), ('rules', 'cmp')) if getattr(args, f) != default]
    if args.dataset != 'custom':
        if given:
            p.error(f'--{given[0]} is for --dataset custom (the other datasets have fixed columns and rules)')
        if args.test_input and args.dataset != 'yoochoose':
            p.error('--test_input is for --dataset yoochoose')
        return args
    if args.input is None:
        p.error('--dataset custom needs --input FILE')
    if args.session_key and args.user_key:
        p.error('give --session_key or --user_key, not both')
    if args.session_gap <= 0:
        p.error(f'--session_gap must be > 0 seconds, got {args.session_gap:g}')
    if (args.event_key is None) != (args.events is None):
        p.error('--event_key and --events go together (the column and the event types to keep)')
    if args.sep is not None:
        args.sep = {'tab': '\t', '\\t': '\t'}.get(args.sep.lower(), args.sep)
        if len(args.sep) != 1:
            p.error(f'--sep must be one character (or "tab"), got {args.sep!r}')
    if not args.name or os.sep in args.name:
        p.error(f'--name must be a plain file-name prefix, got {args.name!r}')
    return args


def custom_options(args):
    """read_custom's keyword arguments (and the rules) from the command line."""
    return dict(session_key=args.session_key, user_key=args.user_key, item_key=args.item_key,
                time_key=args.time_key, time_unit=args.time_unit, sep=args.sep, event_key=args.event_key,
                events_kept=args.events.split(',') if args.events else None, session_gap=args.session_gap,
                name=args.name, rules=args.rules, dedup=args.dedup == 'consecutive')


def read_srg_clicks(dataset, paths):
    """The raw clicks J2 needs, in file order: session, item, date (s) and the in-session order key."""
    if len(paths) != 1:
        raise InputError(f'--input: --protocol srgnn takes one raw file, got {len(paths)}')
    if dataset == 'yoochoose':
        clicks = read_clicks(paths[0])
        return {'session': clicks['session'], 'item': clicks['item'], 'date': clicks['time_ms'] // 1000,
                'order_key': np.zeros(len(clicks['item']), dtype=np.int64)}
    from datasets import DIGINETICA_SPELLINGS, read_csv
    table = read_csv(paths[0], ['sessionId', 'itemId', 'timeframe', 'eventdate'], ';', renamed=DIGINETICA_SPELLINGS,
                     types={'sessionId': pa.int64(), 'itemId': pa.int64(), 'timeframe': pa.int64(),
                            'eventdate': pa.date32()},
                     expected='sessionId;userId;itemId;timeframe;eventdate (or session_id;user_id;item_id;...)')
    if any(table[c].null_count for c in table.column_names):
        raise InputError(f'{paths[0]}: empty sessionId, itemId, timeframe or eventdate field')
    return {'session': table['sessionId'].to_numpy(), 'item': table['itemId'].to_numpy(),
            'date': table['eventdate'].cast(pa.int32()).to_numpy().astype(np.int64) * DAY,
            'order_key': table['timeframe'].to_numpy()}


def main(argv=None):
    args = parse_args(argv)
    if args.dataset == 'srgnn_files':
        return srgnn.convert_files(args.input[0], args.output_dir, args.name)
    if args.protocol == 'srgnn':
        paths = args.input or DEFAULT_INPUT[args.dataset]
        clicks = read_srg_clicks(args.dataset, paths)
        clicks = handle_time_outliers(clicks, clicks['date'], DAY, args.time_outliers, click_descriptions(
            clicks, clicks['date'], DAY, first_line=1 if args.dataset == 'yoochoose' else 2), print)
        return srgnn.preprocess_raw(args.dataset, clicks, args.output_dir, args.recent_fraction, paths)
    paths = args.input or DEFAULT_INPUT.get(args.dataset)
    preprocess(paths, args.output_dir, args.dataset, args.test_days, args.recent_fraction, args.test_input,
               custom=custom_options(args) if args.dataset == 'custom' else None, time_outliers=args.time_outliers)


if __name__ == '__main__':
    run_cli(main)
