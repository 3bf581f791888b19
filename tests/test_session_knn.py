"""session_knn.py: SKNN, V-SKNN, STAN and VSTAN against hand-computed scores and a slow reference.

The reference below is written from the equations of session_knn.py's docstring, one session and one
neighbour at a time in plain Python, sharing nothing with the vectorised code."""
import math

import numpy as np
import pytest
import torch

import checkpoints
from conftest import fitted, steps, write_split
from dataset import SessionData
from evaluation import evaluate
from session_knn import SESSION_KNN, SESSION_KNN_DEFAULTS, SKNN, STAN, VSKNN, VSTAN

DAY = 86400.0
# items by first appearance: 0..5; sessions end at 0, 1, 2, 3 days (the last is the most recent)
TRAIN = [(1, 'i0', 0 * DAY - 2), (1, 'i1', 0 * DAY - 1), (1, 'i2', 0 * DAY),
         (2, 'i1', 1 * DAY - 1), (2, 'i3', 1 * DAY),
         (3, 'i2', 2 * DAY - 2), (3, 'i3', 2 * DAY - 1), (3, 'i4', 2 * DAY),
         (4, 'i5', 3 * DAY - 1), (4, 'i0', 3 * DAY)]


@pytest.fixture
def train(tmp_path):
    return SessionData(write_split(tmp_path / 'train.txt', TRAIN))


def scores_of(model, clicks):
    """Scores after the whole prefix `clicks`, through the evaluation interface."""
    return steps(model, clicks)[-1]


# ---------------------------------------------------------------- hand-computed cases

def test_sknn_jaccard_and_cosine_by_hand(train):
    """s = [1, 2]; candidates S1 {0,1,2}, S2 {1,3}, S3 {2,3,4}; jaccard 2/3, 1/3, 1/4; k = 2 keeps S1, S2."""
    got = scores_of(fitted(SKNN(6, k=2, similarity='jaccard'), train), [1, 2])
    assert got == pytest.approx([2 / 3, 1.0, 2 / 3, 1 / 3, 0.0, 0.0], abs=1e-12)
    # cosine: S1 2/sqrt(6), S2 1/2, S3 1/sqrt(6); k = 3
    c1, c2, c3 = 2 / math.sqrt(6), 0.5, 1 / math.sqrt(6)
    got = scores_of(fitted(SKNN(6, k=3, similarity='cosine'), train), [1, 2])
    assert got == pytest.approx([c1, c1 + c2, c1 + c3, c2 + c3, c3, 0.0], abs=1e-12)


def test_sknn_recent_sample_keeps_the_most_recent_candidates(train):
    """sample_size 2: of S1, S2, S3 only S3 (day 2) and S2 (day 1) are candidates, whatever their similarity."""
    got = scores_of(fitted(SKNN(6, k=2, sample_size=2), train), [1, 2])
    assert got == pytest.approx([0.0, 1 / 3, 1 / 4, 1 / 3 + 1 / 4, 1 / 4, 0.0], abs=1e-12)


def test_sknn_random_sample_draws_among_the_candidates(train):
    """sampling='random', sample_size 1, k 1: each prediction scores the items of one candidate (S1, S2 or S3,
    with its jaccard) drawn afresh; over 30 draws of the seeded generator all three occur; with sample_size at
    least the candidate count, random sampling is no sampling."""
    one = {(2 / 3, 2 / 3, 2 / 3, 0.0, 0.0, 0.0), (0.0, 1 / 3, 0.0, 1 / 3, 0.0, 0.0), (0.0, 0.0, 1 / 4, 1 / 4, 1 / 4, 0.0)}
    model = fitted(SKNN(6, k=1, sample_size=1, sampling='random', seed=3), train)
    seen = {tuple(round(v, 12) for v in scores_of(model, [1, 2])) for _ in range(30)}
    assert seen == {tuple(round(v, 12) for v in o) for o in one}
    everything = fitted(SKNN(6, k=2, sample_size=3, sampling='random'), train)
    assert scores_of(everything, [1, 2]) == scores_of(fitted(SKNN(6, k=2, sample_size=0), train), [1, 2])


