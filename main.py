"""Train and evaluate GRU4Rec, with the command line of the popular PyTorch port and the official algorithm.

    python main.py --loss_type TOP1                     # train; a checkpoint after every epoch
    python main.py --params rsc15_xe_shared_100         # a published configuration (see PRESETS)
    python main.py --is_eval --load_model checkpoint/<run>/model_00009.pt [--valid_data FILE]
    python main.py --model ItemKNN --valid_data rsc15_test.txt  # a baseline of baselines.py (POP, SPOP, ItemKNN, BPRMF)

Training (spec B2, B5, B6, B10): session-parallel mini-batches in the fixed oldest-first order, hidden
state zeroed per slot when its session changes and detached every step (no BPTT); candidates = the
batch's targets plus `n_sample` extra items shared by the batch from the sample store; logQ correction
when `logq` > 0; the loss of loss.py; the optimiser of optimizer.py. Every epoch ends with a checkpoint
`checkpoint/<run>/model_{epoch:05d}.pt` (epochs from 0), written atomically and loadable with
`torch.load(weights_only=True)`: weights, configuration, item map, optimiser and sampler state.

Configuration precedence: built-in defaults < the published settings of the chosen loss (or `--params`)
< flags given on the command line. `--params` takes a preset name, a JSON file, an official paramfile
(`paramfiles/*.py`, read as data, never executed) or the official `key=value,key=value` string.

Every run folder also gets config.json and curves.png (training loss and, with --valid_data, Recall@K
and MRR@K per epoch, redrawn after every epoch). Baselines are fitted on the same training file and
checkpointed in the same format (model_00000.pt; BPR-MF one per epoch), and evaluated by the same code.

Deliberate differences from the official PyTorch code: logQ applies to any loss when logq > 0 (as the
Theano code; PT only for cross-entropy), and the in-batch / sampled split of the logQ columns and the
epoch-loss weights use the real number of active slots (PT keeps the configured batch size, B12.1).
"""
import argparse
import ast
import itertools
import json
import math
import os
import re
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from baselines import BASELINE_DEFAULTS, BASELINES
from comparison_models import COMPARISON_DEFAULTS, COMPARISON_MODELS
from dataset import ArgumentParser, InputError, ItemMap, SessionData, SessionParallelIterator, run_cli, \
    write_atomically
from evaluation import DEFAULT_CUTOFFS, TIE_MODES, evaluate
from loss import PAIRING, canonical_loss, check_pairing, loss_function
from model import GRU4Rec, SampleStore
from optimizer import OPTIMIZERS, SPARSE_OK, make_optimizer

CHECKPOINT_FORMAT = 'gru4rec-reproduction-checkpoint'
CHECKPOINT_VERSION = 1
OTHER_MODELS = {**BASELINES, **COMPARISON_MODELS}          # everything but GRU4Rec: name -> class
OTHER_DEFAULTS = {**BASELINE_DEFAULTS, **COMPARISON_DEFAULTS}
MODELS = ('GRU4Rec',) + tuple(OTHER_MODELS)

DEFAULTS = dict(loss_type='cross-entropy', final_act='softmax', layers=[100], batch_size=32,
                dropout_input=0.0, dropout_hidden=0.0, lr=0.1, momentum=0.0, n_sample=2048, sample_alpha=0.5,
                bpreg=1.0, logq=0.0, constrained_embedding=True, embedding_dim=0, n_epochs=10,
                optimizer_type='AdagradM', seed=42, sample_store=10_000_000, fast_step=True)

