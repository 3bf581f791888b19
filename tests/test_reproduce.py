"""scripts/reproduce.py: the table and chart of a small run, and its bad input."""
import json
import os

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