def test_vsknn_position_weights_recency_and_idf_by_hand(train):
    """s = [1, 2, 1], weighting div: item 1 weighs 3/3 (its last click), item 2 2/3. vec: S1 (1 + 2/3) / 2,
    S2 1/2, S3 (2/3) / 2. weighting_score div: S1 and S2 hold the last click (1/1), S3 only the one before (1/2)."""
    s1, s2, s3 = 5 / 6, 1 / 2, 1 / 3
    model = fitted(VSKNN(6, k=3), train)
    expected = [s1, s1 + s2, s1 + s3 / 2, s2 + s3 / 2, s3 / 2, 0.0]
    assert scores_of(model, [1, 2, 1]) == pytest.approx(expected, abs=1e-12)
    # idf(i) = ln(4 sessions / clicks on i): 2 clicks on items 0-3, 1 on item 4
    model = fitted(VSKNN(6, k=3, idf_weighting=2.0), train)
    idf = [math.log(2)] * 4 + [math.log(4), math.log(4)]
    assert scores_of(model, [1, 2, 1]) == pytest.approx([e * (1 + 2 * f) for e, f in zip(expected, idf)], abs=1e-12)
    # remind=False: the session's own items score 0
    model = fitted(VSKNN(6, k=3, remind=False), train)
    assert scores_of(model, [1, 2, 1]) == pytest.approx([s1, 0.0, 0.0, s2 + s3 / 2, s3 / 2, 0.0], abs=1e-12)


def test_stan_decays_by_hand(train):
    """s = [1, 2, 1], lambda_spw 1: item 1 weighs e^0, item 2 e^-1; cosine with |n| = 3, 2, 3; time decay
    lambda_snh 1 day from the last training click (day 3): e^-3, e^-2, e^-1; lambda_inh 1: S1 = [0, 1, 2] has
    pos* = 3 (item 2), so items 0, 1, 2 weigh e^-2, e^-1, 1; S2 = [1, 3]: pos* 1, weights 1, e^-1;
    S3 = [2, 3, 4]: pos* 1, weights 1, e^-1, e^-2. k = 2 keeps S2 and S3 (S1's decay makes it the least similar)."""
    e = math.exp
    norm = math.sqrt(1 + e(-2))
    sim1 = (1 + e(-1)) / (norm * math.sqrt(3)) * e(-3)
    sim2 = 1 / (norm * math.sqrt(2)) * e(-2)
    sim3 = e(-1) / (norm * math.sqrt(3)) * e(-1)
    assert sim2 > sim3 > sim1
    model = fitted(STAN(6, k=2, lambda_spw=1.0, lambda_snh=1.0, lambda_inh=1.0), train)
    expected = [0.0, sim2, sim3, sim2 * e(-1) + sim3 * e(-1), sim3 * e(-2), 0.0]
    assert scores_of(model, [1, 2, 1]) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # VSTAN adds exp((p* - L) / lambda_ipw): S2's last shared click is s's last (p* = 3), S3's is p* = 2
    model = fitted(VSTAN(6, k=2, lambda_spw=1.0, lambda_snh=1.0, lambda_inh=1.0, lambda_ipw=1.0, lambda_idf=0.0),
                   train)
    expected = [0.0, sim2, sim3 * e(-1), sim2 * e(-1) + sim3 * e(-2), sim3 * e(-3), 0.0]
    assert scores_of(model, [1, 2, 1]) == pytest.approx(expected, rel=1e-12, abs=1e-15)


# ---------------------------------------------------------------- against a slow reference

def weight_of(name, p, length):
    return {'same': 1.0, 'div': p / length, 'linear': 1 - 0.1 * (length - p) if p <= 10 else 0.0,
            'quadratic': (p / length) ** 2, 'log': 1 / math.log10(length - p + 1.7)}[name]


