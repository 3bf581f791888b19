"""scripts/gpu_check.sh runs all its steps on the CPU (`--device cpu --quick`), so the GPU check cannot rot
between the rare sessions that have a GPU. One thread: a functional run, not a timing, and robust on a
shared machine."""
import os
import re
import subprocess

from conftest import ROOT


def test_gpu_check_runs_every_step_on_the_cpu(tmp_path):
    report = tmp_path / 'GPU.md'
    result = subprocess.run([os.path.join(ROOT, 'scripts', 'gpu_check.sh'), '--device', 'cpu', '--quick',
                             '--report', str(report)], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert result.returncode == 0, result.stdout + result.stderr
    text = report.read_text()
    rows = [line for line in text.splitlines() if line.startswith('| ') and not line.startswith('| check')]
    checks = [row for row in rows if row.split('|')[2].strip() in ('ok', 'info', 'FAIL')]
    assert len(checks) == 10 and all(row.split('|')[2].strip() != 'FAIL' for row in checks), text
    for expected in ('torch ', 'Recall@20', 'largest metric difference 0.00e+00', "weights on ['cpu']",
                     'largest weight difference 0.00e+00', 'equal bits required',
                     'the states equal bits yes', 'largest gradient difference',
                     'GRU4RecPlus R@20', '| rsc15_xe_shared_100 |', 'compiled: weights and optimiser state'):
        assert expected in text, expected
    assert re.search(r'fast [0-9,]+ events/s, evaluation [0-9,]+ predictions/s', text), text   # cells by name
    assert 'all checks passed' in result.stdout


def test_gpu_check_refuses_a_missing_gpu_in_its_report(tmp_path):
    result = subprocess.run([os.path.join(ROOT, 'scripts', 'gpu_check.sh'), '--device', 'cuda:3', '--report',
                             str(tmp_path / 'GPU.md')], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, CUDA_VISIBLE_DEVICES=''))
    assert result.returncode == 1 and 'FAIL' in (tmp_path / 'GPU.md').read_text()
