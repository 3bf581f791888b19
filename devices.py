"""Where a run computes: the --device flag."""
import torch

from cli import InputError


def pick_device(name):
    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if name.startswith('cuda') and not torch.cuda.is_available():
        raise InputError(f'--device {name}: no CUDA device is available (use --device cpu)')
    try:
        return str(torch.device(name))
    except RuntimeError:
        raise InputError(f'--device {name!r}: expected auto, cpu, cuda or cuda:<n>') from None
