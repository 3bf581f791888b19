"""A learning rate beyond float32 (issue #32): a clear stop, not torch's overflow traceback."""
from conftest import run_command, write_split

SMALL = ['--layers', '16', '--batch_size', '16', '--n_sample', '32', '--sample_store', '10000',
         '--dropout_hidden', '0.1']


def train_file(tmp_path):
    return write_split(tmp_path / 'train.txt', [(s, f'i{(s * 3 + k * (1 + s % 4)) % 13}', 10 * s + k)
                                                for s in range(40) for k in range(3 + s % 3)])


# ---------------------------------------------------------------- a learning rate beyond float32

def test_a_learning_rate_beyond_float32_stops_with_one_line_naming_lr(tmp_path):
    result = run_command('main.py', '--train_data', train_file(tmp_path), '--checkpoint_dir', str(tmp_path / 'ck'),
                         *SMALL, '--lr', '1e39', '--optimizer_type', 'SGD')
    assert result.returncode == 3 and 'Traceback' not in result.stderr, result.stderr
    assert result.stderr.count('\n') == 1 and '--lr 1e+39' in result.stderr, result.stderr
    assert not (tmp_path / 'ck').exists()                  # refused before a run folder was made
