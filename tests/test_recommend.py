"""recommend.py: the Python API against the evaluation, the batch command and the HTTP service.

Tiny models (GRU4Rec, NARM, BPR-MF, VSTAN) trained for one or two epochs on a small synthetic split by main.py
itself, so every checkpoint is the real format."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from baselines import Pop, top_k
from conftest import ROOT, run_command, synthetic_split
from dataset import SessionData
from evaluation import evaluate
import main
import recommend
from recommend import SessionRecommender, best_k, standard_ranks


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp('recommend')
    synthetic_split(root, 800, 60, seed=8)
    common = ['--data_folder', str(root), '--checkpoint_dir', str(root / 'ck')]
    gru4rec, _ = main.main(common + ['--layers', '16', '--batch_size', '32', '--n_sample', '16', '--n_epochs', '1'])
    narm, _ = main.main(common + ['--model', 'NARM', '--n_epochs', '1', '--params',
                                  'embedding_size=8,hidden_size=8,batch_size=64,max_seq_length=4'])
    bprmf, _ = main.main(common + ['--model', 'BPRMF', '--params', 'n_factors=8,n_epochs=2'])
    vstan, _ = main.main(common + ['--model', 'VSTAN', '--params', 'k=20,sample_size=200'])
    train = SessionData(str(root / 'rsc15_train_full.txt'))
    return {'root': root, 'GRU4Rec': gru4rec, 'NARM': narm, 'BPRMF': bprmf, 'VSTAN': vstan, 'train': train,
            'test': str(root / 'rsc15_test.txt')}


def ids_of(pairs):
    return [item for item, _ in pairs]


def assert_same(got, expected):
    assert ids_of(got) == ids_of(expected)
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], rtol=1e-5, atol=1e-6)
    assert got.unknown == expected.unknown and got.popular == expected.popular


def test_support_is_saved_in_the_checkpoint(world):
    r = SessionRecommender.load(world['GRU4Rec'])
    assert r.ids == world['train'].item_map.to_list()
    assert np.array_equal(r.support, world['train'].item_support())


# ---------------------------------------------------------------- the ranking is the evaluation's

@pytest.mark.parametrize('name', ['GRU4Rec', 'NARM', 'BPRMF', 'VSTAN'])
def test_recall_from_recommend_equals_evaluate(world, name):
    """Every prefix of every test session, recommended, and its next click looked up in the top K."""
    r = SessionRecommender.load(world[name])
    test = SessionData(world['test'], item_map=r.item_map)
    ids = np.array(r.ids)
    prefixes, targets = [], []
    for s in range(test.n_sessions):
        clicks = test.items[test.offsets[s]:test.offsets[s + 1]]
        for t in range(1, len(clicks)):
            prefixes.append(list(ids[clicks[:t]]))
            targets.append(ids[clicks[t]])
    recs = r.recommend_batch(prefixes, k=20)
    expected = evaluate(r.model, test, cutoffs=(1, 5, 10, 20))
    assert expected['n_predictions'] == len(targets)
    for k in (1, 5, 10, 20):
        hits = sum(target in ids_of(pairs)[:k] for pairs, target in zip(recs, targets))
        assert hits / len(targets) == expected[f'Recall@{k}'], k


def test_ties_in_item_map_order_with_standard_ranks():
    model = Pop(5)
    model.popularity.copy_(torch.tensor([1.0, 3.0, 3.0, 0.0, 3.0]))
    r = SessionRecommender(model, ['a', 'b', 'c', 'd', 'e'], support=[1, 3, 3, 0, 3])
    assert ids_of(r.recommend(['a'], k=4)) == ['b', 'c', 'e', 'a']
    assert ids_of(r.recommend(['a'], k=2)) == ['b', 'c']
    assert ids_of(r.recommend(['a'], k=2, exclude=['b', 'zz'])) == ['c', 'e']
    assert ids_of(r.recommend(['a'], k=5, exclude=['a', 'b', 'c', 'd'])) == ['e']   # fewer than k are left
    assert standard_ranks([3.0, 3.0, 3.0, 1.0, 0.5, 0.5]) == [1, 1, 1, 4, 5, 5]
    assert ids_of(r.recommend([], k=3)) == ['b', 'c', 'e']          # the popular fallback, same tie rule


def test_best_k_is_top_k():
    """The fast exact top-k against baselines.top_k (several passes) on scores full of ties."""
    generator = torch.Generator().manual_seed(0)
    for levels, k in ((3, 5), (50, 5), (1000, 20), (2, 1), (7, 40)):
        scores = torch.randint(levels, (30, 40), generator=generator).float()
        scores[0, :] = 1.0                                     # a row of one value
        scores[1, 5:] = float('-inf')                          # fewer than k finite scores
        values, indices = best_k(scores, k)
        expected_values, expected_indices = top_k(scores, k)
        assert torch.equal(indices, expected_indices) and torch.equal(values, expected_values)


# ---------------------------------------------------------------- batch, stateful, unknown ids

@pytest.mark.parametrize('name', ['GRU4Rec', 'NARM', 'VSTAN'])
def test_recommend_batch_equals_one_by_one(world, name):
    r = SessionRecommender.load(world[name])
    rng = np.random.default_rng(0)
    sessions = [list(rng.choice(r.ids, size=n)) for n in (3, 1, 7, 2, 0, 5, 6)]
    sessions[2][3] = 'unknown-item'
    sessions.append(['nope', 'neither'])
    exclude = [list(s[:1]) for s in sessions]
    batch = r.recommend_batch(sessions, k=10)
    for session, got in zip(sessions, batch):
        assert_same(got, r.recommend(session, k=10))
    for session, skip, got in zip(sessions, exclude, r.recommend_batch(sessions, k=10, exclude=exclude)):
        assert_same(got, r.recommend(session, k=10, exclude=skip))
        assert not set(skip) & set(ids_of(got))
    assert batch[2].unknown == ['unknown-item'] and batch[7].unknown == ['nope', 'neither']
    assert batch[4].popular and batch[7].popular and not batch[0].popular
    recommend.CHUNK_SESSIONS, saved = 3, recommend.CHUNK_SESSIONS   # in chunks of sessions: the same lists
    try:
        for got, one in zip(r.recommend_batch(sessions, k=10), batch):
            assert_same(got, one)
    finally:
        recommend.CHUNK_SESSIONS = saved


@pytest.mark.parametrize('name', ['GRU4Rec', 'NARM', 'VSTAN'])
def test_clicks_equal_recommend_of_the_prefix(world, name):
    r = SessionRecommender.load(world[name])
    session = [r.ids[5], r.ids[9], 'unknown-item', r.ids[5], r.ids[30], r.ids[2], r.ids[41]]   # NARM keeps 4
    other = [r.ids[1], r.ids[2], r.ids[3]]
    for t, item in enumerate(session):
        got = r.click('s1', item, k=7)
        if t < len(other):
            r.click('s2', other[t], k=7)                      # another session in between changes nothing
        expected = r.recommend(session[:t + 1], k=7)
        assert ids_of(got) == ids_of(expected) and [s for _, s in got] == [s for _, s in expected]
        assert got.unknown == (['unknown-item'] if item == 'unknown-item' else [])
    assert r.n_sessions == 2 and r.end('s1') and not r.end('s1') and r.n_sessions == 1
    assert ids_of(r.click('s1', r.ids[7], k=7)) == ids_of(r.recommend([r.ids[7]], k=7))   # ended: from zero


def test_lru_keeps_at_most_max_sessions(world):
    r = SessionRecommender.load(world['GRU4Rec'], max_sessions=3)
    for s in ('a', 'b', 'c'):
        r.click(s, r.ids[1])
    r.click('a', r.ids[2])                            # 'a' is now the most recently used
    r.click('d', r.ids[3])                            # so 'b' goes
    assert list(r.sessions) == ['c', 'a', 'd'] and r.n_sessions == 3
    assert ids_of(r.click('a', r.ids[4], k=5)) == ids_of(r.recommend([r.ids[1], r.ids[2], r.ids[4]], k=5))
    assert ids_of(r.click('b', r.ids[4], k=5)) == ids_of(r.recommend([r.ids[4]], k=5))   # forgotten: from zero
    for s in range(50):
        r.click(f'x{s}', r.ids[s % 10])
    assert r.n_sessions == 3


def test_concurrent_clicks_of_one_session_are_all_applied(world):
    r = SessionRecommender.load(world['GRU4Rec'])
    item = r.ids[3]

    def clicks():
        for _ in range(25):
            r.click('shared', item, k=5)
            r.click(threading.current_thread().name, r.ids[4], k=5)      # other sessions in between

    threads = [threading.Thread(target=clicks, name=f'own-{n}') for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert r.sessions['shared'][1] == 100                                  # no click lost or restarted
    assert ids_of(r.click('shared', item, k=5)) == ids_of(r.recommend([item] * 101, k=5))


def test_unknown_ids_and_the_popular_fallback(world, tmp_path):
    r = SessionRecommender.load(world['GRU4Rec'])
    support = world['train'].item_support()
    popular = [r.ids[i] for i in sorted(range(len(support)), key=lambda i: (-support[i], i))]
    got = r.recommend(['nope', 42], k=5)
    assert got.popular and got.unknown == ['nope', '42']
    assert ids_of(got) == popular[:5] and [s for _, s in got] == sorted(support, reverse=True)[:5]
    assert ids_of(r.recommend([], k=3, exclude=[popular[0]])) == popular[1:4]
    first = r.click('s', 'nope', k=4)
    assert first.popular and first.unknown == ['nope'] and ids_of(first) == popular[:4]
    assert not r.click('s', r.ids[0], k=4).popular
    with pytest.raises(ValueError, match='k must be an integer in 1..60'):
        r.recommend([r.ids[0]], k=0)
    with pytest.raises(ValueError, match='k must be'):
        r.click('s', r.ids[0], k=61)
    # a checkpoint saved before the support was kept: popular from --train_data, or an empty, marked list
    state = torch.load(world['GRU4Rec'], weights_only=True)
    del state['item_support']
    old = str(tmp_path / 'old.pt')
    torch.save(state, old)
    without = SessionRecommender.load(old).recommend(['nope'], k=5)
    assert without == [] and without.popular
    assert ids_of(SessionRecommender.load(old, train_data=os.path.join(world['root'], 'rsc15_train_full.txt'))
                  .recommend(['nope'], k=5)) == popular[:5]


# ---------------------------------------------------------------- the batch command

def read_rows(path):
    with open(path) as f:
        header = f.readline().rstrip('\n').split('\t')
        return header, [line.rstrip('\n').split('\t') for line in f]


def test_batch_command(world, tmp_path):
    r = SessionRecommender.load(world['GRU4Rec'])
    test = SessionData(world['test'], item_map=r.item_map)
    last, every, unseen = (str(tmp_path / name) for name in ('last.tsv', 'every.tsv', 'unseen.tsv'))
    args = ['--load_model', world['GRU4Rec'], '--input', world['test'], '--k', '5']
    result = run_command('recommend.py', *args, '--output', last)             # as a user runs it
    assert result.returncode == 0, result.stderr
    assert re.search(r'in [0-9.]+ s, [0-9,]+ sessions/s', result.stdout), result.stdout
    recommend.main(args + ['--output', every, '--every_click'])                # the rest in this process
    recommend.main(args + ['--output', unseen, '--every_click', '--exclude_seen'])
    assert not [f for f in os.listdir(tmp_path) if '.tmp-' in f]
    header, rows = read_rows(last)
    assert header == ['SessionId', 'Position', 'ItemId', 'Rank', 'Score']
    ids = np.array(r.ids)
    sessions = {int(test.session_ids[s]): list(ids[test.items[test.offsets[s]:test.offsets[s + 1]]])
                for s in range(test.n_sessions)}
    assert len(rows) == 5 * len(sessions)
    by_session = {}
    for sid, position, item, rank, score in rows:
        by_session.setdefault(int(sid), []).append((int(position), item, int(rank), float(score)))
    for sid, clicks in sessions.items():                  # after the last click: recommend() of the session
        got = by_session[sid]
        assert {p for p, *_ in got} == {len(clicks)}
        assert [item for _, item, _, _ in got] == ids_of(r.recommend(clicks, k=5))
        assert [rank for _, _, rank, _ in got] == standard_ranks([s for *_, s in got])
    _, every_rows = read_rows(every)
    assert len(every_rows) == 5 * test.n_events
    hits = sum(1 for sid, position, item, *_ in every_rows              # Recall@5 from the file = evaluate's
               if int(position) < len(sessions[int(sid)]) and sessions[int(sid)][int(position)] == item)
    assert hits / evaluate(r.model, test)['n_predictions'] == evaluate(r.model, test, cutoffs=(5,))['Recall@5']
    last_of_every = [row for row in every_rows if int(row[1]) == len(sessions[int(row[0])])]
    assert sorted(row[:4] for row in last_of_every) == sorted(row[:4] for row in rows)   # scores: batch rounding
    _, unseen_rows = read_rows(unseen)
    assert len(unseen_rows) == 5 * test.n_events
    for sid, position, item, *_ in unseen_rows:
        assert item not in sessions[int(sid)][:int(position)]
    assert any(item in sessions[int(sid)][:int(position)] for sid, position, item, *_ in every_rows)


def test_batch_command_unknown_items_and_atomic_output(world, tmp_path, monkeypatch):
    r = SessionRecommender.load(world['GRU4Rec'])
    path = tmp_path / 'mixed.txt'
    path.write_text('SessionId\tItemId\tTime\n7\tnope\t1\n7\t' + r.ids[3] + '\t2\n9\tnever\t1\n5\t'
                    + r.ids[4] + '\t3\n5\t' + r.ids[5] + '\t1\n')
    out = str(tmp_path / 'recs.tsv')
    counts = recommend.recommend_file(r, str(path), out, 3, every_click=True, progress=False)
    assert counts['unknown_clicks'] == 2 and counts['popular_rows'] == 2 and counts['sessions'] == 3
    _, rows = read_rows(out)
    got = {}
    for sid, position, item, *_ in rows:
        got.setdefault((sid, int(position)), []).append(item)
    popular = ids_of(r.recommend([], k=3))
    assert got[('7', 1)] == popular and got[('9', 1)] == popular                 # no known item yet
    assert got[('7', 2)] == ids_of(r.recommend([r.ids[3]], k=3))
    assert got[('5', 1)] == ids_of(r.recommend([r.ids[5]], k=3))                 # clicks in time order
    assert got[('5', 2)] == ids_of(r.recommend([r.ids[5], r.ids[4]], k=3))
    before = open(out).read()                               # a failure midway leaves the earlier output alone

    def broken(*args, **kwargs):
        raise RuntimeError('disk on fire')
    monkeypatch.setattr(r, '_ranked', broken)
    with pytest.raises(RuntimeError):
        recommend.recommend_file(r, str(path), out, 3, progress=False)
    assert open(out).read() == before and sorted(os.listdir(tmp_path)) == ['mixed.txt', 'recs.tsv']


# ---------------------------------------------------------------- the HTTP service

def start_server(checkpoint, *extra):
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, 'recommend.py'), '--load_model', checkpoint,
                                '--serve', '--port', '0', *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=ROOT)
    line = process.stdout.readline()
    match = re.search(r'http://127\.0\.0\.1:(\d+)', line)
    assert match, line + process.stderr.read()
    return process, f'http://127.0.0.1:{match.group(1)}'


def call(url, path, body=None, raw=None):
    """(status, parsed JSON answer) of a GET (body None) or a POST."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method='GET' if data is None else 'POST')
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope='module')
def server(world):
    process, url = start_server(world['GRU4Rec'], '--max_sessions', '1000')
    yield url, process
    if process.poll() is None:
        process.kill()
        process.wait()