# published configurations (spec B11)
PRESETS = {
    # the official RSC15 paramfile, paramfiles/rsc15_xe_shared_100_best.py (PT and TH)
    'rsc15_xe_shared_100': dict(loss_type='cross-entropy', final_act='softmax', constrained_embedding=True,
                                embedding_dim=0, layers=[100], batch_size=32, dropout_input=0.0,
                                dropout_hidden=0.4, lr=0.2, momentum=0.2, n_sample=2048, sample_alpha=0.5,
                                bpreg=0.0, logq=1.0),
    # BPR-max with ELU(0.5) and a shared embedding, the settings of issue #3 (spec I2)
    'bprmax_shared': dict(loss_type='bpr-max', final_act='elu-0.5', constrained_embedding=True, embedding_dim=0,
                          layers=[224], batch_size=80, dropout_input=0.5, dropout_hidden=0.05, lr=0.05,
                          momentum=0.4, n_sample=2048, sample_alpha=0.4, bpreg=1.95, logq=0.0),
    # ICLR'16 Table 2 (RSC15, 100 units, one-hot input, in-batch negatives only)
    'iclr16_top1': dict(loss_type='top1', final_act='tanh', constrained_embedding=False, embedding_dim=0,
                        layers=[100], batch_size=50, dropout_input=0.0, dropout_hidden=0.5, lr=0.01,
                        momentum=0.0, n_sample=0, sample_alpha=0.0, logq=0.0),
    'iclr16_bpr': dict(loss_type='bpr', final_act='tanh', constrained_embedding=False, embedding_dim=0,
                       layers=[100], batch_size=50, dropout_input=0.0, dropout_hidden=0.2, lr=0.05,
                       momentum=0.2, n_sample=0, sample_alpha=0.0, logq=0.0),
    'iclr16_xe': dict(loss_type='cross-entropy', final_act='softmax', constrained_embedding=False,
                      embedding_dim=0, layers=[100], batch_size=500, dropout_input=0.0, dropout_hidden=0.0,
                      lr=0.01, momentum=0.0, n_sample=0, sample_alpha=0.0, logq=0.0),
}
# `--loss_type X` alone: that loss's published settings
LOSS_PRESET = {'cross-entropy': 'rsc15_xe_shared_100', 'xe_logit': 'rsc15_xe_shared_100',
               'bpr-max': 'bprmax_shared', 'top1-max': 'bprmax_shared', 'top1': 'iclr16_top1',
               'bpr': 'iclr16_bpr'}
DEFAULT_ACTIVATION = {'cross-entropy': 'softmax', 'xe_logit': 'softmax_logit', 'top1': 'tanh', 'bpr': 'tanh',
                      'top1-max': 'linear', 'bpr-max': 'elu-0.5'}
# official parameter names (paramfiles, `-ps`) -> ours
OFFICIAL_NAMES = {'loss': 'loss_type', 'learning_rate': 'lr', 'dropout_p_embed': 'dropout_input',
                  'dropout_p_hidden': 'dropout_hidden', 'embedding': 'embedding_dim', 'optimizer': 'optimizer_type'}


def parse_args(argv=None):
    p = ArgumentParser(description='Train or evaluate GRU4Rec (session-based recommendations).',
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter, argument_default=None)
    g = p.add_argument_group('model and training (default: the published settings of the loss)')
    g.add_argument('--model', choices=MODELS, help='GRU4Rec (default), a baseline of baselines.py or a '
                   'comparison model of comparison_models.py; those take their settings (names and defaults in '
                   'BASELINE_DEFAULTS / COMPARISON_DEFAULTS there) from --params "key=value,..." and from '
                   '--n_epochs --lr --seed --batch_size --loss_type (CE or BPR) --hidden_size --max_seq_length '
                   'where they have them')
    g.add_argument('--params', help='preset (' + ', '.join(PRESETS) + '), JSON file, official paramfile '
                   'or "key=value,..." string; flags given beside it override it')
    g.add_argument('--loss_type', help='TOP1, BPR, CE / CrossEntropy / cross-entropy, TOP1-max, BPR-max, xe_logit')
    g.add_argument('--final_act', help='linear, tanh, relu, softmax, softmax_logit, elu-<a>, leaky-<a>, '
                   'selu-<a>-<b> (must suit the loss)')
    g.add_argument('--hidden_size', type=int, help='GRU units per layer')
    g.add_argument('--num_layers', type=int, help='number of GRU layers')
    g.add_argument('--layers', type=int, nargs='+', help='GRU layer sizes (overrides hidden_size/num_layers)')
    g.add_argument('--batch_size', type=int, help='session-parallel slots B')
    g.add_argument('--dropout_input', type=float, help='dropout on the input embedding (dropout_p_embed)')
    g.add_argument('--dropout_hidden', type=float, help='dropout on every GRU layer output (dropout_p_hidden)')
    g.add_argument('--n_epochs', type=int)
    g.add_argument('--optimizer_type', help=', '.join(OPTIMIZERS) + ' (AdagradM = the official Adagrad '
                   'with momentum; the others are torch.optim)')
    g.add_argument('--lr', type=float, help='learning rate')
    g.add_argument('--momentum', type=float)
    g.add_argument('--seed', type=int, help='initialisation, dropout and sampling seed')
    g.add_argument('--embedding_dim', type=int, help='separate item embedding width; 0 or -1 = one-hot input')
    g.add_argument('--constrained_embedding', action=argparse.BooleanOptionalAction,
                   help='shared input/output item vectors (takes precedence over --embedding_dim)')
    g.add_argument('--n_sample', type=int, help='extra negatives per mini-batch')
    g.add_argument('--sample_alpha', type=float, help='negatives drawn proportional to support^alpha')
    g.add_argument('--bpreg', type=float, help='BPR-max score regularisation')
    g.add_argument('--logq', type=float, help='logQ correction weight (0 = off)')
    g.add_argument('--sample_store', type=int, help='negatives generated at once')
    g.add_argument('--fast_step', action=argparse.BooleanOptionalAction,
                   help='train with the hand-written backward (same numbers; --no-fast_step = plain autograd)')
    g.add_argument('--max_seq_length', type=int, help='comparison models: clicks of history kept (default 50)')
    d = p.add_argument_group('data, checkpoints and evaluation')
    d.add_argument('--data_folder', default='data', help='folder of bare file names in --train_data/--valid_data')
    d.add_argument('--train_data', default='rsc15_train_full.txt')
    d.add_argument('--valid_data', help='evaluated after every epoch when given; the test file of --is_eval '
                   '(default there: rsc15_test.txt)')
    d.add_argument('--checkpoint_dir', default='checkpoint', help='runs go to <checkpoint_dir>/<MMDDHHMM>')
    d.add_argument('--is_eval', action='store_true', help='evaluate --load_model instead of training')
    d.add_argument('--resume', metavar='RUN', help='continue checkpoint/<run> from its last complete checkpoint '
                   '(same settings, data order, sampler and optimiser state; --n_epochs may extend it)')
    d.add_argument('--load_model', help='checkpoint to evaluate')
    d.add_argument('--eval_cutoffs', type=int, nargs='+', default=list(DEFAULT_CUTOFFS))
    d.add_argument('--tie_mode', default='standard', choices=TIE_MODES)
    d.add_argument('--eval_batch_size', type=int, default=512)
    d.add_argument('--device', default='auto', help='auto (cuda when available), cpu, cuda, cuda:1, ...')
    return p.parse_args(argv)


