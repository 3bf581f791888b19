"""The CUDA path, checked where a CPU can check it (issue #16): --device validation and the kernel probe,
checkpoints that load as CPU tensors on any device, a sampler state of another kind of device refused, the
RNG state of the model's own GPU, and every tensor of a training or evaluation step on one device."""
import os
import shutil

import pytest
import torch

import checkpoints
from checkpoints import load_checkpoint, save_checkpoint
from cli import InputError
from config import DEFAULTS, OTHER_DEFAULTS, PRESETS
from conftest import run_command, synthetic_split
from dataset import SessionData
import devices
from devices import pick_device, rng_state, set_rng_state
from evaluation import DEVICE_SCORE_BLOCK, SCORE_BLOCK, evaluate, score_rows
from training import train_epoch, training_setup

SMALL = ['--layers', '16', '--batch_size', '16', '--n_sample', '32', '--n_epochs', '1', '--dropout_hidden', '0.1',
         '--sample_store', '3200']
CONFIG = {**DEFAULTS, **PRESETS['rsc15_xe_shared_100'], 'layers': [16], 'batch_size': 16, 'n_sample': 32,
          'sample_store': 640}


@pytest.fixture(scope='module')
def split(tmp_path_factory):
    folder = tmp_path_factory.mktemp('data')
    synthetic_split(folder, 1500, 120, seed=5)
    return folder


@pytest.fixture(scope='module')
def data(split):
    return SessionData(os.path.join(split, 'rsc15_train_full.txt'))


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp('tiny')
    synthetic_split(folder, 300, 40, seed=6)
    return SessionData(os.path.join(folder, 'rsc15_train_full.txt'))


