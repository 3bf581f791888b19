"""Checkpoints and run folders: building a model from its configuration, saving and loading the checkpoint
format every model shares, and the files of a run folder (config.json, results.json, curves.png).

A checkpoint `checkpoint/<run>/model_{epoch:05d}.pt` is written atomically and loads with
`torch.load(weights_only=True)`: weights, configuration, item map, optimiser and sampler state, the RNG
state, the epoch, its loss and validation metrics, and the run's history so far. Every tensor in it is a
CPU tensor, whatever device trained the run (so it loads on a machine without a GPU), and `device` names
the kind of device that did (cpu or cuda): the sampler's and the dropout's random streams belong to it.
Loading reads everything onto the CPU and moves only the weights to the device asked for; the RNG states
stay CPU byte tensors, the only form `torch.set_rng_state` and `Generator.set_state` accept. It also holds the items' training support (`item_support`, clicks per item:
recommend.py's popular fallback; absent from checkpoints saved before it was added, which still load).
GRU4Rec checkpoints saved before issue #20 hold the output layer as one table `Y` = [W_y | b_y]; they load
as the two tables W_y and b_y of today's model, optimiser state included (`split_output_table`), so old
runs still evaluate, serve recommendations and resume.

Damage and forgery (issue #32): `weights_sha256`, a sha256 over the weights' names, dtypes, shapes and
bytes, is recorded at save and checked at load (checkpoints saved before it have none and still load);
the configuration, model name, item ids and item support are checked before a model is built from them,
each failure one line naming the file. The checkpoint is serialised in memory first, so a full disk is
an OSError (torch's own file writer turns it into an unspecific RuntimeError) and the message can give
the checkpoint's size beside the free space. `remove_stale_temporaries` and `prune_checkpoints` tidy a
run folder: temporary files of processes that died mid-write, and checkpoints beyond --keep_checkpoints.
"""
import hashlib
import io
import json
import os
import re
import sys
import time

import torch

from cli import InputError, write_atomically
from config import OTHER_MODELS
from dataset import ItemMap
from devices import model_device, rng_state
from model import GRU4Rec
from optimizer import SPARSE_OK

CHECKPOINT_FORMAT = 'gru4rec-reproduction-checkpoint'
CHECKPOINT_VERSION = 1


def build_model(config, n_items, device):
    name = config.get('model', 'GRU4Rec')
    if name != 'GRU4Rec':
        return OTHER_MODELS[name](n_items, **{k: v for k, v in config.items() if k != 'model'}).to(device)
    return GRU4Rec(n_items, layers=config['layers'], embedding=config['embedding_dim'],
                   constrained_embedding=config['constrained_embedding'],
                   dropout_p_embed=config['dropout_input'], dropout_p_hidden=config['dropout_hidden'],
                   seed=config['seed'], sparse=config['optimizer_type'] in SPARSE_OK,
                   bernoulli_dropout='dropout_bernoulli' in config.get('official_quirks', ())).to(device)


def new_run_dir(root):
    stamp = time.strftime('%m%d%H%M')
    for attempt in range(1, 1000):
        path = os.path.join(root, stamp if attempt == 1 else f'{stamp}_{attempt}')
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            continue
        except OSError as err:
            raise InputError(f'--checkpoint_dir {root}: cannot create a run folder ({err.strerror})') from None
    raise InputError(f'--checkpoint_dir {root}: too many runs named {stamp}_*')


