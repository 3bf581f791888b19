"""scripts/kaggle_gru4rec.ipynb runs top to bottom, headless, on small synthetic data; run again, it
continues its run (a Kaggle session cut off by the time limit) instead of starting over."""
import glob
import os

import pytest

from conftest import ROOT

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')


def execute(tmp_path, n_epochs):
    """Run every cell with small settings; returns (the cells, all their text output as one string)."""
    notebook = nbformat.read(os.path.join(ROOT, 'scripts', 'kaggle_gru4rec.ipynb'), as_version=4)
    parameters = [c for c in notebook.cells if 'parameters' in c.metadata.get('tags', [])]
    assert len(parameters) == 1                                 # every path and setting lives in one cell
    parameters[0].source = (f"REPO = {ROOT!r}\nINPUT = {str(tmp_path / 'absent.dat')!r}\n"
                            f"DATA = {str(tmp_path / 'data')!r}\nCHECKPOINTS = {str(tmp_path / 'ck')!r}\n"
                            f"PREVIOUS_RUNS = {str(tmp_path / 'input')!r}\nRESUME = True\n"
                            f"PARAMS = 'layers=16,batch_size=16,n_sample=32'\nN_EPOCHS = {n_epochs}\n"
                            "SYNTHETIC_SESSIONS = 2000\nINSTALL = False\n")
    nbclient.NotebookClient(notebook, timeout=600, kernel_name='python3',
                            resources={'metadata': {'path': str(tmp_path)}}).execute()   # raises if a cell fails
    text = ''.join(o.get('text', '') for c in notebook.cells if c.cell_type == 'code' for o in c.outputs)
    return notebook.cells, text


def test_notebook_runs_every_cell_and_continues_its_run(tmp_path):
    cells, text = execute(tmp_path, 1)
    assert 'using synthetic data (2,000 sessions)' in text and 'Recall@20:' in text
    assert 'epoch 0:' in text and '%|' in text                 # tqdm's bar: the commands ran on a terminal
    assert 'device: cpu' in text and 'minutes an epoch' in text
    shown = [o for c in cells[-1:] for o in c.outputs]
    assert any('image/png' in o.get('data', {}) for o in shown)                     # the curves, inline
    assert any('Recall@20' in o.get('data', {}).get('text/plain', '') for o in shown)    # the results table
    runs = glob.glob(str(tmp_path / 'ck' / '*'))
    assert len(runs) == 1 and os.listdir(runs[0]).count('model_00000.pt') == 1
    os.rename(tmp_path / 'ck', tmp_path / 'earlier')          # a new session: the run is in an attached output
    os.makedirs(tmp_path / 'input' / 'previous-version')
    os.rename(tmp_path / 'earlier', tmp_path / 'input' / 'previous-version' / 'ck')
    _, text = execute(tmp_path, 2)
    assert 'continuing' in text and 'resuming' in text and 'epoch 0 ' not in text.split('continuing')[1]
    assert glob.glob(str(tmp_path / 'ck' / '*')) == [str(tmp_path / 'ck' / os.path.basename(runs[0]))]
    assert sorted(glob.glob(str(tmp_path / 'ck' / '*' / 'model_*.pt')))[-1].endswith('model_00001.pt')
