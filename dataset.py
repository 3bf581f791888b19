"""Session data: the split files, the item map and session-parallel mini-batches.

Follows the official GRU4Rec code (hidasib/GRU4Rec_PyTorch_Official, `SessionDataIterator`):

* spec A9/B1  load a TAB file with a header (SessionId, ItemId, Time by default); item ids are compared
              as strings, so train and test can never disagree on dtype; the item map (item id -> 0..N-1,
              in order of first appearance in the training file) is built from the training file only.
* spec C1     on the evaluation side, clicks on unknown items are dropped, then sessions left shorter than 2.
* spec B1-B2  sessions sorted by (SessionId, Time), processed oldest-first by their first click;
              session-parallel mini-batches: B slots, each step feeds every active slot's current click as
              input and the next click of the same session as target; a finished slot takes the next
              session (in slot order) and its hidden state must be zeroed; when no session is left the slot
              is removed and the batch shrinks, so every click but a session's first is a target once.

Deliberate difference: sessions with a single click (never present in the preprocessed files) are left
out of the schedule instead of occupying a slot for zero steps; they yield no target either way.
"""
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from cli import InputError


# ---------------------------------------------------------------- reading split files

def read_split(path, session_key='SessionId', item_key='ItemId', time_key='Time'):
    """Read a preprocessed TAB file. Returns (session ids int64, item ids as pyarrow strings, time float64)."""
    if not os.path.isfile(path):
        raise InputError(f'{path}: no such file (run preprocessing.py first, or pass the right --data_folder)')
    if os.path.getsize(path) == 0:
        raise InputError(f'{path}: the file is empty (expected a TAB file with header '
                         f'{session_key} {item_key} {time_key})')
    with open(path, 'rb') as f:
        header = f.readline().rstrip(b'\r\n').decode('utf-8', errors='replace').split('\t')
    missing = [k for k in (session_key, item_key, time_key) if k not in header]
    if missing:
        raise InputError(f'{path}: header {header[:6]} lacks column(s) {missing} '
                         f'(expected a TAB-separated file with {session_key}, {item_key}, {time_key})')
    types = {session_key: pa.string(), item_key: pa.string(), time_key: pa.string()}
    try:
        table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter='\t'),
                               convert_options=pacsv.ConvertOptions(
                                   include_columns=[session_key, item_key, time_key], column_types=types))
    except pa.ArrowInvalid as err:
        raise InputError(f'{path}: not a well-formed TAB file ({str(err).splitlines()[0]})') from None
    if table.num_rows == 0:
        raise InputError(f'{path}: the file has a header but no rows')
    sessions = _numeric(path, table, session_key, pa.int64())
    times = _numeric(path, table, time_key, pa.float64())
    return sessions, table[item_key].combine_chunks(), times


def _numeric(path, table, key, dtype):
    """Convert a string column, naming the first bad row (data line numbers start at 2, after the header)."""
    column = table[key]
    try:
        return column.cast(dtype).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        values = column.to_pylist()
        for row, value in enumerate(values):
            try:
                (int if dtype == pa.int64() else float)(value)
            except (TypeError, ValueError):
                kind = 'an integer' if dtype == pa.int64() else 'a number'
                raise InputError(f'{path}, line {row + 2}: {key} must be {kind}, got {value!r}') from None
        raise


class ItemMap:
    """Item id (string) <-> index 0..N-1, in order of first appearance in the training file (spec B1.1)."""

    def __init__(self, item_ids):
        self.ids = pa.array(item_ids, type=pa.string())
        if len(pc.unique(self.ids)) != len(self.ids):
            raise ValueError('item ids of an ItemMap must be distinct')

    @classmethod
    def from_items(cls, items):
        return cls(pc.unique(items))

    def __len__(self):
        return len(self.ids)

    def index(self, items):
        """Indices of the given item ids (pyarrow/str array-like); -1 for unknown ids."""
        found = pc.index_in(pa.array(items, type=pa.string()), value_set=self.ids)
        return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)

    def to_list(self):
        return self.ids.to_pylist()


class SessionData:
    """One split file as sessions: items (indices) sorted by (SessionId, Time) and session offsets.

    Attributes: items (int64, length n_events), offsets (int64, n_sessions + 1: session s owns
    items[offsets[s]:offsets[s+1]]), session_ids, start_time / end_time (first / last click of each session),
    item_map, and dropped_events / dropped_sessions (evaluation side, spec C1).
    """

    def __init__(self, path, item_map=None, session_key='SessionId', item_key='ItemId', time_key='Time'):
        self.path = path
        sessions, items, times = read_split(path, session_key, item_key, time_key)
        self.item_map = item_map if item_map is not None else ItemMap.from_items(items)
        index = self.item_map.index(items)
        known = index >= 0
        n_total, n_sessions_in_file = len(index), len(np.unique(sessions))
        sessions, index, times = sessions[known], index[known], times[known]
        order = np.lexsort((times, sessions))  # stable: equal times keep the file's order
        sessions, index, times = sessions[order], index[order], times[order]
        starts = np.flatnonzero(np.r_[True, sessions[1:] != sessions[:-1]]) if len(sessions) else np.zeros(0, int)
        lengths = np.diff(np.r_[starts, len(sessions)])
        long_enough = np.repeat(lengths >= 2, lengths)   # spec C1: sessions shorter than 2 predict nothing
        self.items = index[long_enough]
        keep_sessions = lengths >= 2
        self.session_ids = sessions[starts[keep_sessions]]
        self.start_time = times[starts[keep_sessions]]
        self.end_time = times[(starts + lengths - 1)[keep_sessions]]
        self.offsets = np.r_[0, np.cumsum(lengths[keep_sessions])].astype(np.int64)
        self.dropped_events = n_total - len(self.items)
        self.dropped_sessions = n_sessions_in_file - len(self.session_ids)
        if len(self.items) == 0:
            what = 'no click is on an item of the training set' if not known.any() else \
                'no session has two or more clicks on known items'
            raise InputError(f'{path}: nothing to use ({what})')

    @property
    def n_events(self):
        return len(self.items)

    @property
    def n_sessions(self):
        return len(self.offsets) - 1

    def item_support(self):
        """supp(i): number of clicks on each item of the map (spec B5.3)."""
        return np.bincount(self.items, minlength=len(self.item_map))

    def session_order(self):
        """Sessions oldest-first by their first click (spec B1.3); ties keep session-id order."""
        return np.argsort(self.start_time, kind='stable')