# ---------------------------------------------------------------- configuration

def read_params(spec):
    """--params: a preset name, a .json file, an official .py paramfile, or 'key=value,key=value'."""
    if spec in PRESETS:
        return dict(PRESETS[spec])
    return _translate(spec, _read_raw(spec))


def _read_raw(spec):
    """The {name: value} of a --params file or key=value string, names as written."""
    if os.path.isfile(spec):
        with open(spec) as f:
            text = f.read()
        try:
            raw = json.loads(text) if spec.endswith('.json') else _paramfile(text)
        except (ValueError, SyntaxError) as err:
            raise InputError(f'--params {spec}: cannot read parameters ({err})') from None
        if not isinstance(raw, dict):
            raise InputError(f'--params {spec}: expected a mapping of parameter names to values')
    elif '=' in spec:
        raw = {}
        for part in re.split(r',(?![^\[]*\])', spec):       # commas inside [..] belong to a list value
            key, _, value = part.partition('=')
            try:
                raw[key.strip()] = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                raw[key.strip()] = value.strip()
    else:
        raise InputError(f'--params {spec!r}: not a preset ({", ".join(PRESETS)}), a file or key=value pairs')
    return raw


def _paramfile(text):
    """The dict or OrderedDict([...]) literal assigned in an official paramfile, evaluated as data only."""
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Assign):
            value = node.value
            if isinstance(value, ast.Call) and getattr(value.func, 'id', '') in ('OrderedDict', 'dict') \
                    and value.args:
                return dict(ast.literal_eval(value.args[0]))
            if isinstance(value, ast.Dict):
                return ast.literal_eval(value)
    raise ValueError('no parameter dictionary found')


def _translate(spec, raw):
    params = {}
    elu = raw.pop('elu_param', None)
    for key, value in raw.items():
        name = OFFICIAL_NAMES.get(key, key)
        if name not in DEFAULTS and name not in ('hidden_size', 'num_layers'):
            raise InputError(f'--params {spec}: unknown parameter {key!r}')
        if name == 'layers':
            value = [int(v) for v in (value if isinstance(value, (list, tuple))
                                      else str(value).replace(';', '/').split('/'))]
        params[name] = value
    loss = canonical_loss(str(params.get('loss_type', DEFAULTS['loss_type'])))
    if elu is not None and 'final_act' not in params and loss in ('bpr-max', 'top1-max'):
        params['final_act'] = f'elu-{float(elu):g}' if float(elu) > 0 else 'linear'
    return params


