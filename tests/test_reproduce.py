"""scripts/reproduce.py: the table and chart of a small run, and its bad input."""
import csv
import json
import os

import pytest

from conftest import run_command


def test_quick_run_of_two_models_writes_table_json_and_chart(tmp_path):
    result = run_command('scripts/reproduce.py', '--quick', '--only', 'POP', 'S-POP', '--results_dir', str(tmp_path),
                         '--name', 'q')
    assert result.returncode == 0, result.stderr
    out = tmp_path / 'q'
    assert sorted(os.listdir(out)) == ['checkpoints', 'comparison.png', 'results.json', 'table.md']
    table = (out / 'table.md').read_text()
    rows = [line for line in table.splitlines() if line.startswith('| POP') or line.startswith('| S-POP')]
    assert len(rows) == 2 and "0.0050 / 0.0012 (ICLR'16 Table 1)" in rows[0]
    assert 'a hit is rank <= K' in table and 'standard ties' in table
    runs = {name: run['mean'] for name, run in json.loads((out / 'results.json').read_text())['runs'].items()}
    assert runs['S-POP']['Recall@20'] > runs['POP']['Recall@20'] > 0      # session counts beat popularity alone
    assert f'{runs["POP"]["Recall@20"]:.4f}' in rows[0]
    assert (out / 'comparison.png').read_bytes()[:4] == b'\x89PNG'


def test_bad_input_is_one_line(tmp_path):
    blocked = tmp_path / 'file'
    blocked.write_text('not a folder')
    cases = [(['--quick', '--results_dir', str(blocked)], 'cannot write there'),
             (['--data', str(tmp_path / 'none'), '--results_dir', str(tmp_path)], 'no rsc15_train_full.txt'),
             (['--quick', '--only', 'KNN', '--results_dir', str(tmp_path)], '--only KNN: no such model')]
    for argv, message in cases:
        result = run_command('scripts/reproduce.py', *argv)
        assert result.returncode == 2 and message in result.stderr, (argv, result.stderr)
        assert result.stderr.count('\n') == 1 and 'Traceback' not in result.stderr


# ---------------------------------------------------------------- --benchmark srgnn

def srg_folder(folder, prefix='toy1_64'):
    """A tiny SRG-layout folder (the four files of srgnn.write), 9 training and 2 test sessions."""
    import srgnn
    train = [[1, 2, 3], [2, 3], [3, 1, 2], [1, 2], [2, 3, 1], [3, 2], [1, 3], [2, 1, 3], [3, 1]]
    sets = {'train_full': train, 'test': [[1, 2, 3], [3, 2]], 'train_tr': train[:8], 'train_valid': train[8:]}
    times = {part: [float(t) for t in range(sum(map(len, s)))] for part, s in sets.items()}
    sets = {part: srgnn.flat_sessions(s) for part, s in sets.items()}
    srgnn.write(str(folder), prefix, sets, times, {'train_full': 1, 'train_tr': 1, 'train_valid': 9, 'test': 10},
                {}, log=lambda *a: None)
    return str(folder)


def test_srgnn_benchmark_table_marks_failures_and_reports_mean_std(tmp_path, monkeypatch):
    from scripts import reproduce
    data = srg_folder(tmp_path / 'data')
    calls = []

    def fake_run(flags, data_folder, checkpoints, device, train, test, seed, tie_mode='standard'):
        calls.append((flags[-1], seed, train, test))
        if flags == ['--model', 'STAMP']:
            raise RuntimeError('out of memory')
        recall = {1: 0.4, 2: 0.6}.get(seed, 0.5)
        return {'Recall@20': recall, 'MRR@20': recall / 2, 'n_predictions': 4, 'tie_mode': 'standard', 'seconds': 3.0}

    monkeypatch.setattr(reproduce, 'run_one', fake_run)
    reproduce.main_(['--benchmark', 'srgnn', '--data', data, '--seeds', '1', '2', '--results_dir', str(tmp_path / 'r'),
                     '--only', 'POP', 'STAMP', 'GRU4Rec XE + logQ, shared', '--device', 'cpu'])
    assert [c[:2] for c in calls] == [('POP', 1), ('STAMP', 1), ('STAMP', 2), ('rsc15_xe_shared_100', 1),
                                      ('rsc15_xe_shared_100', 2)]       # POP is deterministic: one run
    assert calls[0][2:] == ('toy1_64_train_full.txt', 'toy1_64_test.txt')
    out = tmp_path / 'r' / 'toy1_64'
    rows = {line.split(' | ')[0][2:]: line for line in (out / 'table.md').read_text().splitlines()
            if line.startswith('| ')}
    assert rows['POP'] == '| POP | 0.4000 | 0.2000 | 1 | 3 | 6.71 / 1.65 |'     # one run: no spread shown
    assert rows['STAMP'].startswith('| STAMP | **failed** (RuntimeError: out of memory) | - | 0 |')
    assert rows['GRU4Rec XE + logQ, shared'] == ('| GRU4Rec XE + logQ, shared | 0.5000 ± 0.1414 | 0.2500 ± 0.0707 | 2 | '
                                                 '3 | 60.64 / 22.89 (third-party run, settings unknown) |')
    record = json.loads((out / 'results.json').read_text())
    p = record['provenance']
    assert len(p['commit']) == 40 and p['dirty'] in (True, False) and p['seeds'] == [1, 2] and p['device'] == 'cpu'
    assert {'python', 'torch', 'numpy', 'pandas', 'threads'} <= set(p)
    assert {os.path.basename(k): v['events'] for k, v in p['data'].items()} == {'toy1_64_train_full.txt': 22,
                                                                              'toy1_64_test.txt': 5}
    assert record['runs']['STAMP']['per_seed'][1] == {'failed': 'RuntimeError: out of memory', 'seed': 2}
    assert record['published']['dataset'] == 'yoochoose1_64'
    assert (out / 'comparison.png').read_bytes()[:4] == b'\x89PNG'