def fake_gpus(monkeypatch, count=1, kernels_run=True):
    """torch.cuda made to look present with `count` GPUs whose test kernel runs (or fails as on a P100)."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: count)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda index=None: 'Tesla P100-PCIE-16GB')
    monkeypatch.setattr(devices, 'probe', lambda device: None if kernels_run else
                        'CUDA error: no kernel image is available for execution on the device')


@pytest.mark.parametrize('name', ['mps', 'xpu', 'meta', 'cuda:7', 'cpu:1', 'cuda:x', 'gpu', ''])
def test_device_names_and_indices_are_checked(monkeypatch, name):
    fake_gpus(monkeypatch)
    with pytest.raises(InputError) as err:
        pick_device(name)
    assert '\n' not in str(err.value) and ('cuda:0 to cuda:0' in str(err.value) if name == 'cuda:7' else
                                          'expected auto, cpu, cuda or cuda:<n>' in str(err.value))


def test_a_gpu_that_runs_no_kernel_falls_back_under_auto_only(monkeypatch, capsys):
    fake_gpus(monkeypatch)
    assert pick_device('auto') == pick_device('cuda') == pick_device('cuda:0') == 'cuda:0'
    fake_gpus(monkeypatch, kernels_run=False)
    assert pick_device('auto') == 'cpu'
    warning = capsys.readouterr().err
    assert warning.count('\n') == 1 and warning.startswith('warning:') and 'no kernel image' in warning
    for name in ('cuda', 'cuda:0'):
        with pytest.raises(InputError, match='cannot run this torch build'):
            pick_device(name)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert pick_device('auto') == 'cpu'
    with pytest.raises(InputError, match='no CUDA device is available'):
        pick_device('cuda')


def test_the_probe_reports_a_device_that_cannot_run_a_kernel():
    assert devices.probe('cpu') is None
    assert devices.probe('meta')            # .item() of a meta tensor fails as a broken GPU's kernel does


def test_a_bad_device_is_one_error_line_before_any_data_is_read(tmp_path):
    result = run_command('main.py', '--device', 'mps', '--data_folder', str(tmp_path / 'absent'))
    assert result.returncode == 2 and result.stderr.count('\n') == 1 and "--device 'mps'" in result.stderr


def test_rng_states_are_those_of_the_models_own_gpu(monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, 'get_rng_state', lambda device='cuda': asked.append(('get', device)) or
                        torch.zeros(16, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, 'set_rng_state', lambda state, device='cuda': asked.append(('set', device)))
    state = rng_state('cuda:1')
    set_rng_state(state, 'cuda:1')
    assert [(what, torch.device(device)) for what, device in asked] == [('get', torch.device('cuda:1')),
                                                                        ('set', torch.device('cuda:1'))]
    assert state['rng'].dtype == torch.uint8 and state['rng'].device.type == 'cpu'
    asked.clear()
    assert rng_state('cpu')['cuda_rng'] is None and not asked


def trained_checkpoint(data, path):
    model, optimizer, loss_fn, iterator, sampler, logq = run = training_setup(CONFIG, data, 'cpu')
    train_epoch(*run, CONFIG, 'cpu', max_steps=30)
    save_checkpoint(str(path), model, dict(CONFIG, model='GRU4Rec'), data.item_map, optimizer, sampler, 0, 1.0,
                    None)
    return model


@pytest.mark.filterwarnings('ignore:for .*copying from a non-meta parameter')
def test_checkpoints_load_as_cpu_tensors_whatever_the_device(data, tmp_path):
    trained = trained_checkpoint(data, tmp_path / 'model_00000.pt')
    model, config, item_map, state = load_checkpoint(str(tmp_path / 'model_00000.pt'), 'meta')   # a GPU stand-in
    assert all(p.device.type == 'meta' for p in model.parameters())           # the weights go to the device
    assert state['device'] == 'cpu'
    for value in (state['rng'], state['sampler']['generated_from']):          # what set_state accepts
        assert value.device.type == 'cpu' and value.dtype == torch.uint8
    assert all(t.device.type == 'cpu' for s in state['optimizer']['state'].values() for t in s.values())
    assert all(t.device.type == 'cpu' for t in state['model'].values())
    assert all(torch.equal(t, trained.state_dict()[k]) for k, t in state['model'].items())


class OnGPU(torch.Tensor):
    """Stands for a CUDA tensor: its class survives every operation but .cpu(), and a weights_only load
    refuses it, as a CPU-only machine cannot rebuild a CUDA tensor."""

    def cpu(self, *args, **kwargs):
        return torch.Tensor.cpu(self, *args, **kwargs).as_subclass(torch.Tensor)


def test_a_checkpoint_of_gpu_tensors_is_written_as_cpu_tensors(data, tmp_path, monkeypatch):
    model = trained_checkpoint(data, tmp_path / 'first.pt')
    weights = {k: v.detach().clone().as_subclass(OnGPU) for k, v in model.state_dict().items()}
    monkeypatch.setattr(model, 'state_dict', lambda: weights)
    save_checkpoint(str(tmp_path / 'gpu.pt'), model, dict(CONFIG, model='GRU4Rec'), data.item_map, None, None, 0,
                    1.0, None)
    state = torch.load(str(tmp_path / 'gpu.pt'), weights_only=True)         # what the README promises
    assert all(type(t) is torch.Tensor and torch.equal(t, weights[k]) for k, t in state['model'].items())


@pytest.fixture(scope='module')
def one_epoch_run(split, tmp_path_factory):
    folder = tmp_path_factory.mktemp('runs')
    first = run_command('main.py', '--data_folder', str(split), '--checkpoint_dir', str(folder), *SMALL,
                        '--device', 'cpu', '--deterministic')         # the flag is harmless on the CPU
    assert first.returncode == 0, first.stderr
    return os.path.join(folder, os.listdir(folder)[0])


@pytest.mark.parametrize('doctor,message', [
    (lambda s: s.update(device='cuda'), 'the run trained on cuda and would continue on cpu'),
    (lambda s: s['sampler'].update(generated_from=torch.zeros(16, dtype=torch.uint8)),    # a CUDA generator's
     'the sampler state is a 16-byte generator state, not the 5056-byte state of a cpu generator')])
def test_resume_refuses_a_run_of_another_kind_of_device_in_one_line(one_epoch_run, tmp_path, doctor, message):
    run = shutil.copytree(one_epoch_run, tmp_path / 'run')
    path = os.path.join(run, 'model_00000.pt')
    state = torch.load(path, weights_only=True)
    doctor(state)
    if 'sampler' in message:
        del state['device']                  # as a checkpoint written before the device was recorded
    torch.save(state, path)
    resumed = run_command('main.py', '--resume', str(run), '--n_epochs', '2', '--device', 'cpu')
    assert resumed.returncode == 2 and resumed.stderr.count('\n') == 1, resumed.stderr
    assert message in resumed.stderr and not os.path.exists(os.path.join(run, 'model_00001.pt'))


def test_evaluation_scores_in_capped_blocks_on_every_device():
    for n_items in (12, 37_483, 52_739, 10_000_000):
        assert score_rows(n_items, 'cpu') * n_items <= max(SCORE_BLOCK, n_items)
        assert score_rows(n_items, 'cuda:0') * n_items <= max(DEVICE_SCORE_BLOCK, n_items)
        assert score_rows(n_items, torch.device('cuda', 1)) == score_rows(n_items, 'cuda')
    assert score_rows(52_739, 'cuda:0') >= 512                 # a default evaluation batch is one block on a GPU


def test_training_and_evaluation_steps_keep_every_tensor_on_the_run_device(tiny):
    """With the default device set to meta, a tensor a step makes without naming the run's device lands on
    meta, and the first operation mixing it with the run's CPU tensors (or reading it) fails. (Models are
    built on the CPU and then moved, so they are built outside.)"""
    others = {}
    for name in ('BPRMF', 'NARM', 'STAMP', 'SASRec', 'GRU4RecPlus'):
        settings = {k: v for k, v in dict(OTHER_DEFAULTS[name], n_epochs=1, batch_size=512, max_seq_length=10,
                                          finetune_epochs=1).items() if k in OTHER_DEFAULTS[name]}
        others[name] = checkpoints.build_model(dict(settings, model=name), len(tiny.item_map), 'cpu')
    runs = [training_setup(dict(CONFIG, fast_step=fast), tiny, 'cpu') for fast in (True, False)]
    with torch.device('meta'):
        for fast, run in zip((True, False), runs):
            loss, _, steps = train_epoch(*run, dict(CONFIG, fast_step=fast), 'cpu', max_steps=25)
            assert steps == 25 and loss > 0
        metrics = evaluate(runs[0][0], tiny, batch_size=64, device='cpu')
        assert 0 < metrics['Recall@20'] <= 1
        for name, model in others.items():
            assert all(loss < 0 if name == 'BPRMF' else loss > 0 for loss in model.fit(tiny))
            assert evaluate(model, tiny, batch_size=64, device='cpu')['Recall@20'] >= 0


FAULTS = '''
import resource, sys
import torch
import devices
print(devices.keep_freed_memory())
counts = []
for r in range(12):                 # a step's buffers: a few megabytes each, a little larger every step
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.ones((2 << 20) + r * (16 << 10)) for _ in range(8)]
    del blocks
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
print(sum(counts[-4:]))
'''


@pytest.mark.skipif('CS_GNU_LIBC_VERSION' not in os.confstr_names, reason='glibc only')
def test_freed_step_buffers_are_reused_without_page_faults():
    """After keep_freed_memory, buffers freed at the end of a step serve the next step's allocations (glibc
    maps each block of megabytes afresh by default: every step page-faults through all of them, here 16k+
    faults a round); a fresh process, so that no earlier allocation has moved glibc's thresholds."""
    import subprocess, sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, '-c', FAULTS], capture_output=True, text=True, cwd=root, check=True,
                         env={**os.environ, 'PYTHONPATH': root}).stdout.split()
    pages = 4 * 8 * ((2 << 20) * 4 // 4096)         # four rounds of eight 8 MB blocks, in 4 kB pages
    assert out[0] == 'True'
    assert int(out[1]) < pages // 20, out