def resolve_config(args):
    """The effective configuration: defaults < the loss's (or --params) settings < flags given."""
    given = {k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None}
    for flag in ('hidden_size', 'num_layers'):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise InputError(f'--{flag} must be >= 1, got {getattr(args, flag)}')
    try:
        if 'loss_type' in given:
            given['loss_type'] = canonical_loss(given['loss_type'])
        if args.params:
            base = read_params(args.params)
        else:
            base = dict(PRESETS[LOSS_PRESET[given.get('loss_type', DEFAULTS['loss_type'])]])
        config = {**DEFAULTS, **base}
        config['loss_type'] = canonical_loss(config['loss_type'])
        layers = config['layers']
        if args.layers is None and (args.hidden_size or args.num_layers):
            config['layers'] = [args.hidden_size or layers[0]] * (args.num_layers or len(layers))
        config.update(given)
        if 'loss_type' in given and 'final_act' not in given and \
                config['final_act'].split('-')[0] not in PAIRING[config['loss_type']]:
            config['final_act'] = DEFAULT_ACTIVATION[config['loss_type']]
        if config['embedding_dim'] < 0:
            config['embedding_dim'] = 0                 # the port's -1 = one-hot input
        if 'embedding_dim' in given and 'constrained_embedding' not in given:
            config['constrained_embedding'] = False     # asking for an embedding width means that mode
        check_pairing(config['loss_type'], config['final_act'])
    except ValueError as err:
        raise InputError(str(err)) from None
    checks = [('batch_size', config['batch_size'] >= 1, '>= 1'), ('n_epochs', config['n_epochs'] >= 1, '>= 1'),
              ('layers', min(config['layers']) >= 1, 'sizes >= 1'), ('lr', config['lr'] > 0, '> 0'),
              ('momentum', 0 <= config['momentum'] < 1, 'in [0, 1)'),
              ('dropout_input', 0 <= config['dropout_input'] < 1, 'in [0, 1)'),
              ('dropout_hidden', 0 <= config['dropout_hidden'] < 1, 'in [0, 1)'),
              ('n_sample', config['n_sample'] >= 0, '>= 0'), ('sample_alpha', config['sample_alpha'] >= 0, '>= 0'),
              ('logq', config['logq'] >= 0, '>= 0'), ('bpreg', config['bpreg'] >= 0, '>= 0'),
              ('sample_store', config['sample_store'] >= 1, '>= 1'),
              ('optimizer_type', config['optimizer_type'] in OPTIMIZERS, 'one of ' + ', '.join(OPTIMIZERS))]
    for flag, ok, expected in checks:
        if not ok:
            raise InputError(f'--{flag} must be {expected}, got {config[flag]}')
    return config


def resolve_baseline_config(args, name):
    """A baseline's or comparison model's settings: its defaults < --params key=value < the shared flags it has."""
    config = dict(OTHER_DEFAULTS[name])
    given = {k: v for k, v in vars(args).items()
             if (k in DEFAULTS or k in ('hidden_size', 'num_layers', 'max_seq_length')) and v is not None}
    for flag in given:
        if flag not in config:
            raise InputError(f'--{flag} does not apply to --model {name} (its settings: {", ".join(config)})')
    if args.params:
        if args.params in PRESETS:
            raise InputError(f'--params {args.params} is a GRU4Rec preset; --model {name} takes key=value pairs')
        for key, value in _read_raw(args.params).items():
            if key not in config:
                raise InputError(f'--params {args.params}: {name} has no parameter {key!r} '
                                 f'(its settings: {", ".join(config)})')
            config[key] = value
    config.update(given)
    for key, default in OTHER_DEFAULTS[name].items():
        try:
            config[key] = type(default)(config[key])
        except (TypeError, ValueError):
            raise InputError(f'{name} parameter {key} must be a {type(default).__name__}, got {config[key]!r}') from None
    checks = {'top_n': (lambda v: v >= 1, '>= 1'), 'n_sims': (lambda v: v >= 1, '>= 1'),
              'lmbd': (lambda v: v >= 0, '>= 0'), 'alpha': (lambda v: 0 <= v <= 1, 'in [0, 1]'),
              'n_factors': (lambda v: v >= 1, '>= 1'), 'n_epochs': (lambda v: v >= 1, '>= 1'),
              'lr': (lambda v: v > 0, '> 0'), 'lambda_session': (lambda v: v >= 0, '>= 0'),
              'lambda_item': (lambda v: v >= 0, '>= 0'), 'sigma': (lambda v: v > 0, '> 0'),
              'batch_size': (lambda v: v >= 1, '>= 1'),
              'negatives': (lambda v: v in ('first_rows', 'uniform'), 'first_rows or uniform'),
              'loss_type': (lambda v: v.upper() in ('CE', 'BPR'), 'CE or BPR'),
              'max_seq_length': (lambda v: v >= 1, '>= 1'), 'n_negatives': (lambda v: v >= 1, '>= 1'),
              'embedding_size': (lambda v: v >= 1, '>= 1'), 'hidden_size': (lambda v: v >= 1, '>= 1'),
              'inner_size': (lambda v: v >= 1, '>= 1'), 'n_layers': (lambda v: v >= 1, '>= 1'),
              'n_heads': (lambda v: v >= 1, '>= 1'), 'finetune_epochs': (lambda v: v >= 0, '>= 0'),
              'finetune_fraction': (lambda v: 0 < v <= 1, 'in (0, 1]'),
              'dropout_probs': (lambda v: len(v) == 2 and all(0 <= p < 1 for p in v), 'two values in [0, 1)')}
    for key in ('dropout_prob', 'click_dropout', 'hidden_dropout_prob', 'attn_dropout_prob'):
        checks[key] = (lambda v: 0 <= v < 1, 'in [0, 1)')
    if 'n_heads' in config and config['hidden_size'] % max(config['n_heads'], 1):
        raise InputError(f'{name}: hidden_size {config["hidden_size"]} must be divisible by n_heads {config["n_heads"]}')
    for key, value in config.items():
        ok, expected = checks.get(key, (lambda v: True, ''))
        if not ok(value):
            raise InputError(f'{name} parameter {key} must be {expected}, got {value!r}')
    return dict(config, model=name)


