"""Readers of the field's session datasets and of a user's own log (datasets-spec J1, J3).

A reader turns the raw file(s) as distributed into events ready for J1's shared steps 3-7
(preprocessing.cmp_sets): a dict of numpy arrays `session` (int64), `item` (int64 ids, or codes into
`item_labels` when the ids are strings), `time` (int64, in units of 1/`scale` s: 1 = seconds, 1000 =
milliseconds), sorted by (session, time, item). What differs between datasets is only this table:

| dataset | columns | event filter (step 1) | sessions (step 2) | time | t_split | t_day |
|---|---|---|---|---|---|---|
| yoochoose | session,timestamp,item,category (no header) | - | given | ISO -> integer s | last | 1 |
| diginetica | sessionId;userId;itemId;timeframe;eventdate | - | given | ms: earliest eventdate of the session + timeframe | last | 7 |
| retailrocket | timestamp,visitorid,event,itemid,transactionid | event == view | visitorid, gap on all events | ms | 1442545200000 ms | 7 |
| rees46 | event_time,event_type,product_id,...,user_id,user_session | event_type == view | user_id, gap on views | `2019-10-01 00:00:00 UTC` -> s | 1575158400 s | 1 |
| coveo | session_id_hash,...,product_action,product_skus_hash,server_timestamp_epoch_ms | product_action == detail | session_id_hash, gap on all events | ms | last | 1 |

Sessions cut from user histories (J1.2): sort by (user, time, item); a new session starts where the user
changes or the gap to the user's previous event is strictly greater than 3600 s. Item ids keep their
labels (Coveo's are hash strings). Everything is vectorised (pyarrow / numpy); no row-by-row Python.
"""
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from cli import InputError

DAY = 86400
SESSION_GAP = 3600
SORT_KEY_BITS = 62      # sort_order combines its keys into one int64 while their code ranges fit

# dataset -> the columns its reader needs (as named in the raw file), the event kept, t_split, t_day in days
DATASETS = {
    'diginetica': dict(columns=['sessionId', 'itemId', 'timeframe', 'eventdate'], sep=';', t_split=None, t_day=7,
                       files=['train-item-views.csv']),
    'retailrocket': dict(columns=['timestamp', 'visitorid', 'event', 'itemid'], sep=',', event=('event', ['view']),
                         t_split=1442545200000, t_day=7, files=['events.csv']),
    'rees46': dict(columns=['event_time', 'event_type', 'product_id', 'user_id'], sep=',',
                   event=('event_type', ['view']), t_split=1575158400, t_day=1, files=['2019-Oct.csv', '2019-Nov.csv']),
    'coveo': dict(columns=['session_id_hash', 'product_action', 'product_skus_hash', 'server_timestamp_epoch_ms'],
                  sep=',', event=('product_action', ['detail']), t_split=None, t_day=1,
                  files=['release_10_23_2020.csv']),
}
DIGINETICA_SPELLINGS = {'session_id': 'sessionId', 'user_id': 'userId', 'item_id': 'itemId'}


# ---------------------------------------------------------------- reading a table

def check_file(path):
    if not os.path.isfile(path):
        raise InputError(f'{path}: no such file')
    if os.path.getsize(path) == 0:
        raise InputError(f'{path}: the file is empty')


def header_of(path):
    with open(path, 'rb') as f:
        return f.readline().rstrip(b'\r\n').decode('utf-8', errors='replace')