def test_srgnn_benchmark_runs_models_for_real(tmp_path):
    data = srg_folder(tmp_path / 'data', prefix='toy')
    result = run_command('scripts/reproduce.py', '--benchmark', 'srgnn', '--data', data, '--only', 'S-POP', 'POP',
                         '--results_dir', str(tmp_path / 'r'), '--threads', '1')
    assert result.returncode == 0, result.stderr
    table = (tmp_path / 'r' / 'toy' / 'table.md').read_text()
    assert table.index('| S-POP |') < table.index('| POP |')              # --only's order
    assert 'No published table' in table
    runs = json.loads((tmp_path / 'r' / 'toy' / 'results.json').read_text())['runs']
    assert runs['POP']['per_seed'][0]['n_predictions'] == 3                 # 1 2 3 | 3 2: three predictions


def test_tuned_row_is_the_best_validation_trial_retrained(tmp_path):
    """--tune_trials 3 --tuned_only --tie_mode median: SKNN's row is the test score of tune.py's best trial,
    retrained on train_full (the same run as main.py with those settings and ties); --resume runs nothing again."""
    from scripts import reproduce
    data = srg_folder(tmp_path / 'data', prefix='toy')
    argv = ['--benchmark', 'srgnn', '--data', data, '--only', 'SKNN', '--tune_trials', '3', '--tuned_only',
            '--results_dir', str(tmp_path / 'r'), '--device', 'cpu', '--tie_mode', 'median']
    reproduce.main_(argv)
    out = tmp_path / 'r' / 'toy'
    runs = json.loads((out / 'results.json').read_text())['runs']
    assert list(runs) == ['SKNN (tuned: 3 trials)']
    row = runs['SKNN (tuned: 3 trials)']['per_seed'][0]
    trials = list(csv.DictReader(open(out / 'tune' / 'SKNN' / 'trials.csv')))
    assert len(trials) == 3
    best = max((t for t in trials if t['status'] == 'ok'), key=lambda t: float(t['value']))
    assert row['tuned'] == {'k': int(best['k']), 'sample_size': int(best['sample_size']),
                            'similarity': best['similarity']}
    import main
    _, again = main.main(['--model', 'SKNN', '--data_folder', data, '--train_data', 'toy_train_full.txt',
                          '--valid_data', 'toy_test.txt', '--checkpoint_dir', str(tmp_path / 'ck'), '--params',
                          ','.join(f'{k}={v}' for k, v in row['tuned'].items()), '--tie_mode', 'median'])
    assert row['tie_mode'] == again['tie_mode'] == 'median'
    assert row['Recall@20'] == again['Recall@20'] and row['MRR@20'] == again['MRR@20']
    assert 'Tuned rows: 3 trials each' in (out / 'table.md').read_text()
    reproduce.main_(argv + ['--resume'])
    assert len(list(csv.DictReader(open(out / 'tune' / 'SKNN' / 'trials.csv')))) == 3


def test_srgnn_bad_input_is_one_line(tmp_path):
    two = srg_folder(tmp_path / 'two', 'a')
    srg_folder(tmp_path / 'two', 'b')
    cases = [(['--data', str(tmp_path / 'none')], '--data ' + str(tmp_path / 'none') + ': no such folder'),
             (['--data', two], 'found 2 (a, b; pass --prefix)'),
             (['--data', two, '--prefix', 'a', '--seeds', '1', '1'], '--seeds must be distinct'),
             (['--data', two, '--prefix', 'a', '--only', 'POP', 'KNN'], '--only POP KNN: no such model')]
    for argv, message in cases:
        result = run_command('scripts/reproduce.py', '--benchmark', 'srgnn', '--results_dir', str(tmp_path / 'r'),
                             *argv)
        assert result.returncode == 2 and message in result.stderr, (argv, result.stderr)
        assert result.stderr.count('\n') == 1 and 'Traceback' not in result.stderr


