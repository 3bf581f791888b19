"""scripts/kaggle_gru4rec.ipynb runs top to bottom, headless, on small synthetic data."""
import glob
import os

import pytest

from conftest import ROOT

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')


def test_notebook_runs_every_cell(tmp_path):
    notebook = nbformat.read(os.path.join(ROOT, 'scripts', 'kaggle_gru4rec.ipynb'), as_version=4)
    parameters = [c for c in notebook.cells if 'parameters' in c.metadata.get('tags', [])]
    assert len(parameters) == 1                                 # every path and setting lives in one cell
    parameters[0].source = (f"REPO = {ROOT!r}\nINPUT = {str(tmp_path / 'absent.dat')!r}\n"
                            f"DATA = {str(tmp_path / 'data')!r}\nCHECKPOINTS = {str(tmp_path / 'ck')!r}\n"
                            "PARAMS = 'layers=16,batch_size=16,n_sample=32'\nN_EPOCHS = 2\n"
                            "SYNTHETIC_SESSIONS = 2000\nINSTALL = False\n")
    nbclient.NotebookClient(notebook, timeout=600, kernel_name='python3',
                            resources={'metadata': {'path': str(tmp_path)}}).execute()   # raises if a cell fails
    text = '\n'.join(o.get('text', '') for c in notebook.cells if c.cell_type == 'code' for o in c.outputs)
    assert 'using synthetic data (2,000 sessions)' in text and 'Recall@20:' in text
    shown = [o for c in notebook.cells[-1:] for o in c.outputs]
    assert any('image/png' in o.get('data', {}) for o in shown)                     # the curves, inline
    assert any('Recall@20' in o.get('data', {}).get('text/plain', '') for o in shown)    # the results table
    assert len(glob.glob(str(tmp_path / 'ck' / '*' / 'model_0000[01].pt'))) == 2