def read_csv(path, columns, sep, types=None, renamed=None, expected=None):
    """The named columns of a CSV file with a header, as a pyarrow table (renamed by `renamed`).

    A header without the columns (a renamed column, another separator) is one error naming the columns
    expected; a value pyarrow cannot convert names the file and pyarrow's reason.
    """
    check_file(path)
    header = header_of(path).split(sep)
    renamed = renamed or {}
    present = [c for c in header if renamed.get(c, c) in columns]
    missing = [c for c in columns if c not in [renamed.get(h, h) for h in header]]
    if missing:
        raise InputError(f'{path}: expected a {sep_name(sep)}-separated header with the columns '
                         f'{expected or ", ".join(columns)}; missing {", ".join(missing)} '
                         f'(header read: {header_of(path)[:120]!r})')
    types = {h: types[renamed.get(h, h)] for h in present if types and renamed.get(h, h) in types}
    try:
        table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=sep),
                               read_options=pacsv.ReadOptions(block_size=1 << 24),
                               convert_options=pacsv.ConvertOptions(include_columns=present, column_types=types))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError) as err:
        raise InputError(f'{path}: cannot be read ({str(err).splitlines()[0]})') from None
    table = table.rename_columns([renamed.get(c, c) for c in table.column_names])
    if table.num_rows == 0:
        raise InputError(f'{path}: the file holds a header but no events')
    return table


def read_parquet(path, columns):
    import pyarrow.parquet as pq
    check_file(path)
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f'{path}: not a readable parquet file ({str(err).splitlines()[0]})') from None
    missing = [c for c in columns if c not in names]
    if missing:
        raise InputError(f'{path}: missing column(s) {", ".join(missing)} (columns: {", ".join(names)})')
    table = pq.read_table(path, columns=columns)
    if table.num_rows == 0:
        raise InputError(f'{path}: the file holds no events')
    return table


def sep_name(sep):
    return {',': 'comma', '\t': 'TAB', ';': 'semicolon'}.get(sep, repr(sep))


def sniff_separator(path, columns):
    """The separator among , TAB ; that splits the header into fields holding every needed column."""
    check_file(path)
    header = header_of(path)
    for sep in (',', '\t', ';'):
        if all(c in header.split(sep) for c in columns):
            return sep
    raise InputError(f'{path}: no separator among comma, TAB, semicolon gives a header with the columns '
                     f'{", ".join(columns)} (header read: {header[:120]!r})')


def keep_events(table, column, kept, path):
    """Step 1: the rows whose `column` is one of `kept` (a boolean numpy mask); none at all is an error.
    A dictionary-encoded column is looked up in its (small) dictionaries, chunk by chunk."""
    values = table[column]
    if pa.types.is_dictionary(values.type):
        parts = []
        for chunk in values.chunks:
            good = pc.is_in(chunk.dictionary.cast(pa.string()), value_set=pa.array(kept, pa.string()))
            good = np.append(good.to_numpy(zero_copy_only=False), False)       # index -1: a null
            parts.append(good[chunk.indices.fill_null(-1).to_numpy()])
        mask = np.concatenate(parts) if parts else np.zeros(0, dtype=bool)
    else:
        kind = values.type if pa.types.is_integer(values.type) else pa.string()
        mask = pc.is_in(values if kind == values.type else values.cast(kind), value_set=pa.array(kept, kind))
        mask = mask.fill_null(False).to_numpy(zero_copy_only=False)
    if not mask.any():
        raise InputError(f'{path}: no event has {column} in {{{", ".join(kept)}}}: nothing to keep')
    return mask


# ---------------------------------------------------------------- ids, times, sessions

def integer_ids(column):
    """(int64 numpy ids, None) for an integer column; (codes, labels) otherwise: codes into the sorted
    distinct labels, so that sorting by code sorts by label. Nulls become the empty label."""
    if pa.types.is_integer(column.type) and column.null_count == 0:
        return column.to_numpy().astype(np.int64, copy=False), None
    strings = pc.fill_null(column.cast(pa.string()), '')
    encoded = pc.dictionary_encode(strings).combine_chunks()
    labels = encoded.dictionary
    rank = np.empty(len(labels), dtype=np.int64)
    order = pc.sort_indices(labels).to_numpy()
    rank[order] = np.arange(len(labels))
    return rank[encoded.indices.to_numpy()], labels.take(pa.array(order))


def ordered_codes(values):
    """Non-negative int64 codes of values, in the values' order (small ranges shifted, wide ones ranked)."""
    low, high = int(values.min()), int(values.max())
    if high - low <= 4 * len(values):
        return values - low, high - low + 1
    import pandas as pd
    codes, uniques = pd.factorize(values, size_hint=1 << 16)
    rank = np.empty(len(uniques), dtype=np.int64)
    rank[np.argsort(uniques)] = np.arange(len(uniques))
    return rank[codes], len(uniques)