def test_event_counts_of_provenance(tmp_path):
    from provenance import count_events
    for text, events in (('SessionId\tItemId\tTime\n1\t2\t3\n1\t3\t4\n', 2), ('h\n1\n2', 2), ('h\n', 0), ('h', 0)):
        (tmp_path / 'f').write_text(text)
        assert count_events(str(tmp_path / 'f')) == events, text
    assert count_events(str(tmp_path / 'missing')) is None


def test_srgnn_benchmark_cut_off_mid_model_keeps_its_finished_seeds(tmp_path, monkeypatch):
    from scripts import reproduce
    data = srg_folder(tmp_path / 'data')

    def fake_run(flags, data_folder, checkpoints, device, train, test, seed, tie_mode='standard'):
        if flags[-1] == 'NARM' and seed == 3:
            raise KeyboardInterrupt                 # the user stops a long benchmark during NARM's third seed
        return {'Recall@20': 0.1 * seed, 'MRR@20': 0.05 * seed, 'n_predictions': 4, 'tie_mode': 'standard',
                'seconds': 1.0, 'seed': seed}

    monkeypatch.setattr(reproduce, 'run_one', fake_run)
    with pytest.raises(KeyboardInterrupt):
        reproduce.main_(['--benchmark', 'srgnn', '--data', data, '--seeds', '1', '2', '3', '--results_dir',
                         str(tmp_path / 'r'), '--only', 'STAMP', 'NARM', '--device', 'cpu'])
    out = tmp_path / 'r' / 'toy1_64'
    runs = json.loads((out / 'results.json').read_text())['runs']
    assert [r['seed'] for r in runs['STAMP']['per_seed']] == [1, 2, 3]
    assert [r['seed'] for r in runs['NARM']['per_seed']] == [1, 2]          # written after each seed, not each model
    rows = {line.split(' | ')[0][2:]: line for line in (out / 'table.md').read_text().splitlines()
            if line.startswith('| ')}
    assert rows['NARM'].startswith('| NARM | 0.1500 ± 0.0707 | 0.0750 ± 0.0354 | 2 |')


def test_resume_with_other_ties_runs_again(tmp_path, monkeypatch):
    """Runs scored with standard ties are not kept by a --resume that asks for median ties."""
    from scripts import reproduce
    data = srg_folder(tmp_path / 'data')
    calls = []

    def fake_run(flags, data_folder, checkpoints, device, train, test, seed, tie_mode='standard'):
        calls.append((flags[-1], tie_mode))
        return {'Recall@20': 0.5, 'MRR@20': 0.2, 'n_predictions': 4, 'tie_mode': tie_mode, 'seconds': 1.0}

    monkeypatch.setattr(reproduce, 'run_one', fake_run)
    argv = ['--benchmark', 'srgnn', '--data', data, '--only', 'SKNN', '--results_dir', str(tmp_path / 'r'),
            '--device', 'cpu', '--resume']
    reproduce.main_(argv)
    reproduce.main_(argv)                                       # the same ties: nothing to run
    reproduce.main_(argv + ['--tie_mode', 'median'])
    assert calls == [('SKNN', 'standard'), ('SKNN', 'median')]
    record = json.loads((tmp_path / 'r' / 'toy1_64' / 'results.json').read_text())
    assert [r['tie_mode'] for r in record['runs']['SKNN']['per_seed']] == ['median']


