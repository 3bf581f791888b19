"""Checkpoints against a full disk, damaged or forged files, stale temporary files and --keep_checkpoints;
and a learning rate beyond float32 (issue #32). Each condition is forced: a file-size limit in the child
process, bytes flipped in the file, a checkpoint rewritten with one field wrong, a process id that
cannot be alive."""
import glob
import os
import resource
import subprocess
import sys

import pytest
import torch

from checkpoints import load_checkpoint
from cli import InputError
from conftest import ROOT, run_command, write_split
import main

SMALL = ['--layers', '16', '--batch_size', '16', '--n_sample', '32', '--sample_store', '10000',
         '--dropout_hidden', '0.1']
NEVER_ALIVE = 2 ** 22 + 1          # above Linux's largest pid_max (PID_MAX_LIMIT): no process has this id


def train_file(tmp_path):
    return write_split(tmp_path / 'train.txt', [(s, f'i{(s * 3 + k * (1 + s % 4)) % 13}', 10 * s + k)
                                                for s in range(40) for k in range(3 + s % 3)])


def trained(tmp_path, n_epochs=1, *flags):
    """A finished run of `n_epochs` epochs; (its run folder, its last checkpoint)."""
    path, _ = main.main(['--train_data', train_file(tmp_path), '--checkpoint_dir', str(tmp_path / 'ck'), *SMALL,
                         '--n_epochs', str(n_epochs), *flags])
    return os.path.dirname(path), path


def checkpoints_in(run):
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(run, 'model_*.pt')))


# ---------------------------------------------------------------- a full disk

def test_a_full_disk_while_saving_says_the_file_the_space_and_how_to_resume(tmp_path):
    run, first = trained(tmp_path)
    limit = os.path.getsize(first) // 2        # config.json fits below it, the next checkpoint does not

    def small_files_only():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))     # python ignores SIGXFSZ: EFBIG

    failed = subprocess.run([sys.executable, 'main.py', '--resume', run, '--n_epochs', '3'], cwd=ROOT,
                            capture_output=True, text=True, timeout=600, preexec_fn=small_files_only)
    assert failed.returncode == 2 and 'Traceback' not in failed.stderr, failed.stderr
    assert failed.stderr.count('\n') == 1 and failed.stderr.startswith('error: '), failed.stderr
    assert os.path.join(run, 'model_00001.pt') in failed.stderr
    assert 'free on that disk' in failed.stderr and 'the checkpoint takes' in failed.stderr
    assert f'python main.py --resume {run}' in failed.stderr
    assert checkpoints_in(run) == ['model_00000.pt'] and not glob.glob(os.path.join(run, '*.tmp-*'))
    resumed = run_command('main.py', '--resume', run)           # room again: the run goes on
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoints_in(run) == ['model_00000.pt', 'model_00001.pt', 'model_00002.pt']


def test_stale_temporary_files_of_dead_processes_are_removed_on_resume(tmp_path):
    run, _ = trained(tmp_path)
    alive = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])
    try:
        stale = [os.path.join(run, f'model_00001.pt.tmp-{NEVER_ALIVE}'), os.path.join(run, f'curves.png.tmp-{NEVER_ALIVE}')]
        kept = [os.path.join(run, f'model_00002.pt.tmp-{alive.pid}'), os.path.join(run, 'notes.tmp-old')]
        for path in stale + kept:
            with open(path, 'wb') as f:
                f.write(b'half a checkpoint')
        main.main(['--resume', run, '--n_epochs', '2'])
        assert not any(os.path.exists(p) for p in stale)
        assert all(os.path.exists(p) for p in kept)        # a live process's write, and not our name pattern
    finally:
        alive.kill()
        alive.wait()


def test_keep_checkpoints_keeps_the_newest_n_also_on_resume(tmp_path):
    run, last = trained(tmp_path, 3, '--keep_checkpoints', '2')
    assert checkpoints_in(run) == ['model_00001.pt', 'model_00002.pt']
    main.main(['--resume', run, '--n_epochs', '5', '--keep_checkpoints', '1'])
    assert checkpoints_in(run) == ['model_00004.pt']
    main.main(['--resume', run, '--n_epochs', '6'])                   # without the flag: all are kept
    assert checkpoints_in(run) == ['model_00004.pt', 'model_00005.pt']
    # a damaged file numbered above the one just written never counts as newer than it
    with open(os.path.join(run, 'model_00009.pt'), 'wb') as f:
        f.write(b'torn')
    os.remove(os.path.join(run, 'model_00005.pt'))
    main.main(['--resume', run, '--n_epochs', '6', '--keep_checkpoints', '1'])
    assert checkpoints_in(run) == ['model_00005.pt', 'model_00009.pt']
    assert torch.load(os.path.join(run, 'model_00005.pt'), weights_only=True)['epoch'] == 5
    with pytest.raises(InputError, match='--keep_checkpoints must be >= 1, got 0'):
        main.main(['--resume', run, '--n_epochs', '7', '--keep_checkpoints', '0'])