def test_http_good_requests(world, server):
    url, _ = server
    r = SessionRecommender.load(world['GRU4Rec'])
    status, health = call(url, '/health')
    assert status == 200 and health['model'] == 'GRU4Rec' and health['items'] == 60 and health['device'] == 'cpu'
    session = [r.ids[3], r.ids[8]]
    status, answer = call(url, '/recommend', {'items': session + ['nope'], 'k': 5})
    expected = r.recommend(session, k=5)
    assert status == 200 and answer['items'] == ids_of(expected) and answer['unknown'] == ['nope']
    np.testing.assert_allclose(answer['scores'], [s for _, s in expected], rtol=1e-6)
    status, answer = call(url, '/recommend', {'items': session, 'k': 10, 'exclude_seen': True})
    assert answer['items'] == ids_of(r.recommend(session, k=10, exclude=session))
    assert call(url, '/recommend', {'items': [int(r.ids[3])]})[1]['items'] == ids_of(r.recommend([r.ids[3]]))
    assert call(url, '/recommend', {'items': []})[1]['popular']
    for t, item in enumerate(session):
        status, answer = call(url, '/click', {'session_id': 'good', 'item_id': item, 'k': 4})
        assert status == 200 and answer['items'] == ids_of(r.recommend(session[:t + 1], k=4))
    assert call(url, '/health')[1]['sessions'] >= 1
    assert call(url, '/end', {'session_id': 'good'}) == (200, {'ended': True})
    assert call(url, '/end', {'session_id': 'good'}) == (200, {'ended': False})


