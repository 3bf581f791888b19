"""scripts/faithfulness.py without the official code: our variants over seeds, the table, bad input.
(The lockstep and the official rows need a clone of the official code; benchmarks/RESULTS.md has them.)"""
import json

import pytest
import torch

from cli import InputError
from conftest import synthetic_split
from scripts import faithfulness


def test_summary_table_means_spread_and_distance_to_the_official_mean():
    rows = [('p', 'official', [(0.60, 0.30), (0.62, 0.32)]),
            ('p', 'ours: default', [(0.63, 0.33), (0.63, 0.31)])]
    table = faithfulness.summary(rows, [1, 2]).splitlines()
    assert table[0].startswith('| preset | code | R@20 seed 1 | R@20 seed 2 | R@20 mean ± sd |')
    assert table[2] == '| p | official | 0.6000 | 0.6200 | 0.6100 ± 0.0141 | +0.00% | 0.3100 ± 0.0141 | +0.00% |'
    assert table[3] == '| p | ours: default | 0.6300 | 0.6300 | 0.6300 ± 0.0000 | +3.28% | 0.3200 ± 0.0141 | +3.23% |'


@pytest.fixture
def threads_kept():
    """faithfulness.main sets torch's thread count for the process (--threads); the later tests keep theirs."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_our_variants_over_seeds(tmp_path, capsys, threads_kept):
    synthetic_split(tmp_path, n_sessions=600, n_items=80, seed=4)
    out = tmp_path / 'runs.json'
    faithfulness.main(['--data_folder', str(tmp_path), '--presets', 'rsc15_xe_shared_100', '--variants', 'default',
                       'all', '--seeds', '1', '2', '--n_epochs', '1', '--out', str(out)])
    printed = capsys.readouterr().out
    assert '| rsc15_xe_shared_100 | ours: default |' in printed and '| rsc15_xe_shared_100 | ours: all |' in printed
    runs = json.loads(out.read_text())['runs']
    assert [(r['code'], r['seed']) for r in runs] == [('ours: default', 1), ('ours: default', 2),
                                                      ('ours: all', 1), ('ours: all', 2)]
    # (Recall, MRR), not Recall alone: Recall is a hit count of 188 predictions, equal at two seeds in 5 of 66
    # pairs (issue #32); MRR sums reciprocal ranks and practically never ties
    scores = [(r['recall'], r['mrr']) for r in runs]
    assert scores[0] != scores[1]                               # the seed reaches the run
    assert scores[0] != scores[2]                               # and so do the quirks (other dropout draws)
    assert runs[0]['metrics']['Recall@20'] == runs[0]['recall']


def test_missing_files_are_one_clear_error(tmp_path, threads_kept):
    with pytest.raises(InputError, match='no yoochoose1_64_train_full.txt'):
        faithfulness.main(['--data_folder', str(tmp_path), '--name', 'yoochoose1_64', '--seeds', '1'])