def score_weight_of(name, q):
    return {'same': 1.0, 'div': 1 / q, 'linear': 1 - 0.1 * q if q <= 100 else 0.0, 'quadratic': 1 / q ** 2,
            'log': 1 / math.log10(q + 1.7)}[name]


def reference(kind, sessions, end_times, n_items, clicks, p):
    """Scores of every item for one session `clicks`, one candidate at a time (float64)."""
    length = len(clicks)
    last = {item: pos for pos, item in enumerate(clicks, 1)}
    if kind == 'VSKNN':
        w = {i: weight_of(p['weighting'], pos, length) for i, pos in last.items()}
    elif kind in ('STAN', 'VSTAN'):
        w = {i: math.exp((pos - length) / p['lambda_spw']) if p['lambda_spw'] else 1.0 for i, pos in last.items()}
    else:
        w = {i: 1.0 for i in last}
    recency = sorted(range(len(sessions)), key=lambda s: (end_times[s], s))       # oldest first
    candidates = [s for s in reversed(recency) if set(sessions[s]) & set(last)]
    if p['sample_size']:
        candidates = candidates[:p['sample_size']]
    t_max = max(end_times)
    scored = []
    for s in candidates:
        items = set(sessions[s])
        shared = set(last) & items
        overlap = sum(w[i] for i in sorted(shared))
        if kind == 'SKNN':
            sim = {'jaccard': overlap / len(set(last) | items), 'cosine': overlap / math.sqrt(len(last) * len(items)),
                   'binary': 2 * overlap / (2 * overlap + len(last) + len(items))}[p['similarity']]
        elif kind == 'VSKNN' and p['similarity'] == 'vec':
            sim = overlap / len(last)
        else:
            sim = overlap / (math.sqrt(sum(v * v for v in w.values())) * math.sqrt(len(items)))
        if kind in ('STAN', 'VSTAN') and p['lambda_snh']:
            sim *= math.exp(-(t_max - end_times[s]) / (p['lambda_snh'] * DAY))
        if kind in ('STAN', 'VSTAN') or sim > 0:
            scored.append((sim, recency.index(s), s))
    scored.sort(reverse=True)
    scores = [0.0] * n_items
    for sim, _, s in scored[:p['k']]:
        neighbour = sessions[s]
        p_star = max(last[i] for i in set(neighbour) & set(last))       # last click of s on an item of n
        pos_in = {item: pos for pos, item in enumerate(neighbour, 1)}
        n_star = max(pos_in[i] for i in set(neighbour) & set(last))       # last position in n of an item of s
        for item in set(neighbour):
            if not p.get('remind', True) and item in last:
                continue
            value = sim
            if kind in ('STAN', 'VSTAN') and p['lambda_inh']:
                value *= math.exp(-abs(pos_in[item] - n_star) / p['lambda_inh'])
            idf = math.log(len(sessions) / sum(x == item for ses in sessions for x in ses))
            if kind == 'VSKNN':
                value = value * (1 + p['idf_weighting'] * idf) * score_weight_of(p['weighting_score'],
                                                                                  length - p_star + 1)
            if kind == 'VSTAN':
                value *= (1 + p['lambda_idf'] * idf)
                if p['lambda_ipw']:
                    value *= math.exp((p_star - length) / p['lambda_ipw'])
            scores[item] += value
    return scores


