"""dataset.py: split files, item map, spec C1 filtering and the session-parallel iterator (spec B1-B2)."""
import numpy as np
import pytest

from conftest import write_split
from cli import InputError
from dataset import ItemMap, SessionData, SessionParallelIterator, session_schedule


def hand_made(tmp_path):
    """Four sessions whose ids are not in time order; rows shuffled. By first click: A(30) B(10) C(20) D(5)."""
    rows = [(20, 'c2', 301), (30, 'a1', 100), (10, 'b2', 201), (5, 'd1', 400), (30, 'a3', 102),
            (20, 'c1', 300), (10, 'b1', 200), (30, 'a2', 101), (20, 'c4', 303), (5, 'd2', 401), (20, 'c3', 302)]
    return SessionData(write_split(tmp_path / 'train.txt', rows))


def names(data, indices):
    ids = data.item_map.to_list()
    return [ids[i] for i in indices]


def test_item_map_follows_first_appearance_and_sessions_are_sorted(tmp_path):
    data = hand_made(tmp_path)
    assert data.item_map.to_list() == ['c2', 'a1', 'b2', 'd1', 'a3', 'c1', 'b1', 'a2', 'c4', 'd2', 'c3']
    assert list(data.session_ids) == [5, 10, 20, 30]
    assert names(data, data.items) == ['d1', 'd2', 'b1', 'b2', 'c1', 'c2', 'c3', 'c4', 'a1', 'a2', 'a3']
    assert list(data.offsets) == [0, 2, 4, 8, 11]
    assert list(data.session_ids[data.session_order()]) == [30, 10, 20, 5]


def test_two_slots_exact_steps(tmp_path):
    data = hand_made(tmp_path)
    steps = list(SessionParallelIterator(data, batch_size=2))
    got = [(names(data, s.inputs), names(data, s.targets), list(s.reset),
            None if s.keep is None else list(s.keep)) for s in steps]
    assert got == [
        (['a1', 'b1'], ['a2', 'b2'], [True, True], None),
        (['a2', 'c1'], ['a3', 'c2'], [False, True], None),    # B ended: slot 1 takes C, reset
        (['d1', 'c2'], ['d2', 'c3'], [True, False], None),    # A ended: slot 0 takes D
        (['c3'], ['c4'], [False], [1]),                       # nothing left for slot 0: the batch shrinks
    ]


def test_three_slots_exact_steps(tmp_path):
    data = hand_made(tmp_path)
    got = [(names(data, s.inputs), names(data, s.targets), list(s.reset),
            None if s.keep is None else list(s.keep)) for s in SessionParallelIterator(data, batch_size=3)]
    assert got == [
        (['a1', 'b1', 'c1'], ['a2', 'b2', 'c2'], [True, True, True], None),
        (['a2', 'd1', 'c2'], ['a3', 'd2', 'c3'], [False, True, False], None),
        (['c3'], ['c4'], [False], [2]),                       # slots 0 and 1 both removed at once
    ]


def test_more_slots_than_sessions(tmp_path):
    data = hand_made(tmp_path)
    steps = list(SessionParallelIterator(data, batch_size=10))
    assert [len(s.inputs) for s in steps] == [4, 2, 1]
    assert sum(len(s.targets) for s in steps) == 7


def reference_steps(sessions, batch_size):
    """Literal per-step port of spec B2, written for the test: returns [(inputs, targets, reset, keep)]."""
    n = len(sessions)
    slots = list(range(min(batch_size, n)))      # session index per active slot, in slot order
    cursor = [0] * len(slots)
    fresh = [True] * len(slots)
    handed_out = len(slots)
    keep = None
    steps = []
    while slots:
        steps.append(([sessions[s][c] for s, c in zip(slots, cursor)],
                      [sessions[s][c + 1] for s, c in zip(slots, cursor)], fresh, keep))
        cursor = [c + 1 for c in cursor]
        fresh = [False] * len(slots)
        alive = []
        for j, s in enumerate(slots):
            if cursor[j] + 1 < len(sessions[s]):
                alive.append(j)
            elif handed_out < n:
                slots[j], cursor[j], fresh[j] = handed_out, 0, True
                handed_out += 1
                alive.append(j)
        keep = None if len(alive) == len(slots) else alive
        slots = [slots[j] for j in alive]
        cursor = [cursor[j] for j in alive]
        fresh = [fresh[j] for j in alive]
    return steps