def data_path(folder, name):
    """Bare file names live in --data_folder; anything with a directory part is taken as given."""
    return name if os.path.dirname(name) else os.path.join(folder, name)


def pick_device(name):
    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if name.startswith('cuda') and not torch.cuda.is_available():
        raise InputError(f'--device {name}: no CUDA device is available (use --device cpu)')
    try:
        return str(torch.device(name))
    except RuntimeError:
        raise InputError(f'--device {name!r}: expected auto, cpu, cuda or cuda:<n>') from None


def build_model(config, n_items, device):
    name = config.get('model', 'GRU4Rec')
    if name != 'GRU4Rec':
        return OTHER_MODELS[name](n_items, **{k: v for k, v in config.items() if k != 'model'}).to(device)
    return GRU4Rec(n_items, layers=config['layers'], embedding=config['embedding_dim'],
                   constrained_embedding=config['constrained_embedding'],
                   dropout_p_embed=config['dropout_input'], dropout_p_hidden=config['dropout_hidden'],
                   seed=config['seed'], sparse=config['optimizer_type'] in SPARSE_OK).to(device)


# ---------------------------------------------------------------- checkpoints

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


def save_checkpoint(path, model, config, item_map, optimizer, sampler, epoch, loss, metrics, history=None):
    state = {'format': CHECKPOINT_FORMAT, 'version': CHECKPOINT_VERSION, 'model_name': config.get('model', 'GRU4Rec'),
             'model': model.state_dict(), 'config': config, 'item_ids': item_map.to_list(),
             'optimizer': optimizer.state_dict() if optimizer is not None else None,
             'sampler': sampler.state_dict() if sampler is not None else None, 'epoch': epoch, 'loss': loss,
             'metrics': metrics, 'history': history, 'rng': torch.get_rng_state(),
             'cuda_rng': torch.cuda.get_rng_state() if any(t.is_cuda for t in model.state_dict().values()) else None}
    write_atomically([path], lambda tmp: torch.save(state, tmp[path]))


def write_json(path, value):
    def write(tmp):
        with open(tmp[path], 'w') as f:
            json.dump(value, f, indent=1)
    write_atomically([path], write)


def load_checkpoint(path, device, expected_model=None):
    """(model, config, item map, raw checkpoint dict); InputError for anything that is not ours or is damaged,
    or that holds another model than `expected_model` (when given)."""
    if not os.path.isfile(path):
        raise InputError(f'--load_model {path}: no such file')
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:                          # truncated zip, foreign pickle, not a torch file at all
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f'--load_model {path}: not a readable checkpoint (truncated or not saved by '
                         f'main.py: {first[:120]})') from None
    if not isinstance(state, dict) or state.get('format') != CHECKPOINT_FORMAT:
        raise InputError(f'--load_model {path}: not a checkpoint of this project (saved by main.py)')
    if state.get('version') != CHECKPOINT_VERSION:
        raise InputError(f'--load_model {path}: checkpoint version {state.get("version")}, '
                         f'this code reads {CHECKPOINT_VERSION}')
    config, item_map = state['config'], ItemMap(state['item_ids'])
    name = state.get('model_name', 'GRU4Rec')
    if expected_model is not None and name != expected_model:
        raise InputError(f'--load_model {path}: holds a {name} model, not {expected_model} (--model)')
    model = build_model(dict(config, model=name), len(item_map), device)
    try:
        model.load_state_dict(state['model'])
    except RuntimeError as err:
        raise InputError(f'--load_model {path}: weights do not match the saved configuration '
                         f'({str(err).splitlines()[0]})') from None
    return model, config, item_map, state