def sort_order(*keys):
    """The row order sorting by keys[0], then keys[1], ... (all int64). Equal rows are equal in every key,
    so the sort need not be stable; one combined key when the codes fit in 62 bits, else np.lexsort."""
    combined, span = None, 1
    for key in keys:
        codes, size = ordered_codes(key)
        span *= size
        if span >= 2 ** SORT_KEY_BITS:
            del combined, codes
            return np.lexsort([ordered_codes(k)[0] for k in reversed(keys)])
        if combined is None:
            combined = codes
        else:
            combined *= size
            combined += codes
        del codes
    return np.argsort(combined)


def sessionise(user, time, item, gap, keep=None):
    """J1 step 2 on user histories: sort by (user, time, item); a new session where the user changes or the
    time since the user's previous event is > gap. keep: the rows to keep afterwards (the event filter, when
    the gap is measured on every event). Returns (row order of the kept rows, their session ids 1..n)."""
    order = sort_order(user, time, item)
    u, t = user[order], time[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (u[1:] != u[:-1]) | (t[1:] - t[:-1] > gap)
    session = np.cumsum(new)
    if keep is not None:
        kept = keep[order]
        order, session = order[kept], session[kept]
    return order, renumber(session)


def renumber(sorted_ids):
    """Ids 1..n in order of a sorted id array (sessions emptied by a filter leave no gaps)."""
    if len(sorted_ids) == 0:
        return sorted_ids.astype(np.int64)
    new = np.ones(len(sorted_ids), dtype=bool)
    new[1:] = sorted_ids[1:] != sorted_ids[:-1]
    return np.cumsum(new)


def given_sessions(session, time, item):
    """Step 3's sort for data with session ids: the row order by (session, time, item)."""
    return sort_order(session, time, item)


def iso_to_ms(column, path, first_line=2):
    """ISO-8601 strings (optionally ending in Z, +HH:MM or ' UTC'; no zone = UTC) -> int64 UTC milliseconds.

    The common fixed-width form `YYYY-MM-DD HH:MM:SS[ UTC|Z]` is decoded in numpy from the string bytes,
    chunk by chunk; anything else goes through pyarrow's ISO parser. An unparsable value names its line."""
    if column.null_count:
        bad = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError(f'{path}, line {bad + first_line}: empty time')
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    fast = []
    for chunk in chunks:
        seconds = fixed_width_seconds(chunk)
        if seconds is None:
            break
        fast.append(seconds)
    else:
        return np.concatenate(fast) * 1000 if fast else np.zeros(0, dtype=np.int64)
    del fast
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    text = pc.replace_substring_regex(column, pattern=' ?UTC$', replacement='Z')
    zoned = pc.match_substring_regex(text, r'(Z|[+-]\d\d:?\d\d)$').to_numpy(zero_copy_only=False)
    try:
        if zoned.all():
            parsed = text.cast(pa.timestamp('ms', tz='UTC'))
        elif not zoned.any():
            parsed = text.cast(pa.timestamp('ms'))
        else:
            bad = int(np.flatnonzero(zoned != zoned[0])[0])
            raise InputError(f'{path}, line {bad + first_line}: time {column[bad].as_py()!r} mixes time zones '
                             f'with line {first_line}')
    except pa.ArrowInvalid:
        bad = first_unparsable(text, zoned.all())
        raise InputError(f'{path}, line {bad + first_line}: unparsable time {column[bad].as_py()!r} '
                         f'(expected ISO 8601, e.g. 2019-10-01 00:00:00 or 2014-04-07T10:51:09.277Z)') from None
    return parsed.cast(pa.int64()).to_numpy()


def first_unparsable(text, zoned):
    """Index of the first value pyarrow cannot cast (halving the range: only run after a failed cast)."""
    target = pa.timestamp('ms', tz='UTC') if zoned else pa.timestamp('ms')
    lo, hi = 0, len(text)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            text.slice(lo, mid - lo).cast(target)
            lo = mid
        except pa.ArrowInvalid:
            hi = mid
    return lo


DIGITS = {'year': slice(0, 4), 'month': slice(5, 7), 'day': slice(8, 10), 'hour': slice(11, 13),
          'minute': slice(14, 16), 'second': slice(17, 19)}


def fixed_width_seconds(column, block=1 << 20):
    """UTC seconds of `YYYY-MM-DD[ T]HH:MM:SS` strings all of one width (optionally followed by ' UTC' or
    'Z'), decoded from the bytes in numpy a block of rows at a time; None when the column has another form
    or a bad value."""
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)) or len(column) == 0:
        return None
    offset_type = np.int64 if pa.types.is_large_string(column.type) else np.int32
    offsets = np.frombuffer(column.buffers()[1], dtype=offset_type)[column.offset:column.offset + len(column) + 1]
    width = int(offsets[1] - offsets[0])
    if width not in (19, 20, 23) or not (np.diff(offsets) == width).all():
        return None
    text = np.frombuffer(column.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]].reshape(-1, width)
    tail = np.frombuffer({19: b'', 20: b'Z', 23: b' UTC'}[width], dtype=np.uint8)
    out = np.empty(len(column), dtype=np.int64)
    for lo in range(0, len(column), block):
        part = text[lo:lo + block]
        if not ((part[:, 19:] == tail).all() and (part[:, [4, 7]] == ord('-')).all()
                and (part[:, [13, 16]] == ord(':')).all() and np.isin(part[:, 10], [ord(' '), ord('T')]).all()):
            return None
        fields = {}
        for name, where in DIGITS.items():
            digits = part[:, where].astype(np.int32) - ord('0')
            if ((digits < 0) | (digits > 9)).any():
                return None
            fields[name] = digits @ (10 ** np.arange(where.stop - where.start - 1, -1, -1, dtype=np.int32))
        if ((fields['month'] < 1) | (fields['month'] > 12) | (fields['day'] < 1) | (fields['day'] > 31) |
                (fields['hour'] > 23) | (fields['minute'] > 59) | (fields['second'] > 60)).any():
            return None
        days = days_from_civil(fields['year'].astype(np.int64), fields['month'], fields['day'])
        out[lo:lo + block] = days * DAY + fields['hour'] * 3600 + fields['minute'] * 60 + fields['second']
    return out


