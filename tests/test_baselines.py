"""baselines.py: POP, S-POP, Item-KNN and BPR-MF against hand-computed scores and slow references (spec E2)."""
import math

import numpy as np
import pytest
import torch

from baselines import BASELINE_DEFAULTS, BPRMF, ItemKNN, Pop, SessionPop, top_k
from conftest import fitted, steps, write_split
from dataset import SessionData
from evaluation import evaluate, target_ranks

# items by first appearance: A=0, B=1, C=2, D=3; support A 3, B 3, C 3, D 2
TRAIN = [(1, 'A', 1), (1, 'B', 2), (1, 'A', 3), (1, 'C', 4), (2, 'B', 5), (2, 'C', 6),
         (3, 'A', 7), (3, 'C', 8), (3, 'D', 9), (4, 'D', 10), (4, 'B', 11)]


@pytest.fixture
def train(tmp_path):
    return SessionData(write_split(tmp_path / 'train.txt', TRAIN))


def test_pop_top_n_of_support_over_one_plus_support(train):
    pop = fitted(Pop(4, top_n=2), train)
    assert pop.popularity.tolist() == pytest.approx([0.75, 0.75, 0.0, 0.0])    # tie A, B, C: lower index kept
    assert steps(pop, [3, 2]) == [pytest.approx([0.75, 0.75, 0, 0])] * 2        # the same for every session
    assert fitted(Pop(4, top_n=100), train).popularity.tolist() == pytest.approx([.75, .75, .75, 2 / 3])


def test_session_pop_counts_the_session_so_far_plus_pop(train):
    spop = fitted(SessionPop(4, top_n=2), train)
    assert steps(spop, [2, 0, 0, 1]) == [pytest.approx(s) for s in (
        [0.75, 0.75, 1, 0], [1.75, 0.75, 1, 0], [2.75, 0.75, 1, 0], [2.75, 1.75, 1, 0])]


def test_item_knn_hand_computed_similarities(train):
    # c(i, j) = clicks on i whose session holds j: c(A,B) = 2 (A twice in session 1) but c(B,A) = 1
    knn = fitted(ItemKNN(4, n_sims=2, lmbd=0.0, alpha=0.5), train)
    r6 = 1 / math.sqrt(6)
    expected = {0: ([2, 1], [1.0, 2 / 3]), 1: ([2, 3], [2 / 3, r6]), 2: ([0, 1], [2 / 3, 2 / 3]),
                3: ([0, 1], [r6, r6])}
    for item, (neighbours, similarity) in expected.items():
        assert knn.neighbours[item].tolist() == neighbours
        assert knn.similarity[item].tolist() == pytest.approx(similarity)
    assert steps(knn, [1, 0]) == [pytest.approx([0, 0, 2 / 3, r6]), pytest.approx([0, 2 / 3, 1, 0])]


def official_item_knn(data, n, n_sims, lmbd, alpha):
    """A slow transcription of the official per-item loop (fancy-index += adds once per distinct item)."""
    lengths = np.diff(data.offsets)
    session = np.repeat(np.arange(len(lengths)), lengths)
    support = np.bincount(data.items, minlength=n)
    sims = np.zeros((n, n))
    for i in range(n):
        row = np.zeros(n)
        for click in np.flatnonzero(data.items == i):
            s = session[click]
            row[data.items[data.offsets[s]:data.offsets[s + 1]]] += 1
        row[i] = 0
        sims[i] = row / ((support[i] + lmbd) ** alpha * (support + lmbd) ** (1 - alpha))
    return sims


def test_item_knn_blocks_match_the_official_loop(tmp_path):
    rng = np.random.default_rng(3)
    rows, t = [], 0
    for s in range(60):
        for _ in range(rng.integers(2, 9)):
            t += 1
            rows.append((s, f'i{rng.zipf(1.5) % 25}', t))
    data = SessionData(write_split(tmp_path / 't.txt', rows))
    n = len(data.item_map)
    reference = official_item_knn(data, n, 5, 20.0, 0.3)
    for max_cells in (n, 7 * n, 1 << 24):                 # one item per block, a few, all at once
        knn = ItemKNN(n, n_sims=5, lmbd=20.0, alpha=0.3)
        for _ in knn.fit(data, max_cells=max_cells):
            pass
        kept = np.take_along_axis(reference, knn.neighbours.numpy(), 1)
        np.testing.assert_allclose(knn.similarity.numpy(), kept, rtol=1e-6)
        np.testing.assert_allclose(knn.similarity.numpy(), -np.sort(-reference, 1)[:, :5], rtol=1e-6)