BAD = {   # body (or raw bytes), expected status, words of the reason
    'malformed JSON': (b'{"items": [1, 2', 400, 'malformed JSON'),
    'not UTF-8': (b'\xff\xfe{', 400, 'malformed JSON'),
    'a list, not an object': ([1, 2], 400, 'JSON object'),
    'items not a list': ({'items': '123'}, 400, '"items" must be a list'),
    'an item of the wrong type': ({'items': [1.5]}, 400, '"items" must be a list'),
    'a boolean item': ({'items': [True]}, 400, '"items" must be a list'),
    'k zero': ({'items': [], 'k': 0}, 400, '"k" must be an integer in 1..60'),
    'k above the items': ({'items': [], 'k': 61}, 400, '"k" must be an integer in 1..60'),
    'k a string': ({'items': [], 'k': '5'}, 400, '"k" must be an integer'),
    'k a float': ({'items': [], 'k': 5.0}, 400, '"k" must be an integer'),
    'k a boolean': ({'items': [], 'k': True}, 400, '"k" must be an integer'),
    'exclude_seen not a boolean': ({'items': [], 'exclude_seen': 1}, 400, '"exclude_seen" must be true or false'),
    'unknown field': ({'items': [], 'kk': 3}, 400, "unknown field(s) 'kk'"),
    'click without item': ({'session_id': 'x'}, 400, '"item_id" must be'),
    'too large': (b'{"items": [' + b'1, ' * 40000 + b'1]}', 413, 'at most 65536'),
}