# ---------------------------------------------------------------- session-parallel mini-batches

@dataclass
class Step:
    """One mini-batch step of M active slots (rows ordered by slot index).

    inputs, targets: item indices (M,). reset: (M,) bool, the row's session starts at this step, so its
    hidden state (every layer) must be zero. keep: None, or the rows of the previous step that are still
    active (the batch shrank because no session was left for the others); apply it before `reset`.
    """
    inputs: np.ndarray
    targets: np.ndarray
    reset: np.ndarray
    keep: np.ndarray = None


def session_schedule(lengths, batch_size):
    """Assign sessions (in processing order, each of length >= 2) to slots, spec B2.

    Returns (slot, start): the slot each session runs in and the step of its first target. A session of
    length L occupies its slot for L - 1 steps; slots that run out at the same step take the next
    sessions in slot-index order; when sessions run out, finished slots are simply left empty.
    """
    n = len(lengths)
    width = min(batch_size, n)
    slot = np.empty(n, dtype=np.int64)
    start = np.empty(n, dtype=np.int64)
    slot[:width], start[:width] = np.arange(width), 0
    busy_until = lengths[:width].astype(np.int64) - 1   # the step at which each slot needs a new session
    nxt = width
    while nxt < n:  # one round per distinct step at which some slot runs out, B-wide numpy work each
        t = busy_until.min()
        finished = np.flatnonzero(busy_until == t)[:n - nxt]
        new = slice(nxt, nxt + len(finished))
        slot[new], start[new] = finished, t
        busy_until[finished] = t + lengths[new] - 1
        nxt += len(finished)
    return slot, start


class SessionParallelIterator:
    """Session-parallel mini-batches over a SessionData (spec B2), the same schedule every epoch.

    The whole schedule is computed once, vectorised, as flat arrays ordered by (step, slot):
    `inputs`, `targets`, `reset` and `slots`, with `step_offsets` marking where each step begins.
    Iterating yields one Step per mini-batch; `len()` is the number of steps.
    """

    def __init__(self, data, batch_size):
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}')
        self.batch_size = batch_size
        order = data.session_order()
        lengths = np.diff(data.offsets)[order]
        slot, start = session_schedule(lengths, batch_size)
        n_targets = lengths - 1
        session = np.repeat(np.arange(len(order)), n_targets)
        k = np.arange(len(session)) - np.repeat(np.cumsum(n_targets) - n_targets, n_targets)
        step = start[session] + k
        by_step = np.argsort(step * batch_size + slot[session], kind='stable')
        position = (data.offsets[order][session] + k)[by_step]
        self.inputs = data.items[position]
        self.targets = data.items[position + 1]
        self.reset = (k == 0)[by_step]
        self.slots = slot[session][by_step]
        self.step_offsets = np.r_[0, np.cumsum(np.bincount(step))].astype(np.int64)

    def __len__(self):
        return len(self.step_offsets) - 1

    @property
    def n_targets(self):
        return len(self.targets)

    @property
    def n_slots(self):
        """Rows of the first step: min(batch_size, number of sessions)."""
        return int(self.step_offsets[1] - self.step_offsets[0]) if len(self) else 0

    def __iter__(self):
        offsets = self.step_offsets
        previous = None
        for t in range(len(self)):
            rows = slice(offsets[t], offsets[t + 1])
            keep = None
            if previous is not None and offsets[t + 1] - offsets[t] < previous.stop - previous.start:
                keep = np.flatnonzero(np.isin(self.slots[previous], self.slots[rows]))
            yield Step(self.inputs[rows], self.targets[rows], self.reset[rows], keep)
            previous = rows

    def torch_steps(self, device='cpu'):
        """The same steps as torch tensors on `device` (uploaded once): (inputs, targets, reset, keep),
        where reset is None when no row of the step starts a session and keep is None unless the batch
        shrank. The arrays are views into one upload, so a step costs no host-to-device copy."""
        import torch    # here, not at the top: preprocessing and the synthetic generator use this module without torch
        inputs = torch.from_numpy(self.inputs).to(device)
        targets = torch.from_numpy(self.targets).to(device)
        reset = torch.from_numpy(self.reset).to(device)
        offsets = self.step_offsets
        any_reset = np.add.reduceat(self.reset, offsets[:-1]) > 0 if len(self) else []
        for t, step in enumerate(self):
            rows = slice(int(offsets[t]), int(offsets[t + 1]))
            keep = None if step.keep is None else torch.from_numpy(step.keep).to(device)
            yield inputs[rows], targets[rows], reset[rows] if any_reset[t] else None, keep