def test_bpr_mf_batch_of_one_is_the_official_sgd_loop(train):
    model = BPRMF(4, n_factors=3, n_epochs=2, lr=0.5, lambda_session=0.01, lambda_item=0.02, sigma=0.3,
                  batch_size=1, seed=7)
    losses = list(model.fit(train))
    rng = np.random.default_rng(7)                        # the same draws, per click, in float64
    session = np.repeat(np.arange(train.n_sessions), np.diff(train.offsets))
    users = rng.uniform(-0.3, 0.3, (train.n_sessions, 3)).astype(np.float32).astype(np.float64)
    factors = rng.uniform(-0.3, 0.3, (4, 3)).astype(np.float32).astype(np.float64)
    expected = []
    for _ in range(2):
        order = rng.permutation(train.n_events)
        negatives = train.items[rng.integers(4, size=train.n_events)]     # a random one of the first N clicks
        total = 0.0
        for click, n in zip(order, negatives):
            u, p = session[click], train.items[click]
            uf, pf, nf = users[u].copy(), factors[p].copy(), factors[n].copy()
            sigmoid = 1 / (1 + np.exp(-uf @ (pf - nf)))
            users[u] += 0.5 * ((1 - sigmoid) * (pf - nf) - 0.01 * uf)
            factors[p] += 0.5 * ((1 - sigmoid) * uf - 0.02 * pf)
            factors[n] += 0.5 * (-(1 - sigmoid) * uf - 0.02 * nf)
            total += np.log(sigmoid)
        expected.append(total / train.n_events)
    assert losses == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(model.item_factors.numpy(), factors, atol=1e-5)


@pytest.mark.parametrize('negatives', ['first_rows', 'uniform'])
def test_bpr_mf_batched_steps_and_negatives(train, negatives):
    """A mini-batch computes every click's update from the factors before it, then adds them all (duplicates add)."""
    assert BPRMF(4).batch_size == 1024 and BASELINE_DEFAULTS['BPRMF']['batch_size'] == 1024
    model = BPRMF(13, n_factors=3, n_epochs=2, lr=0.5, lambda_session=0.01, lambda_item=0.02, sigma=0.3,
                  batch_size=4, negatives=negatives, seed=3)      # items 4-12 have no click (11 clicks in all)
    losses = list(model.fit(train))
    rng = np.random.default_rng(3)
    session = np.repeat(np.arange(train.n_sessions), np.diff(train.offsets))
    users = rng.uniform(-0.3, 0.3, (train.n_sessions, 3)).astype(np.float32).astype(np.float64)
    factors = rng.uniform(-0.3, 0.3, (13, 3)).astype(np.float32).astype(np.float64)
    expected, drawn = [], set()
    for _ in range(2):
        order = rng.permutation(train.n_events)
        if negatives == 'uniform':                                   # any of the 13 items
            draws = rng.integers(13, size=train.n_events)
        else:                                                        # the item of one of the first min(N, 11) clicks
            draws = train.items[rng.integers(11, size=train.n_events)]
        drawn.update(draws.tolist())
        total = 0.0
        for start in range(0, train.n_events, 4):
            new_users, new_factors = users.copy(), factors.copy()
            for click, n in zip(order[start:start + 4], draws[start:start + 4]):
                u, p = session[click], train.items[click]
                uf, pf, nf = users[u], factors[p], factors[n]
                sigmoid = 1 / (1 + np.exp(-uf @ (pf - nf)))
                new_users[u] += 0.5 * ((1 - sigmoid) * (pf - nf) - 0.01 * uf)
                new_factors[p] += 0.5 * ((1 - sigmoid) * uf - 0.02 * pf)
                new_factors[n] += 0.5 * (-(1 - sigmoid) * uf - 0.02 * nf)
                total += np.log(sigmoid)
            users, factors = new_users, new_factors
        expected.append(total / train.n_events)
    assert losses == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(model.item_factors.numpy(), factors, atol=1e-5)
    assert (max(drawn) == 12) == (negatives == 'uniform')


def test_bpr_mf_predicts_from_the_mean_of_the_session_items():
    model = BPRMF(3, n_factors=2)
    model.item_factors.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]))
    assert steps(model, [0, 1]) == [pytest.approx([1, 0, 1]), pytest.approx([0.5, 2, 1.5])]


def test_baselines_go_through_the_common_evaluation(train, tmp_path):
    test = SessionData(write_split(tmp_path / 'test.txt', [(9, 'C', 1), (9, 'A', 2), (9, 'A', 3), (9, 'B', 4)]),
                       item_map=train.item_map)
    spop = fitted(SessionPop(4, top_n=2), train)
    result = evaluate(spop, test, cutoffs=(1, 2))
    # targets A, A, B ranked 2 (C's count 1 beats A's 0.75), 1, 3 (A 2.75 and C 1 beat B 0.75)
    assert result['Recall@1'] == pytest.approx(1 / 3) and result['Recall@2'] == pytest.approx(2 / 3)
    assert result['MRR@2'] == pytest.approx((1 / 2 + 1) / 3)
    knn = fitted(ItemKNN(4, n_sims=2, lmbd=0.0, alpha=0.5), train)
    scores = knn.score_all(torch.tensor([[2]]))           # after C: A and B tie at 2/3
    assert target_ranks(scores, torch.tensor([0]), 'standard').item() == 1
    assert target_ranks(scores, torch.tensor([0]), 'conservative').item() == 2
    assert target_ranks(scores, torch.tensor([3]), 'standard').item() == 3      # D: one of the two zeros


def test_top_k_prefers_the_lower_index_among_ties():
    matrix = torch.from_numpy(np.random.default_rng(0).integers(0, 4, (50, 30)).astype(np.float64))
    values, indices = top_k(matrix, 7)
    reference = np.argsort(-matrix.numpy(), axis=1, kind='stable')[:, :7]
    assert indices.tolist() == reference.tolist()
    assert values.tolist() == np.take_along_axis(matrix.numpy(), reference, 1).tolist()