# ---------------------------------------------------------------- training

class Diverged(Exception):
    pass


def train_epoch(model, optimizer, loss_fn, iterator, sampler, logq_tables, config, device, progress=None,
                max_steps=None):
    """One pass over all training sessions (spec B10). Returns (mean loss per target, targets, steps).
    max_steps cuts the epoch short (for benchmarks only)."""
    n_sample = config['n_sample']
    fast = config.get('fast_step', True) and getattr(model, 'has_fast_step', False)
    update = getattr(optimizer, 'update', optimizer.step)     # AdagradM: its step without torch's wrapper
    hidden = model.init_hidden(iterator.n_slots, device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    n_targets = n_steps = 0
    start = time.perf_counter()
    for inputs, targets, reset, keep in iterator.torch_steps(device):
        if keep is not None:
            hidden = [h[keep] for h in hidden]
        if reset is not None:
            hidden = [h.masked_fill(reset[:, None], 0.0) for h in hidden]
        if (n_sample == 0 and len(targets) < 2) or n_steps == max_steps:   # B2.6: no negative would be left
            break
        if n_sample:
            samples = sampler.next()
            candidates = torch.cat([targets, samples])
        else:
            candidates = targets
        correction = None
        if logq_tables is not None:                  # spec B6
            in_batch, sampled = logq_tables
            correction = in_batch.index_select(0, targets)
            if n_sample:
                correction = torch.cat([correction, sampled.index_select(0, samples)])
        if fast:      # the same numbers as the plain lines below, with a hand-written backward (issue #6)
            loss, hidden = model.train_step(inputs, hidden, candidates, loss_fn, correction)
        else:
            optimizer.zero_grad(set_to_none=True)
            scores, hidden = model(inputs, hidden, candidates)
            loss = loss_fn(scores if correction is None else scores - correction)
            loss.backward()
        update()
        if not fast:
            hidden = [h.detach() for h in hidden]
        total.add_(loss.detach(), alpha=len(targets))
        n_targets += len(targets)
        n_steps += 1
        if n_steps % 200 == 0:
            current = total.item() / n_targets
            if not math.isfinite(current):
                raise Diverged(f'step {n_steps}')
            if progress is None:
                continue
            progress.update(200)
            progress.set_postfix(loss=f'{current:.4f}', events_s=f'{n_targets / (time.perf_counter() - start):,.0f}')
    mean = total.item() / max(n_targets, 1)
    if not math.isfinite(mean):
        raise Diverged('the end of the epoch')
    return mean, n_targets, n_steps


def training_setup(config, data, device, model=None):
    """(model, optimiser, loss function, iterator, sample store or None, logQ tables or None) for
    train_epoch; `model` defaults to the configured GRU4Rec."""
    if model is None:
        model = build_model(config, len(data.item_map), device)
    optimizer = make_optimizer(config['optimizer_type'], model.parameters(), config['lr'], config['momentum'])
    loss_fn = loss_function(config['loss_type'], config['final_act'], config['batch_size'], config['bpreg'])
    iterator = SessionParallelIterator(data, config['batch_size'])
    support = data.item_support()
    sampler = SampleStore(support, config['n_sample'], config['sample_alpha'], config['sample_store'],
                          seed=config['seed'], device=device) if config['n_sample'] else None
    logq_tables = None
    if config['logq'] > 0:          # spec B6; supp >= 1 for every item of the training map
        log_support = torch.log(torch.from_numpy(support).float()).to(device)
        logq_tables = (config['logq'] * log_support, config['logq'] * config['sample_alpha'] * log_support)
    return model, optimizer, loss_fn, iterator, sampler, logq_tables


def gru4rec_epochs(run, config, device, first=0):
    """Train GRU4Rec epoch by epoch from epoch `first`; yields (mean loss, speed note) after each epoch."""
    iterator = run[3]
    for epoch in range(first, config['n_epochs']):
        start = time.perf_counter()
        with tqdm(total=len(iterator), desc=f'epoch {epoch}', unit='mb', leave=False, disable=None) as progress:
            loss, n_targets, n_steps = train_epoch(*run, config, device, progress)
        seconds = time.perf_counter() - start
        yield loss, f'{n_steps / seconds:.1f} mb/s  {n_targets / seconds:,.0f} events/s'


def train(args, config, device, resume=None):
    """Train (or fit) the configured model; a checkpoint, a summary line and curves.png after each epoch.
    `resume`: (run folder, checkpoint dict) to continue that run after its checkpoint's epoch.
    Returns (last checkpoint path, its metrics or None)."""
    if resume is None:
        train_path = data_path(args.data_folder, args.train_data)
        valid_path = data_path(args.data_folder, args.valid_data) if args.valid_data else None
    else:
        train_path, valid_path = config.pop('train_data'), config.pop('valid_data')
        for key in ('device', 'n_items'):
            config.pop(key, None)
    data = SessionData(train_path)
    valid = SessionData(valid_path, item_map=data.item_map) if valid_path else None
    torch.manual_seed(config['seed'] if 'seed' in config else 42)
    np.random.seed(config['seed'] if 'seed' in config else 42)
    name = config.get('model', 'GRU4Rec')
    print(f'train {train_path}: {data.n_events:,} events, {data.n_sessions:,} sessions, {len(data.item_map):,} items')
    first, history = 0, []
    if name == 'GRU4Rec':
        run = training_setup(config, data, device)
        model, optimizer, _, iterator, sampler, _ = run
        print(f'{iterator.n_targets:,} targets in {len(iterator):,} mini-batches per epoch')
        if resume is not None:
            first, history = restore(resume[1], data, model, optimizer, sampler, device)
        epochs = gru4rec_epochs(run, config, device, first)
    else:
        model, optimizer, sampler = build_model(config, len(data.item_map), device), None, None
        epochs = ((loss, 'fitted') for loss in model.fit(data))
    if valid is not None:
        print(f'valid {valid_path}: {valid.n_events:,} events, {valid.n_sessions:,} sessions '
              f'({valid.dropped_events:,} clicks on unknown items and {valid.dropped_sessions:,} short sessions dropped)')
    if resume is None:
        run_dir = new_run_dir(args.checkpoint_dir)
        saved = dict(config, model=name, train_data=train_path, valid_data=valid_path, device=device,
                     n_items=len(data.item_map))
        write_json(os.path.join(run_dir, 'config.json'), saved)
    else:
        run_dir = resume[0]
        print(f'resuming {run_dir} after epoch {first - 1}')
    print(f'{name} config: ' + json.dumps(config))
    print(f'run folder: {run_dir}  device: {device}  threads: {torch.get_num_threads()}')
    last_good = os.path.join(run_dir, f'model_{first - 1:05d}.pt') if first else None
    metrics = history[-1]['metrics'] if history else None
    epoch = first
    try:
        for epoch in itertools.count(first):
            start = time.perf_counter()
            try:
                loss, speed = next(epochs)
            except StopIteration:
                break
            except (Diverged, FloatingPointError) as where:
                print(f'error: the training loss became NaN or infinite in epoch {epoch} ({where}); '
                      f'stopped. ' + (f'The last good checkpoint is {last_good}. ' if last_good else '')
                      + 'Try a lower --lr.', file=sys.stderr)
                sys.exit(3)
            line = f'epoch {epoch}  ' + (f'loss {loss:.6f}  ' if loss is not None else '') + \
                f'{time.perf_counter() - start:.1f} s  {speed}'
            metrics = None
            if valid is not None:
                metrics = evaluate(model, valid, args.eval_cutoffs, args.tie_mode, args.eval_batch_size, device)
                line += '  ' + '  '.join(f'{k} {v:.4f}' for k, v in metrics.items() if '@' in k)
            history.append({'epoch': epoch, 'loss': loss, 'metrics': metrics})
            path = os.path.join(run_dir, f'model_{epoch:05d}.pt')
            save_checkpoint(path, model, dict(config, model=name), data.item_map, optimizer, sampler, epoch, loss,
                            metrics, history)
            last_good = path
            write_curves(os.path.join(run_dir, 'curves.png'), history, f'{name} ({os.path.basename(run_dir)})')
            print(line, flush=True)
    except KeyboardInterrupt:        # checkpoints are renamed into place whole, so the last one is intact
        print(f'\ninterrupted in epoch {epoch}. ' + (
            f'The last complete checkpoint is {last_good}; continue with: python main.py --resume {run_dir}'
            if last_good else 'No epoch was complete, so there is nothing to resume.'), file=sys.stderr)
        sys.exit(130)
    print(f'saved {last_good}')
    return last_good, metrics


def restore(state, data, model, optimizer, sampler, device):
    """Put a run back where its checkpoint left it: weights, optimiser, sample store, dropout RNG.
    Returns (the next epoch, the history so far)."""
    if state['item_ids'] != data.item_map.to_list():
        raise InputError('--resume: the training file no longer gives the item map the run was trained with')
    model.load_state_dict(state['model'])
    optimizer.load_state_dict(state['optimizer'])
    if sampler is not None:
        sampler.load_state_dict(state['sampler'])
    torch.set_rng_state(state['rng'])
    if str(device).startswith('cuda') and state.get('cuda_rng') is not None:
        torch.cuda.set_rng_state(state['cuda_rng'])
    return state['epoch'] + 1, list(state.get('history') or [])


def resume_run(args, device):
    """--resume RUN: continue a run from its last complete checkpoint with its saved configuration."""
    run_dir = args.resume.rstrip('/')
    if os.path.isfile(run_dir):
        run_dir = os.path.dirname(run_dir)
    config_path = os.path.join(run_dir, 'config.json')
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, ValueError):
        raise InputError(f'--resume {args.resume}: no readable config.json (expected a run folder checkpoint/<run>)') from None
    if config.get('model', 'GRU4Rec') != 'GRU4Rec':
        raise InputError(f'--resume {args.resume}: a {config["model"]} run is fitted again, not resumed '
                         f'(python main.py --model {config["model"]} ...)')
    refused = [k for k, v in vars(args).items() if v is not None and (k in DEFAULTS or k in ('params', 'hidden_size',
               'num_layers', 'load_model')) and k != 'n_epochs']
    if refused:
        raise InputError(f'--resume continues with the run\'s saved settings; drop --{refused[0]} '
                         f'(only --n_epochs may extend the run)')
    if args.n_epochs is not None:
        config['n_epochs'] = args.n_epochs
    checkpoints = sorted(f for f in os.listdir(run_dir) if f.startswith('model_') and f.endswith('.pt'))
    for name in reversed(checkpoints):          # the newest one that loads; a torn write never got its name
        try:
            _, _, _, state = load_checkpoint(os.path.join(run_dir, name), device, 'GRU4Rec')
            break
        except InputError as err:
            print(f'skipping {name}: {err}', file=sys.stderr)
    else:
        raise InputError(f'--resume {args.resume}: no complete checkpoint to continue from')
    if state['epoch'] + 1 >= config['n_epochs']:
        raise InputError(f'--resume {args.resume}: all {config["n_epochs"]} epochs are done '
                         f'(pass --n_epochs N to train further)')
    return train(args, config, device, resume=(run_dir, state))


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