def days_from_civil(year, month, day):
    """Days since 1970-01-01 of proleptic Gregorian dates (vectorised; H. Hinnant's algorithm)."""
    year = year - (month <= 2)
    era = np.floor_divide(year, 400)
    year_of_era = year - era * 400
    day_of_year = (153 * (month + np.where(month > 2, -3, 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def numeric_time(column, path, unit, first_line=2):
    """Seconds or milliseconds as numbers -> (int64 time, scale): integral seconds stay seconds (scale 1),
    fractional seconds and milliseconds become milliseconds (scale 1000). A non-number names its line."""
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        text = column.cast(pa.string())
        good = pc.match_substring_regex(text, r'^\s*-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$')
        good = good.fill_null(False).to_numpy(zero_copy_only=False)
        bad = int(np.flatnonzero(~good)[0]) if not good.all() else 0
        raise InputError(f'{path}, line {bad + first_line}: unparsable time {text[bad].as_py()!r} '
                         f'(--time_unit {unit}: expected a number)')
    if column.null_count:
        bad = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError(f'{path}, line {bad + first_line}: empty time')
    values = column.to_numpy()
    if pa.types.is_integer(column.type):
        return values.astype(np.int64), 1 if unit == 's' else 1000
    if unit == 's' and (values == np.floor(values)).all():
        return values.astype(np.int64), 1
    return np.round(values * (1000 if unit == 's' else 1)).astype(np.int64), 1000


def no_nulls(table, column, path, what, first_line=2):
    if table[column].null_count:
        bad = int(np.flatnonzero(table[column].is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError(f'{path}, line {bad + first_line}: empty {what} ({column})')


def writable_labels(column, labels, path, what, first_line=2):
    """A label with a TAB, a line break or a double quote (a quoted CSV field may hold them) cannot be
    written into the TAB split files unquoted: one error naming the first row that holds one."""
    if labels is None:
        return
    bad = pc.match_substring_regex(labels, '[\t\r\n"]')
    if not pc.any(bad).as_py():
        return
    strings = pc.fill_null(column.cast(pa.string()), '')
    row = pc.index(pc.is_in(strings, value_set=labels.filter(bad)), True).as_py()
    label = strings[row].as_py()
    raise InputError(f'{path}, line {row + first_line}: {what} {label!r} holds a TAB, a line break or a double '
                     f'quote, which the TAB-separated split files cannot hold')


def events(session, item, time, order, labels=None, scale=1):
    out = {'session': session, 'item': item[order], 'time': time[order], 'scale': scale}
    if labels is not None:
        out['item_labels'] = labels
    return out


# ---------------------------------------------------------------- the readers

def read_diginetica(paths):
    """Diginetica train-item-views.csv: sessions given; Time (ms) = UTC midnight of the session's earliest
    eventdate, in ms, + timeframe (so clicks are ordered by timeframe inside a session, J1/J2)."""
    path, = paths
    spec = DATASETS['diginetica']
    table = read_csv(path, spec['columns'], ';', renamed=DIGINETICA_SPELLINGS,
                     types={'sessionId': pa.int64(), 'itemId': pa.int64(), 'timeframe': pa.int64(),
                            'eventdate': pa.date32()},
                     expected='sessionId;userId;itemId;timeframe;eventdate (or session_id;user_id;item_id;...)')
    for column in spec['columns']:
        no_nulls(table, column, path, column)
    session = table['sessionId'].to_numpy()
    item = table['itemId'].to_numpy()
    day = table['eventdate'].cast(pa.int32()).to_numpy().astype(np.int64)
    codes, n = ordered_codes(session)
    first_day = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first_day, codes, day)
    time = first_day[codes] * DAY * 1000 + table['timeframe'].to_numpy()
    order = given_sessions(session, time, item)
    return events(session[order], item, time, order, scale=1000)


def read_user_log(table, path, user_col, item_col, time, scale, gap, keep=None):
    """Shared by the datasets without sessions: ids, then J1.2's sessions."""
    user, _ = integer_ids(table[user_col])
    item, labels = integer_ids(table[item_col])
    order, session = sessionise(user, time, item, gap * scale, keep)
    return events(session, item, time, order, labels, scale)


def read_retailrocket(paths):
    """RetailRocket events.csv: visitor histories cut by the 3600 s gap over ALL events, then views kept."""
    path, = paths
    spec = DATASETS['retailrocket']
    table = read_csv(path, spec['columns'], ',', types={'timestamp': pa.int64(), 'visitorid': pa.int64(),
                                                        'itemid': pa.int64(), 'event': pa.string()})
    for column in ('timestamp', 'visitorid', 'itemid'):
        no_nulls(table, column, path, column)
    keep = keep_events(table, *spec['event'], path)
    return read_user_log(table, path, 'visitorid', 'itemid', table['timestamp'].to_numpy(), 1000, SESSION_GAP,
                         keep)


def read_rees46(paths):
    """Rees46 monthly files (October then November): views kept first, user histories cut by the gap
    over the views only; event_time `2019-10-01 00:00:00 UTC` -> integer seconds."""
    spec = DATASETS['rees46']
    parts = []
    for path in paths:
        table = read_csv(path, spec['columns'], ',', types={'event_time': pa.string(), 'product_id': pa.int64(),
                                                            'user_id': pa.int64(),
                                                            'event_type': pa.dictionary(pa.int32(), pa.string())})
        for column in ('product_id', 'user_id'):
            no_nulls(table, column, path, column)
        time = iso_to_ms(table['event_time'], path) // 1000
        try:
            keep = keep_events(table, *spec['event'], path)
        except InputError:
            continue                                    # a file without views adds nothing
        parts.append((table.drop_columns(['event_time', 'event_type']).filter(pa.array(keep)), time[keep]))
        del table
    if not parts:
        raise InputError(f'{", ".join(paths)}: no event has event_type in {{view}}: nothing to keep')
    table = pa.concat_tables([t for t, _ in parts])
    time = np.concatenate([t for _, t in parts])
    del parts
    return read_user_log(table, paths[0], 'user_id', 'product_id', time, 1, SESSION_GAP)


def read_coveo(paths):
    """Coveo browsing file: session_id_hash histories re-cut by the 3600 s gap over ALL events, then the
    product detail views kept; item ids are the sku hash strings."""
    path, = paths
    spec = DATASETS['coveo']
    table = read_csv(path, spec['columns'], ',', types={'session_id_hash': pa.string(), 'product_action': pa.string(),
                                                        'product_skus_hash': pa.string(),
                                                        'server_timestamp_epoch_ms': pa.int64()})
    for column in ('session_id_hash', 'server_timestamp_epoch_ms'):
        no_nulls(table, column, path, column)
    keep = keep_events(table, *spec['event'], path)
    keep &= pc.fill_null(pc.not_equal(table['product_skus_hash'], ''), False).to_numpy(zero_copy_only=False)
    if not keep.any():
        raise InputError(f'{path}: no detail event names a product (product_skus_hash)')
    return read_user_log(table, path, 'session_id_hash', 'product_skus_hash',
                         table['server_timestamp_epoch_ms'].to_numpy(), 1000, SESSION_GAP, keep)


def read_custom(paths, session_key=None, user_key=None, item_key='ItemId', time_key='Time', time_unit='s',
                sep=None, event_key=None, events_kept=None, session_gap=SESSION_GAP):
    """A user's own log (J3): named columns, times in s / ms / ISO, optional event filter (first), sessions
    given or cut from user histories by session_gap seconds (a new session when the gap is strictly greater)."""
    path, = paths
    if session_key is None and user_key is None:
        session_key = 'SessionId'
    group = session_key or user_key
    columns = [group, item_key, time_key] + ([event_key] if event_key else [])
    if path.endswith('.parquet'):
        table = read_parquet(path, columns)
    else:
        sep = sep or sniff_separator(path, columns)
        types = {time_key: pa.string()} if time_unit == 'iso' else {}
        if event_key:
            types[event_key] = pa.string()
        table = read_csv(path, columns, sep, types=types)
    no_nulls(table, group, path, 'session' if session_key else 'user')
    no_nulls(table, item_key, path, 'item')
    if pa.types.is_timestamp(table[time_key].type) or pa.types.is_date(table[time_key].type):
        time, scale = table[time_key].cast(pa.timestamp('ms')).cast(pa.int64()).to_numpy(), 1000   # parquet
    elif time_unit == 'iso':
        time, scale = iso_to_ms(table[time_key], path), 1000
    else:
        time, scale = numeric_time(table[time_key].combine_chunks(), path, time_unit)
    keep = keep_events(table, event_key, events_kept, path) if event_key else None
    item, labels = integer_ids(table[item_key])
    writable_labels(table[item_key], labels, path, 'item id')
    if user_key:
        user, _ = integer_ids(table[user_key])
        if keep is not None:
            user, time, item = user[keep], time[keep], item[keep]
        order, session = sessionise(user, time, item, session_gap * scale)
        return events(session, item, time, order, labels, scale)
    session, session_labels = integer_ids(table[session_key])
    if keep is not None:
        session, time, item = session[keep], time[keep], item[keep]
    order = given_sessions(session, time, item)
    session = session[order] if session_labels is None else renumber(session[order])
    return events(session, item, time, order, labels, scale)


READERS = {'diginetica': read_diginetica, 'retailrocket': read_retailrocket, 'rees46': read_rees46,
           'coveo': read_coveo}
