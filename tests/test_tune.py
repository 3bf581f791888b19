"""scripts/tune.py: space files, a tiny search with its resume, the final retrain, failures and bad input."""
import csv
import json
import os

import numpy as np
import pytest

from cli import InputError
from conftest import run_command, synthetic_split
import main
from scripts import tune


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp('tune_data')
    synthetic_split(folder, 600, 80, seed=4)
    return folder


def space_file(tmp_path, text, name='space.test'):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


SMALL_SPACE = ('layers choice [8,16]\nbatch_size choice [8]\nlearning_rate choice [0.05,0.1]\n'
               '{"name": "dropout_p_hidden", "dtype": "float", "values": [0.0, 0.3], "step": 0.1}\n')


def rows_of(run_dir):
    with open(os.path.join(run_dir, 'trials.csv'), newline='') as f:
        return list(csv.DictReader(f))


def test_space_formats_and_random_draws(tmp_path):
    space = tune.read_space(space_file(tmp_path, SMALL_SPACE + 'momentum loguniform -3,0\n'), 'GRU4Rec')
    assert [p['key'] for p in space] == ['layers', 'batch_size', 'lr', 'dropout_hidden', 'momentum']
    assert space[3] == dict(name='dropout_p_hidden', key='dropout_hidden', kind='float', low=0.0, high=0.3,
                            step=0.1, log=False)
    assert space[4]['log'] and space[4]['low'] == pytest.approx(np.exp(-3)) and space[4]['high'] == pytest.approx(1)
    draws = [tune.sample_random(space, np.random.default_rng(s)) for s in range(200)]
    assert {d['layers'] for d in draws} == {8, 16} and {d['learning_rate'] for d in draws} == {0.05, 0.1}
    assert {round(d['dropout_p_hidden'], 10) for d in draws} == {0.0, 0.1, 0.2, 0.3}     # the grid, ends included
    assert all(np.exp(-3) <= d['momentum'] <= 1 for d in draws)
    official = tune.read_space(tune.SPACES['bprmax'], 'GRU4Rec')
    assert [p['name'] for p in official][-2:] == ['bpreg', 'final_act']
    assert official[0] == dict(name='layers', key='layers', kind='int', low=64, high=512, step=32, log=False)


@pytest.mark.parametrize('text,model,message', [
    ('layers choice [8]\nwidth choice [1,2]\n', 'GRU4Rec', r'space.test, line 2: GRU4Rec has no parameter \'width\''),
    ('layers choice []\n', 'GRU4Rec', 'line 1: layers has no choices'),
    ('layers\n', 'GRU4Rec', 'line 1: expected "name choice'),
    ('layers choice [8,\n', 'GRU4Rec', 'line 1: cannot read the values'),
    ('alpha uniform 0.9,0.1\n', 'ItemKNN', 'line 1: alpha: bad range'),
    ('{"name": "lmbd", "dtype": "double", "values": [1, 2]}\n', 'ItemKNN', 'line 1: dtype must be'),
    ('{"name": "lmbd"\n', 'ItemKNN', 'line 1: expected {"name"'),
    ('# nothing\n', 'ItemKNN', 'no parameters'),
    ('n_sims choice [5]\nn_sims choice [6]\n', 'ItemKNN', "line 2: 'n_sims' appears twice"),
])
def test_bad_space_files_name_the_line(tmp_path, text, model, message):
    with pytest.raises(InputError, match=message):
        tune.read_space(space_file(tmp_path, text), model)


def test_search_resume_and_final_retrain_agree(data, tmp_path):
    space = space_file(tmp_path, SMALL_SPACE)
    common = ['--space', space, '--data', str(data), '--epochs', '1', '--sampler', 'random', '--tune_dir', str(tmp_path / 't')]
    tune.main_([*common, '--trials', '1'])
    run_dir = str(tmp_path / 't' / os.listdir(tmp_path / 't')[0])
    first = rows_of(run_dir)
    result = tune.main_(['--resume', run_dir, '--trials', '3'])
    rows = rows_of(run_dir)
    assert len(rows) == 3 and rows[0] == first[0] and all(r['status'] == 'ok' for r in rows)
    best = max(rows, key=lambda r: float(r['value']))
    saved = json.loads(open(os.path.join(run_dir, 'best.json')).read())
    assert saved['best_trial'] == int(best['trial']) and saved['valid']['MRR@20'] == pytest.approx(float(best['value']))
    assert {k: str(v) for k, v in saved['params'].items()} == {k: best[k] for k in saved['params']}
    assert saved['trials'] == 3 and result['test'] == saved['test']
    assert all(r['value'] == r['mrr@20'] and 0 < float(r['recall@20']) <= 1 for r in rows)
    checkpoint = os.path.join(tune.ROOT, saved['checkpoint'])
    again = main.main(['--is_eval', '--load_model', checkpoint, '--data_folder', str(data), '--valid_data', 'rsc15_test.txt'])
    assert again['MRR@20'] == pytest.approx(saved['test']['MRR@20'])        # the final model is what was reported
    assert again['n_predictions'] == saved['test']['n_predictions']
    config = json.loads(open(os.path.join(os.path.dirname(checkpoint), 'config.json')).read())
    assert config['train_data'].endswith('rsc15_train_full.txt') and config['layers'] == [saved['params']['layers']]
    assert os.path.isfile(os.path.join(run_dir, 'search.png'))


def test_failed_trials_are_recorded_not_fatal(data, tmp_path):
    space = space_file(tmp_path, 'learning_rate choice [1e999]\noptimizer choice ["SGD"]\nn_sample choice [0]\n')
    with pytest.raises(InputError, match='every trial failed'):
        tune.main_(['--space', space, '--data', str(data), '--epochs', '1', '--trials', '2', '--sampler', 'random',
                    '--tune_dir', str(tmp_path / 't')])
    run_dir = tmp_path / 't' / os.listdir(tmp_path / 't')[0]
    rows = rows_of(run_dir)
    assert [r['status'] for r in rows] == ['failed', 'failed'] and 'exit status 3' in rows[0]['error']


def test_command_line_bad_input(tmp_path):
    cases = [(['--metric', 'ndcg@20'], 'expected mrr@K or recall@K'),
             (['--model', 'ItemKNN'], 'needs --space FILE'),
             (['--space', str(tmp_path / 'none.json')], 'no such file'),
             (['--data', str(tmp_path)], 'no rsc15_train_tr.txt'),
             (['--resume', str(tmp_path)], 'not a tune.py folder')]
    for argv, message in cases:
        result = run_command('scripts/tune.py', *argv, '--tune_dir', str(tmp_path / 't'))
        assert result.returncode == 2 and message in result.stderr, (argv, result.stderr)
        assert result.stderr.count('\n') == 1
    assert not os.path.exists(tmp_path / 't')                # refused before any search folder was made


def test_optuna_search_resumes_with_its_history(data, tmp_path):
    pytest.importorskip('optuna')
    space = space_file(tmp_path, SMALL_SPACE)
    common = ['--space', space, '--data', str(data), '--epochs', '1', '--sampler', 'tpe', '--tune_dir', str(tmp_path / 't')]
    tune.main_([*common, '--trials', '2'])
    run_dir = str(tmp_path / 't' / os.listdir(tmp_path / 't')[0])
    tune.main_(['--resume', run_dir, '--trials', '3'])
    rows = rows_of(run_dir)
    assert [r['trial'] for r in rows] == ['0', '1', '2'] and all(r['status'] == 'ok' for r in rows)
    assert all(r['layers'] in ('8', '16') and r['batch_size'] == '8' for r in rows)