def test_srgnn_benchmark_resume_runs_only_the_missing_seeds(tmp_path, monkeypatch):
    from scripts import reproduce
    data = srg_folder(tmp_path / 'data')
    calls, resumed = [], []

    def fake_run(flags, data_folder, checkpoints, device, train, test, seed, tie_mode='standard'):
        calls.append((flags[-1], seed))
        if not resumed and flags[-1] == 'NARM' and seed == 2:
            raise KeyboardInterrupt                         # the first run is stopped in NARM's second seed
        if not resumed and flags[-1] == 'STAMP':
            raise RuntimeError('out of memory')             # STAMP fails the first time only
        return {'Recall@20': 0.1 * seed, 'MRR@20': 0.05 * seed, 'n_predictions': 4, 'tie_mode': 'standard',
                'seconds': 1.0, 'seed': None if flags[-1] == 'POP' else seed}

    monkeypatch.setattr(reproduce, 'run_one', fake_run)
    argv = ['--benchmark', 'srgnn', '--data', data, '--seeds', '1', '2', '3', '--results_dir', str(tmp_path / 'r'),
            '--device', 'cpu']
    with pytest.raises(KeyboardInterrupt):
        reproduce.main_(argv + ['--only', 'POP', 'STAMP', 'NARM'])
    assert calls == [('POP', 1), ('STAMP', 1), ('STAMP', 2), ('STAMP', 3), ('NARM', 1), ('NARM', 2)]
    calls.clear()
    resumed.append(True)
    reproduce.main_(argv + ['--only', 'NARM', 'STAMP', 'POP', '--resume'])
    assert calls == [('NARM', 2), ('NARM', 3), ('STAMP', 1), ('STAMP', 2), ('STAMP', 3)]   # POP and NARM 1 kept
    out = tmp_path / 'r' / 'toy1_64'
    record = json.loads((out / 'results.json').read_text())
    assert list(record['runs']) == ['POP', 'NARM', 'STAMP']
    assert [r['seed'] for r in record['runs']['NARM']['per_seed']] == [1, 2, 3]
    assert record['provenance']['resumed_from']['seeds'] == [1, 2, 3]
    rows = {line.split(' | ')[0][2:]: line for line in (out / 'table.md').read_text().splitlines()
            if line.startswith('| ')}
    assert rows['NARM'].startswith('| NARM | 0.2000 ± 0.1000 | 0.1000 ± 0.0500 | 3 |')
    assert rows['POP'].startswith('| POP | 0.1000 | 0.0500 | 1 |')
    calls.clear()
    reproduce.main_(argv + ['--seeds', '4', '--only', 'POP', 'NARM', '--resume'])   # argv's seeds replaced
    assert calls == [('NARM', 4)]
    assert 'seeds 1 2 3 4;' in (out / 'table.md').read_text()
    # a run trained with other flags (the table's settings changed since) is run again; one of a results.json
    # written before flags were recorded is kept
    record = json.loads((out / 'results.json').read_text())
    per_seed = record['runs']['NARM']['per_seed']
    assert [r['flags'] for r in per_seed] == [['--model', 'NARM']] * 4
    per_seed[0]['flags'] = ['--model', 'NARM', '--lr', '0.1']
    del per_seed[1]['flags']
    (out / 'results.json').write_text(json.dumps(record))
    calls.clear()
    reproduce.main_(argv + ['--seeds', '1', '2', '--only', 'NARM', '--resume'])
    assert calls == [('NARM', 1)]
    per_seed = json.loads((out / 'results.json').read_text())['runs']['NARM']['per_seed']
    assert [(r['seed'], r.get('flags')) for r in per_seed] == [
        (2, None), (3, ['--model', 'NARM']), (4, ['--model', 'NARM']), (1, ['--model', 'NARM'])]


def test_srgnn_resume_refuses_results_of_other_data(tmp_path, monkeypatch):
    from scripts import reproduce
    monkeypatch.setattr(reproduce, 'run_one', lambda *a: {'Recall@20': 0.5, 'MRR@20': 0.2, 'n_predictions': 4,
                                                          'tie_mode': 'standard', 'seconds': 1.0, 'seed': None})
    reproduce.main_(['--benchmark', 'srgnn', '--data', srg_folder(tmp_path / 'a'), '--only', 'POP', '--results_dir',
                     str(tmp_path / 'r'), '--device', 'cpu'])
    other = srg_folder(tmp_path / 'b')
    with open(os.path.join(other, 'toy1_64_test.txt'), 'a') as f:
        f.write('11\t1\t20.0\n')                            # one more test event: another data set
    with pytest.raises(reproduce.InputError, match=r'^--resume: .*results.json holds a srgnn benchmark on .*'
                       r'toy1_64_test.txt.: 5.*, not srgnn on .*toy1_64_test.txt.: 6'):
        reproduce.main_(['--benchmark', 'srgnn', '--data', other, '--only', 'POP', '--results_dir',
                         str(tmp_path / 'r'), '--device', 'cpu', '--resume'])


def test_quick_data_without_shared_is_the_synthetic_demo_in_a_new_folder(tmp_path, monkeypatch):
    """Without ../shared (a user's clone, CI) --quick and bench_train.py --quick preprocess the synthetic demo
    data, also into a folder that does not exist yet (bench_train passes <tmp>/sample)."""
    from scripts import reproduce
    monkeypatch.setattr(reproduce, 'SAMPLE', str(tmp_path / 'no_shared' / 'yoochoose-clicks-sample.dat'))
    folder = tmp_path / 'new' / 'sample'
    assert reproduce.prepare_quick_data(str(folder)).startswith('the synthetic demo data')
    assert {'rsc15_train_full.txt', 'rsc15_test.txt'} <= set(os.listdir(folder))