def on_cpu(value):
    """`value` (tensors inside dicts, lists and tuples) with every tensor copied to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: on_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(on_cpu(v) for v in value)
    return value


def weights_sha256(weights):
    """sha256 (hex) over a state_dict's tensors in order: each one's name, dtype and shape, then its bytes
    (read in place, no copy for a contiguous CPU tensor)."""
    digest = hashlib.sha256()
    for name, tensor in weights.items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f'{name} {tensor.dtype} {tuple(tensor.shape)};'.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def save_checkpoint(path, model, config, item_map, optimizer, sampler, epoch, loss, metrics, history=None,
                    item_support=None):
    device = model_device(model)
    state = {'format': CHECKPOINT_FORMAT, 'version': CHECKPOINT_VERSION, 'model_name': config.get('model', 'GRU4Rec'),
             'model': model.state_dict(), 'config': config, 'item_ids': item_map.to_list(),
             'optimizer': optimizer.state_dict() if optimizer is not None else None,
             'sampler': sampler.state_dict() if sampler is not None else None, 'epoch': epoch, 'loss': loss,
             'metrics': metrics, 'history': history, 'device': device.type, **rng_state(device),
             'item_support': None if item_support is None else torch.as_tensor(item_support, dtype=torch.int64)}
    state = on_cpu(state)
    state['weights_sha256'] = weights_sha256(state['model'])
    serialised = io.BytesIO()
    torch.save(state, serialised)          # in memory: a failed write below is then a plain OSError

    def write(tmp):
        with open(tmp[path], 'wb') as f:
            f.write(serialised.getbuffer())
    write_atomically([path], write, what='the checkpoint', size=serialised.getbuffer().nbytes)


def remove_stale_temporaries(folder):
    """Remove `<name>.tmp-<pid>` files (write_atomically's) in `folder` whose process is gone: what a
    SIGKILL or power loss in mid-write leaves. A live process's file is left alone. Returns the names."""
    removed = []
    for name in sorted(os.listdir(folder)):
        match = re.fullmatch(r'.+\.tmp-(\d+)', name)
        if match is None or process_alive(int(match.group(1))):
            continue
        try:
            os.remove(os.path.join(folder, name))
            removed.append(name)
        except OSError:
            pass
    return removed


def process_alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:            # it exists, as another user's process
        return True
    except (OverflowError, ValueError):        # no process can have that number
        return False
    return True


def prune_checkpoints(run_dir, epoch, keep):
    """--keep_checkpoints: of the checkpoints model_XXXXX.pt up to `epoch` (the one just written), delete
    all but the newest `keep`. Files numbered above `epoch` (left by a longer run, perhaps damaged) are
    not counted as newer and are not touched, so the checkpoint just written is never deleted."""
    numbered = sorted(int(m.group(1)) for m in (re.fullmatch(r'model_(\d{5,})\.pt', name)
                                                for name in os.listdir(run_dir)) if m)
    for old in [n for n in numbered if n <= epoch][:-keep]:
        try:
            os.remove(os.path.join(run_dir, f'model_{old:05d}.pt'))
        except OSError as err:
            print(f'warning: --keep_checkpoints: cannot remove model_{old:05d}.pt ({err.strerror})', file=sys.stderr)


def write_json(path, value):
    def write(tmp):
        with open(tmp[path], 'w') as f:
            json.dump(value, f, indent=1)
    write_atomically([path], write)


def load_checkpoint(path, device, expected_model=None):
    """(model on `device`, config, item map, raw checkpoint dict with CPU tensors); InputError for anything
    that is not ours or is damaged, or that holds another model than `expected_model` (when given)."""
    if not os.path.isfile(path):
        raise InputError(f'--load_model {path}: no such file')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:                          # truncated zip, foreign pickle, not a torch file at all
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f'--load_model {path}: not a readable checkpoint (truncated or not saved by '
                         f'main.py: {first[:120]})') from None
    if not isinstance(state, dict) or state.get('format') != CHECKPOINT_FORMAT:
        raise InputError(f'--load_model {path}: not a checkpoint of this project (saved by main.py)')
    if state.get('version') != CHECKPOINT_VERSION:
        raise InputError(f'--load_model {path}: checkpoint version {state.get("version")}, '
                         f'this code reads {CHECKPOINT_VERSION}')
    check_contents(path, state)
    config, item_map = state['config'], ItemMap(state['item_ids'])
    name = state.get('model_name', 'GRU4Rec')
    if name == 'GRU4Rec' and 'Y' in state['model']:
        state = split_output_table(state)
    if expected_model is not None and name != expected_model:
        raise InputError(f'--load_model {path}: holds a {name} model, not {expected_model} (--model)')
    try:
        model = build_model(dict(config, model=name), len(item_map), device)
    except (TypeError, ValueError, KeyError) as err:      # a setting of the wrong kind for that model
        raise InputError(f'--load_model {path}: its config does not describe a {name} model '
                         f'({str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__})') from None
    try:
        model.load_state_dict(state['model'])
    except RuntimeError as err:
        raise InputError(f'--load_model {path}: weights do not match the saved configuration '
                         f'({str(err).splitlines()[0]})') from None
    return model, config, item_map, state


# the settings build_model reads from a GRU4Rec config: (check, what is expected)
GRU4REC_SETTINGS = {
    'layers': (lambda v: isinstance(v, list) and v and all(isinstance(n, int) and n >= 1 for n in v),
               'a list of sizes >= 1'),
    'embedding_dim': (lambda v: isinstance(v, int) and v >= 0, 'an integer >= 0'),
    'constrained_embedding': (lambda v: isinstance(v, int), 'true or false'),      # (bool is an int)
    'dropout_input': (lambda v: isinstance(v, (int, float)) and 0 <= v < 1, 'a number in [0, 1)'),
    'dropout_hidden': (lambda v: isinstance(v, (int, float)) and 0 <= v < 1, 'a number in [0, 1)'),
    'seed': (lambda v: isinstance(v, int), 'an integer'),
    'optimizer_type': (lambda v: isinstance(v, str), 'an optimiser name'),
}