# ---------------------------------------------------------------- damaged and forged checkpoints

def test_a_flipped_weight_fails_its_checksum(tmp_path):
    run, path = trained(tmp_path)
    weights = torch.load(path, weights_only=True)['model']['Wy']
    data = bytearray(open(path, 'rb').read())
    start = data.find(weights.numpy().tobytes())
    assert start > 0 and weights.numel() * 4 >= 128
    for i in range(start + 64, start + 128):
        data[i] ^= 0xFF
    damaged = tmp_path / 'damaged.pt'
    damaged.write_bytes(bytes(data))
    assert not torch.equal(torch.load(damaged, weights_only=True)['model']['Wy'], weights)   # torch reads it
    with pytest.raises(InputError, match='damaged.pt: the weights do not match the sha256 checksum saved with them'):
        load_checkpoint(str(damaged), 'cpu')
    result = run_command('main.py', '--is_eval', '--load_model', str(damaged), '--valid_data', str(tmp_path / 'train.txt'))
    assert result.returncode == 2 and result.stderr.count('\n') == 1 and 'checksum' in result.stderr, result.stderr
    # a checkpoint saved before the checksum (no such field) still loads
    state = torch.load(path, weights_only=True)
    del state['weights_sha256']
    old = tmp_path / 'old.pt'
    torch.save(state, old)
    model, _, _, _ = load_checkpoint(str(old), 'cpu')
    assert torch.equal(model.state_dict()['Wy'], weights)


def forged(tmp_path, path, change):
    """`path` rewritten with `change(state)` applied; the new file's path."""
    state = torch.load(path, weights_only=True)
    change(state)
    out = tmp_path / f'forged_{len(os.listdir(tmp_path))}.pt'
    torch.save(state, out)
    return str(out)


def test_forged_contents_are_one_line_each(tmp_path):
    _, path = trained(tmp_path)
    cases = [(lambda s: s['config'].pop('layers'), "its config has no 'layers'"),
             (lambda s: s.update(model_name='GRU5'), "model_name 'GRU5': expected one of GRU4Rec, "),
             (lambda s: s.update(model_name='ItemKNN'), 'ItemKNN model'),
             (lambda s: s.update(model_name=7), 'model_name 7: expected one of GRU4Rec, '),
             (lambda s: s.update(config='layers=16'), 'config: expected a mapping of settings, got a str'),
             (lambda s: s['item_ids'].__setitem__(1, s['item_ids'][0]), 'item_ids: expected distinct item ids'),
             (lambda s: s.update(item_ids='i0'), 'item_ids: expected a list of item ids'),
             (lambda s: s.update(item_support=s['item_support'][:-1]),
              'item_support: expected one count per item (13), got 12'),
             (lambda s: s['config'].update(layers='16'), "its config's layers: expected a list of sizes"),
             (lambda s: s['config'].update(dropout_hidden=None), "its config's dropout_hidden: expected")]
    for change, message in cases:
        bad = forged(tmp_path, path, change)
        with pytest.raises(InputError, match=f'^--load_model {bad}: .*') as raised:
            load_checkpoint(bad, 'cpu')
        assert message in str(raised.value) and '\n' not in str(raised.value), (message, str(raised.value))
    result = run_command('main.py', '--is_eval', '--load_model', forged(tmp_path, path, lambda s: s['config'].pop('layers')))
    assert result.returncode == 2 and result.stderr.count('\n') == 1 and 'Traceback' not in result.stderr


# ---------------------------------------------------------------- a learning rate beyond float32

def test_a_learning_rate_beyond_float32_stops_with_one_line_naming_lr(tmp_path):
    result = run_command('main.py', '--train_data', train_file(tmp_path), '--checkpoint_dir', str(tmp_path / 'ck'),
                         *SMALL, '--lr', '1e39', '--optimizer_type', 'SGD')
    assert result.returncode == 3 and 'Traceback' not in result.stderr, result.stderr
    assert result.stderr.count('\n') == 1 and '--lr 1e+39' in result.stderr, result.stderr
    assert not (tmp_path / 'ck').exists()                  # refused before a run folder was made