# ---------------------------------------------------------------- evaluation

def run_eval(args, device):
    if not args.load_model:
        raise InputError('--is_eval needs --load_model checkpoint/<run>/model_XXXXX.pt')
    model, config, item_map, state = load_checkpoint(args.load_model, device, args.model)
    test_path = data_path(args.data_folder, args.valid_data or 'rsc15_test.txt')
    data = SessionData(test_path, item_map=item_map)
    if data.dropped_events or data.dropped_sessions:
        print(f'{test_path}: dropped {data.dropped_events:,} clicks on items unknown to the model and '
              f'{data.dropped_sessions:,} sessions left shorter than 2')
    try:
        metrics = evaluate(model, data, args.eval_cutoffs, args.tie_mode, args.eval_batch_size, device)
    except ValueError as err:
        raise InputError(f'--load_model {args.load_model}: {err}') from None
    print(f'{args.load_model} (epoch {state["epoch"]}) on {test_path}: {metrics["n_predictions"]:,} predictions, '
          f'{metrics["tie_mode"]} ties')
    for k in sorted(set(args.eval_cutoffs)):
        print(f'Recall@{k}: {metrics[f"Recall@{k}"]:.4f} MRR@{k}: {metrics[f"MRR@{k}"]:.4f}')
    results_path = os.path.join(os.path.dirname(args.load_model) or '.', 'results.json')
    results = {}
    if os.path.isfile(results_path):
        try:
            with open(results_path) as f:
                results = json.load(f)
        except (OSError, ValueError):
            results = {}
    results[os.path.basename(args.load_model)] = dict(metrics, test_data=test_path, epoch=state['epoch'])
    write_json(results_path, results)
    return metrics


def main(argv=None):
    args = parse_args(argv)
    for flag in ('eval_batch_size',):
        if getattr(args, flag) < 1:
            raise InputError(f'--{flag} must be >= 1, got {getattr(args, flag)}')
    if min(args.eval_cutoffs) < 1:
        raise InputError(f'--eval_cutoffs must all be >= 1, got {args.eval_cutoffs}')
    device = pick_device(args.device)
    if args.is_eval:
        return run_eval(args, device)
    if args.resume:
        return resume_run(args, device)
    if args.load_model:
        raise InputError('--load_model is for --is_eval (to evaluate a checkpoint); training starts from scratch')
    if args.model not in (None, 'GRU4Rec'):
        return train(args, resolve_baseline_config(args, args.model), device)
    return train(args, resolve_config(args), device)


if __name__ == '__main__':
    run_cli(main)
