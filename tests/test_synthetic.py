"""scripts/make_synthetic.py: deterministic, raw format, long tails and learnable sequential structure."""
import numpy as np

import preprocessing
from conftest import run_command
from scripts.make_synthetic import generate


def test_deterministic_by_seed():
    a, b, c = generate(500, 100, seed=7), generate(500, 100, seed=7), generate(500, 100, seed=8)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a['item'], c['item'])


def test_statistics_are_long_tailed():
    clicks = generate(20_000, 2_000, mean_length=3.6, days=90, seed=0)
    lengths = np.bincount(np.unique(clicks['session'], return_inverse=True)[1])
    assert 3.3 < lengths.mean() < 3.9
    assert 0.15 < (lengths == 1).mean() < 0.4 and lengths.max() >= 30
    support = np.sort(np.bincount(np.unique(clicks['item'], return_inverse=True)[1]))[::-1]
    assert support[:20].sum() > 0.05 * support.sum() and support[-1] < support[0] / 50
    span_days = (clicks['time_ms'].max() - clicks['time_ms'].min()) / 86_400_000
    assert 85 < span_days <= 90.1
    assert np.all(np.diff(clicks['session']) >= 0)            # written in session-id order


def test_next_item_is_predictable_from_the_current_item_but_not_from_popularity():
    clicks = generate(20_000, 1_000, seed=1)
    same = clicks['session'][1:] == clicks['session'][:-1]
    current, following = clicks['item'][:-1][same], clicks['item'][1:][same]
    half = len(current) // 2
    pairs = {}
    for a, b in zip(current[:half], following[:half]):
        pairs.setdefault(a, {}).setdefault(b, 0)
        pairs[a][b] += 1
    best_next = {a: max(c, key=c.get) for a, c in pairs.items()}
    transition_hits = np.mean([best_next.get(a) == b for a, b in zip(current[half:], following[half:])])
    values, counts = np.unique(following[:half], return_counts=True)
    popularity_hits = np.mean(following[half:] == values[counts.argmax()])
    assert transition_hits > 0.25 and transition_hits > 5 * popularity_hits


def test_command_writes_a_file_that_preprocessing_reads(tmp_path):
    out = tmp_path / 'syn' / 'yoochoose-clicks.dat'
    result = run_command('scripts/make_synthetic.py', '--out', str(out), '--sessions', '3000', '--items', '300',
                         '--days', '10')
    assert result.returncode == 0, result.stderr
    first = out.read_text().splitlines()[0].split(',')
    assert len(first) == 4 and first[1].endswith('Z') and len(first[1]) == 24
    clicks = preprocessing.read_clicks(str(out))
    assert len(clicks['item']) > 3000
    bad = run_command('scripts/make_synthetic.py', '--out', str(tmp_path / 'x.dat'), '--sessions', '0')
    assert bad.returncode == 2 and bad.stderr.count('\n') == 1 and not (tmp_path / 'x.dat').exists()
