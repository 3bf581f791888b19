"""What a reader needs to trust a number: the code, the software, the machine and the data behind a result.

`provenance(data_files, seeds=..., device=...)` is recorded in every results.json (scripts/reproduce.py and
main.py --is_eval): the repository commit and whether the working tree had uncommitted changes, the
python / torch / numpy / pandas versions, the device and torch's thread count, the seeds, and each data
file with its event count (data lines after the header).
"""
import os
import platform
import subprocess

ROOT = os.path.dirname(os.path.abspath(__file__))


def git_state():
    """(commit, dirty) of the repository holding this file; (None, None) outside git."""
    try:
        commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True, text=True,
                                timeout=30).stdout.strip() or None
        status = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=ROOT,
                                capture_output=True, text=True, timeout=30)
        return commit, (bool(status.stdout.strip()) if status.returncode == 0 else None)
    except (OSError, subprocess.SubprocessError):
        return None, None


def count_events(path):
    """Data lines of a split file (its lines minus the header); None when it cannot be read."""
    try:
        with open(path, 'rb') as f:
            lines = sum(chunk.count(b'\n') for chunk in iter(lambda: f.read(1 << 20), b''))
            if f.tell():
                f.seek(-1, os.SEEK_END)
                lines += f.read(1) != b'\n'
        return max(lines - 1, 0)
    except OSError:
        return None


def provenance(data_files=(), seeds=None, device=None):
    import numpy
    import pandas
    import torch
    commit, dirty = git_state()
    return {'commit': commit, 'dirty': dirty, 'python': platform.python_version(), 'torch': torch.__version__,
            'numpy': numpy.__version__, 'pandas': pandas.__version__, 'device': str(device) if device else None,
            'threads': torch.get_num_threads(), 'machine': platform.machine(), 'seeds': seeds,
            'data': {os.path.abspath(p): {'events': count_events(p)} for p in data_files}}
