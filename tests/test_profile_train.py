"""scripts/profile_train.py: its profile of the compiled step names the graph's kernels and the row updates
after it, and leaves the compiled step as it found it."""
import os
import re

import pytest

from conftest import synthetic_split
from devices import has_compiler
import row_kernel
from scripts import profile_train
import static_step


@pytest.mark.skipif(not has_compiler(), reason='no C++ compiler for torch.compile')
def test_the_compiled_step_profile_names_its_kernels(tmp_path, capsys):
    synthetic_split(tmp_path, n_sessions=400, n_items=120, seed=5)
    update, wrapper, compiled = row_kernel.row_update, static_step.CompiledStep.CPP_WRAPPER, static_step._compiled
    profile_train.run(['--step_mode', 'compiled', '--steps', '4', '--warmup', '2', '--top', '200', '--n_sample', '16',
                       '--train', os.path.join(tmp_path, 'rsc15_train_full.txt')])
    out = capsys.readouterr().out
    assert 'step compiled)' in out
    kernels = [line for line in out.splitlines() if re.match(r'\| graph_\d+_cpp_fused_', line)]
    assert kernels and all(line.endswith('| 1.0 |') or line.endswith('| 2.0 |') for line in kernels)
    if row_kernel.kernel() is not None:
        assert '| row_kernel.row_update |' in out
    assert row_kernel.row_update is update and static_step.CompiledStep.CPP_WRAPPER is wrapper
    assert static_step._compiled is compiled