@pytest.mark.parametrize('batch_size', [1, 2, 3, 7, 32])
def test_iterator_matches_the_per_step_reference_and_hidden_state_bookkeeping(tmp_path, batch_size):
    rng = np.random.default_rng(batch_size)
    rows = []
    for s in range(120):
        start = rng.integers(0, 10_000)
        rows += [(s, f'i{rng.integers(0, 40)}', start + k) for k in range(rng.integers(2, 12))]
    order = rng.permutation(len(rows))
    data = SessionData(write_split(tmp_path / 't.txt', [rows[i] for i in order]))
    sessions = [list(data.items[data.offsets[s]:data.offsets[s + 1]]) for s in data.session_order()]
    iterator = SessionParallelIterator(data, batch_size)
    expected = reference_steps(sessions, batch_size)
    assert len(iterator) == len(expected)
    history = []   # what each row's hidden state has seen, maintained only through keep/reset
    for step, (inputs, targets, reset, keep) in zip(iterator, expected):
        assert list(step.inputs) == inputs and list(step.targets) == targets
        assert list(step.reset) == reset
        assert (step.keep is None and keep is None) or list(step.keep) == keep
        if step.keep is not None:
            history = [history[j] for j in step.keep]
        history += [[] for _ in range(len(step.inputs) - len(history))]
        history = [[] if r else h for h, r in zip(history, step.reset)]
        history = [h + [i] for h, i in zip(history, step.inputs)]
        for h, target in zip(history, step.targets):    # the state saw exactly its session's prefix
            assert any(s[:len(h) + 1] == h + [target] for s in sessions)
    assert iterator.n_targets == sum(len(s) - 1 for s in sessions)
    assert np.array_equal(np.sort(iterator.targets), np.sort(np.concatenate([s[1:] for s in sessions])))


def test_schedule_is_the_same_every_epoch(tmp_path):
    data = hand_made(tmp_path)
    iterator = SessionParallelIterator(data, 2)
    first = [(list(s.inputs), list(s.targets)) for s in iterator]
    assert [(list(s.inputs), list(s.targets)) for s in iterator] == first


def test_session_schedule_by_hand():
    slot, start = session_schedule(np.array([3, 2, 4, 2, 3]), 2)
    assert list(slot) == [0, 1, 1, 0, 0] and list(start) == [0, 0, 1, 2, 3]


def test_evaluation_side_drops_unknown_items_then_short_sessions(tmp_path):
    train = SessionData(write_split(tmp_path / 'train.txt', [(1, 7, 0), (1, 8, 1), (2, 9, 2), (2, 7, 3)]))
    test = SessionData(write_split(tmp_path / 'test.txt', [
        (5, 7, 10), (5, 99, 11), (5, 8, 12),      # 99 unknown: 7 -> 8 is predicted from 7
        (6, 9, 10), (6, 98, 11),                  # one known click left: no prediction
        (7, 97, 10), (7, 96, 11)]), item_map=train.item_map)
    assert names(test, test.items) == ['7', '8']
    assert list(test.session_ids) == [5]
    assert (test.dropped_events, test.dropped_sessions) == (5, 2)


def test_item_ids_compare_as_strings(tmp_path):
    # '007' and '7' are different ids; an int/str mismatch would have dropped every test event
    train = SessionData(write_split(tmp_path / 'train.txt', [(1, '007', 0), (1, 7, 1)]))
    test = SessionData(write_split(tmp_path / 'test.txt', [(2, 7, 0), (2, '007', 1)]), item_map=train.item_map)
    assert names(test, test.items) == ['7', '007']


def test_item_support(tmp_path):
    data = hand_made(tmp_path)
    assert data.item_support().sum() == 11 and data.item_support().max() == 1
    assert len(ItemMap(['a', 'b'])) == 2


def test_bad_split_files(tmp_path):
    with pytest.raises(InputError, match='no such file'):
        SessionData(str(tmp_path / 'missing.txt'))
    (tmp_path / 'empty.txt').write_text('')
    with pytest.raises(InputError, match='empty'):
        SessionData(str(tmp_path / 'empty.txt'))
    with pytest.raises(InputError, match=r"lacks column\(s\) \['ItemId'\]"):
        SessionData(write_split(tmp_path / 'cols.txt', [(1, 2, 3)], header='SessionId\tItemID\tTime'))
    with pytest.raises(InputError, match='comma.txt.*lacks column'):
        SessionData(write_split(tmp_path / 'comma.txt', [], header='SessionId,ItemId,Time'))
    with pytest.raises(InputError, match="line 3: SessionId must be an integer, got 'x'"):
        SessionData(write_split(tmp_path / 'sid.txt', [(1, 2, 3), ('x', 2, 4)]))
    with pytest.raises(InputError, match="line 2: Time must be a number"):
        SessionData(write_split(tmp_path / 'time.txt', [(1, 2, 'noon'), (1, 3, 4)]))
    with pytest.raises(InputError, match='header but no rows'):
        SessionData(write_split(tmp_path / 'rows.txt', []))
    train = SessionData(write_split(tmp_path / 'train.txt', [(1, 7, 0), (1, 8, 1)]))
    with pytest.raises(InputError, match='no click is on an item of the training set'):
        SessionData(write_split(tmp_path / 'test.txt', [(2, 5, 0), (2, 6, 1)]), item_map=train.item_map)
    with pytest.raises(ValueError, match='batch_size'):
        SessionParallelIterator(train, 0)