@pytest.mark.parametrize('case', BAD)
def test_http_bad_requests(world, server, case):
    url, process = server
    body, status, words = BAD[case]
    path = '/click' if case == 'click without item' else '/recommend'
    call(url, '/click', {'session_id': 'bystander', 'item_id': world['train'].item_map.to_list()[3], 'k': 3})
    got, answer = call(url, path, raw=body) if isinstance(body, bytes) else call(url, path, body)
    assert got == status and words in answer['error'] and '\n' not in answer['error'], answer
    assert process.poll() is None                                 # still serving
    r = SessionRecommender.load(world['GRU4Rec'])                 # the bystander session is untouched
    clicks = [world['train'].item_map.to_list()[3], world['train'].item_map.to_list()[4]]
    status, answer = call(url, '/click', {'session_id': 'bystander', 'item_id': clicks[1], 'k': 3})
    assert answer['items'] == ids_of(r.recommend(clicks, k=3))
    call(url, '/end', {'session_id': 'bystander'})


def test_http_wrong_path_and_method(server):
    url, _ = server
    assert call(url, '/nothing')[0] == 404
    assert call(url, '/recommend')[0] == 405
    assert call(url, '/health', {'items': []})[0] == 405


def test_http_eight_threads(world, server):
    url, _ = server
    r = SessionRecommender.load(world['GRU4Rec'])
    failures = []

    def client(n):
        rng = np.random.default_rng(n)
        clicks = []
        for i in range(50):
            if i % 2:
                clicks.append(str(rng.choice(r.ids)))
                status, answer = call(url, '/click', {'session_id': f'thread-{n}', 'item_id': clicks[-1], 'k': 5})
                expected = r.recommend(clicks, k=5)
            else:
                items = list(rng.choice(r.ids, size=int(rng.integers(0, 6))))
                status, answer = call(url, '/recommend', {'items': items, 'k': 5})
                expected = r.recommend(items, k=5)
            if status != 200 or answer['items'] != ids_of(expected):
                failures.append((n, i, status, answer))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_http_clean_shutdown(world, server, sig):
    """SIGINT: a server of its own; SIGTERM: the module's server, after the tests above have used it."""
    process, url = start_server(world['GRU4Rec']) if sig == signal.SIGINT else server[::-1]
    try:
        assert call(url, '/health')[0] == 200
        process.send_signal(sig)
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0 and 'stopped' in out and 'Traceback' not in err, err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