CASES = [
    ('SKNN', dict(k=5, sample_size=0, similarity='jaccard')),
    ('SKNN', dict(k=3, sample_size=6, similarity='cosine')),
    ('SKNN', dict(k=4, sample_size=8, similarity='binary')),
    ('VSKNN', dict(k=5, sample_size=7, similarity='vec', weighting='linear', weighting_score='quadratic')),
    ('VSKNN', dict(k=3, sample_size=0, similarity='cosine', weighting='log', weighting_score='log',
                   idf_weighting=5.0, remind=False)),
    ('VSKNN', dict(k=6, sample_size=9, similarity='vec', weighting='quadratic', weighting_score='linear')),
    ('STAN', dict(k=4, sample_size=6, lambda_spw=0.9, lambda_snh=2.0, lambda_inh=0.45)),
    ('STAN', dict(k=8, sample_size=0, lambda_spw=0.0, lambda_snh=0.5, lambda_inh=3.0, remind=False)),
    ('VSTAN', dict(k=5, sample_size=7, lambda_spw=1.8, lambda_snh=4.0, lambda_inh=0.9, lambda_ipw=0.9,
                   lambda_idf=2.0)),
    ('VSTAN', dict(k=3, sample_size=0, lambda_spw=0.5, lambda_snh=0.0, lambda_inh=0.0, lambda_ipw=2.0,
                   lambda_idf=0.0)),
]


@pytest.mark.parametrize('kind,params', CASES, ids=[f'{k}-{i}' for i, (k, _) in enumerate(CASES)])
def test_batched_scores_equal_the_slow_reference(tmp_path, kind, params):
    """40 random training sessions over 12 items with distinct end times, 12 test prefixes (repeats included)
    scored in one batch: every score equal to the one-at-a-time reference."""
    rng = np.random.default_rng(len(params) * 7 + params['k'])
    sessions, rows, t = [], [], 0.0
    for s in range(40):
        length = int(rng.integers(2, 6))
        items = list(rng.integers(0, 12, length))
        sessions.append(items)
        for item in items:
            t += float(rng.integers(1, 20_000))
            rows.append((s + 1, f'x{item}', t))
    data = SessionData(write_split(tmp_path / 'train.txt', rows))
    order = [int(str(i)[1:]) for i in data.item_map.to_list()]          # our index -> the generator's item
    ours = {j: i for j, i in enumerate(order)}
    theirs = {i: j for j, i in ours.items()}
    sessions_ours = [[theirs[i] for i in s] for s in sessions]
    end_times = [float(t) for t in data.end_time]
    model = fitted(SESSION_KNN[kind](len(order), **params), data)
    prefixes = [list(rng.choice(order, int(rng.integers(1, 7)))) for _ in range(12)]
    prefixes = [[theirs[i] for i in p] for p in prefixes]
    state = torch.zeros(len(prefixes), model.max_seq_length + 1, dtype=torch.long)
    for r, p in enumerate(prefixes):
        state[r, 0] = len(p)
        state[r, 1:len(p) + 1] = torch.tensor(p)
    got = model.score_all(state)
    full = dict(SESSION_KNN_DEFAULTS[kind], **params)
    for r, p in enumerate(prefixes):
        expected = reference(kind, sessions_ours, end_times, len(order), p, full)
        np.testing.assert_allclose(got[r].numpy(), expected, rtol=1e-12, atol=1e-300, err_msg=str(p))


# ---------------------------------------------------------------- the same interface as every model

@pytest.mark.parametrize('name', list(SESSION_KNN))
def test_checkpoint_round_trip_and_evaluation(tmp_path, train, name):
    """The fitted tables are buffers of data-dependent size: a checkpoint holds them and a model built from
    the configuration alone loads them and scores the same."""
    model = fitted(SESSION_KNN[name](6, k=3), train)
    test = SessionData(write_split(tmp_path / 'test.txt', [(9, 'i1', 5 * DAY), (9, 'i2', 5 * DAY + 1),
                                                           (9, 'i3', 5 * DAY + 2), (8, 'i0', 5 * DAY),
                                                           (8, 'i5', 5 * DAY + 3)]), item_map=train.item_map)
    before = evaluate(model, test)
    config = dict(SESSION_KNN_DEFAULTS[name], k=3, model=name)
    rebuilt = checkpoints.build_model(config, 6, 'cpu')
    rebuilt.load_state_dict(model.state_dict())
    assert evaluate(rebuilt, test) == before
    assert scores_of(rebuilt, [1, 2, 1]) == scores_of(model, [1, 2, 1])