def check_contents(path, state):
    """InputError (one line naming `path`) for a checkpoint whose fields are not what save_checkpoint
    writes: the weights against their checksum, the model name, the configuration, the item ids and the
    item support. (Checkpoints without a checksum were saved before it existed: not checked.)"""
    where = f'--load_model {path}'
    weights = state.get('model')
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise InputError(f'{where}: model: expected the weights as a mapping of names to tensors')
    try:
        digest = weights_sha256(weights) if 'weights_sha256' in state else None
    except (RuntimeError, TypeError):                     # a sparse or otherwise odd tensor: not ours
        raise InputError(f'{where}: model: expected dense weight tensors') from None
    if digest is not None and digest != state['weights_sha256']:
        raise InputError(f'{where}: the weights do not match the sha256 checksum saved with them (the file is '
                         f'damaged; use another checkpoint of the run)')
    name = state.get('model_name', 'GRU4Rec')
    if name != 'GRU4Rec' and (not isinstance(name, str) or name not in OTHER_MODELS):
        raise InputError(f'{where}: model_name {name!r}: expected one of GRU4Rec, {", ".join(OTHER_MODELS)}')
    config = state.get('config')
    if not isinstance(config, dict):
        raise InputError(f'{where}: config: expected a mapping of settings, got a {type(config).__name__}')
    if name == 'GRU4Rec':
        for key, (ok, expected) in GRU4REC_SETTINGS.items():
            if key not in config:
                raise InputError(f'{where}: its config has no {key!r} (expected {expected}); not saved by main.py')
            if not ok(config[key]):
                raise InputError(f"{where}: its config's {key}: expected {expected}, got {config[key]!r}")
    ids = state.get('item_ids')
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise InputError(f'{where}: item_ids: expected a list of item ids (strings)')
    if len(set(ids)) != len(ids):
        raise InputError(f'{where}: item_ids: expected distinct item ids, {len(ids) - len(set(ids))} repeated')
    support = state.get('item_support')
    if support is not None and not (isinstance(support, torch.Tensor) and support.dim() == 1
                                    and len(support) == len(ids)):
        got = len(support) if isinstance(support, torch.Tensor) and support.dim() == 1 else type(support).__name__
        raise InputError(f'{where}: item_support: expected one count per item ({len(ids)}), got {got}')


def split_output_table(state):
    """A pre-issue-#20 GRU4Rec checkpoint with today's layout: its table Y (N x (L+1), the last column
    the biases) becomes W_y and b_y, and so does every optimiser state tensor of Y's shape; Y was the
    model's first parameter, W_y and b_y are its first two, so the other parameters' optimiser indices
    move up by one."""
    model = dict(state['model'])
    table = model.pop('Y')
    state = dict(state, model={'Wy': table[:, :-1].contiguous(), 'By': table[:, -1].contiguous(), **model})
    optimizer = state.get('optimizer')
    if optimizer is not None:
        def part(value, column):
            if isinstance(value, torch.Tensor) and value.shape == table.shape:
                return (value[:, :-1] if column is None else value[:, -1]).contiguous()
            return value

        moved = {(k + 1 if k > 0 else k): v for k, v in optimizer['state'].items()}
        if 0 in optimizer['state']:
            moved[0] = {key: part(value, None) for key, value in optimizer['state'][0].items()}
            moved[1] = {key: part(value, -1) for key, value in optimizer['state'][0].items()}
        groups = [dict(group, params=[j for i in group['params'] for j in ((0, 1) if i == 0 else (i + 1,))])
                  for group in optimizer['param_groups']]
        state['optimizer'] = {**optimizer, 'state': moved, 'param_groups': groups}
    return state


def write_curves(path, history, title):
    """curves.png: training loss per epoch and, when evaluated, Recall@K and MRR@K per epoch (headless)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    epochs = [h['epoch'] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    losses = [h['loss'] for h in history]
    if any(v is not None for v in losses):
        left.plot(epochs, [float('nan') if v is None else v for v in losses], marker='o')
    else:
        left.text(0.5, 0.5, 'no training loss (fitted in one pass)', ha='center', va='center')
    left.set(title='training loss', xlabel='epoch')
    evaluated = [h for h in history if h['metrics']]
    if evaluated:
        keys = [k for k in evaluated[-1]['metrics'] if '@' in k and k != 'MRR@1']   # MRR@1 = Recall@1
        cutoffs = sorted({int(k.split('@')[1]) for k in keys})
        for key in keys:
            right.plot([h['epoch'] for h in evaluated], [h['metrics'][key] for h in evaluated], marker='o',
                       color=f'C{cutoffs.index(int(key.split("@")[1]))}',
                       linestyle='-' if key.startswith('Recall') else '--', label=key)
        right.legend(fontsize=7, ncol=2)
    else:
        right.text(0.5, 0.5, 'not evaluated (no --valid_data)', ha='center', va='center')
    right.set(title='Recall@K and MRR@K', xlabel='epoch')
    fig.suptitle(title)
    fig.tight_layout()
    write_atomically([path], lambda tmp: fig.savefig(tmp[path], format='png', dpi=90))
    plt.close(fig)
