"""Configuration: the models by name, GRU4Rec's defaults and published presets, and how --params and the
command-line flags combine into one effective configuration.

Precedence (spec B11): built-in defaults < the published settings of the chosen loss (or `--params`) <
flags given on the command line. `--params` takes a preset name, a JSON file, an official paramfile
(`paramfiles/*.py`, read as data, never executed) or the official `key=value,key=value` string, with the
official parameter names (OFFICIAL_NAMES) or ours. Baselines and comparison models take their own
settings (BASELINE_DEFAULTS / COMPARISON_DEFAULTS) from --params key=value pairs and the shared flags.
"""
import ast
import json
import os
import re

from baselines import BASELINE_DEFAULTS, BASELINES
from cli import InputError
from comparison_models import COMPARISON_DEFAULTS, COMPARISON_MODELS
from loss import PAIRING, canonical_loss, check_pairing
from optimizer import OPTIMIZERS
from session_knn import SAMPLINGS, SESSION_KNN, SESSION_KNN_DEFAULTS, SIMILARITIES, WEIGHTINGS
from static_step import STEP_MODES

OTHER_MODELS = {**BASELINES, **SESSION_KNN, **COMPARISON_MODELS}          # everything but GRU4Rec: name -> class
OTHER_DEFAULTS = {**BASELINE_DEFAULTS, **SESSION_KNN_DEFAULTS, **COMPARISON_DEFAULTS}
MODELS = ('GRU4Rec',) + tuple(OTHER_MODELS)

DEFAULTS = dict(loss_type='cross-entropy', final_act='softmax', layers=[100], batch_size=32,
                dropout_input=0.0, dropout_hidden=0.0, lr=0.1, momentum=0.0, n_sample=2048, sample_alpha=0.5,
                bpreg=1.0, logq=0.0, constrained_embedding=True, embedding_dim=0, n_epochs=10,
                optimizer_type='AdagradM', seed=42, sample_store=10_000_000, fast_step=True, step_mode='auto',
                official_quirks=[])

# --official_quirks: the official PyTorch code's behaviour where ours deliberately differs (training.py's
# docstring); each measured in benchmarks/RESULTS.md ("Faithfulness"); `--official_quirks` alone = all
QUIRKS = {
    'n_valid': 'logQ in-batch / sampled split and loss weights at the configured batch size, also when '
               'fewer slots are active (PT fit never updates n_valid, spec B12.1)',
    'logq_xe_only': 'logQ correction with cross-entropy only (PT); ours applies it to any loss with logq > 0',
    'logq_float32': 'logQ as log(supp) and log(supp ** alpha) in float32 (PT); ours: logq * alpha * log(supp)',
    'dropout_bernoulli': "dropout masks drawn by torch's Bernoulli kernel, as nn.Dropout (ours: uniform >= p)",
    'sampler_float32': 'negative samples from float32 uniforms against a float32 CDF (PT; ours: float64)',
}

# published configurations (spec B11)
PRESETS = {
    # the official RSC15 paramfile, paramfiles/rsc15_xe_shared_100_best.py (PT and TH)
    'rsc15_xe_shared_100': dict(loss_type='cross-entropy', final_act='softmax', constrained_embedding=True,
                                embedding_dim=0, layers=[100], batch_size=32, dropout_input=0.0,
                                dropout_hidden=0.4, lr=0.2, momentum=0.2, n_sample=2048, sample_alpha=0.5,
                                bpreg=0.0, logq=1.0),
    # the official paramfiles of the other datasets (datasets-spec J1's table; paramfiles/<name>_best.py)
    'yoochoose_xe_shared': dict(loss_type='cross-entropy', final_act='softmax', constrained_embedding=True,
                                embedding_dim=0, layers=[480], batch_size=48, dropout_input=0.0, dropout_hidden=0.2,
                                lr=0.07, momentum=0.0, n_sample=2048, sample_alpha=0.2, bpreg=0.0, logq=1.0),
    'rees46_xe_shared': dict(loss_type='cross-entropy', final_act='softmax', constrained_embedding=True,
                             embedding_dim=0, layers=[512], batch_size=240, dropout_input=0.45, dropout_hidden=0.0,
                             lr=0.065, momentum=0.0, n_sample=2048, sample_alpha=0.5, bpreg=0.0, logq=1.0),
    'coveo_bprmax_shared': dict(loss_type='bpr-max', final_act='elu-1', constrained_embedding=True, embedding_dim=0,
                                layers=[512], batch_size=144, dropout_input=0.35, dropout_hidden=0.0, lr=0.05,
                                momentum=0.4, n_sample=2048, sample_alpha=0.2, bpreg=1.85, logq=0.0),
    # also the BPR-max settings of issue #3 (spec I2), known there as `bprmax_shared` (kept as an alias below)
    'retailrocket_bprmax_shared': dict(loss_type='bpr-max', final_act='elu-0.5', constrained_embedding=True,
                                       embedding_dim=0, layers=[224], batch_size=80, dropout_input=0.5,
                                       dropout_hidden=0.05, lr=0.05, momentum=0.4, n_sample=2048, sample_alpha=0.4,
                                       bpreg=1.95, logq=0.0),
    'diginetica_bprmax_shared': dict(loss_type='bpr-max', final_act='elu-1', constrained_embedding=True,
                                     embedding_dim=0, layers=[512], batch_size=128, dropout_input=0.5,
                                     dropout_hidden=0.3, lr=0.05, momentum=0.15, n_sample=2048, sample_alpha=0.3,
                                     bpreg=0.9, logq=0.0),
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
PRESETS['bprmax_shared'] = PRESETS['retailrocket_bprmax_shared']      # the name issue #3 and the README use
# `--loss_type X` alone: that loss's published settings
LOSS_PRESET = {'cross-entropy': 'rsc15_xe_shared_100', 'xe_logit': 'rsc15_xe_shared_100',
               'bpr-max': 'bprmax_shared', 'top1-max': 'bprmax_shared', 'top1': 'iclr16_top1',
               'bpr': 'iclr16_bpr'}
DEFAULT_ACTIVATION = {'cross-entropy': 'softmax', 'xe_logit': 'softmax_logit', 'top1': 'tanh', 'bpr': 'tanh',
                      'top1-max': 'linear', 'bpr-max': 'elu-0.5'}
# official parameter names (paramfiles, `-ps`) -> ours
OFFICIAL_NAMES = {'loss': 'loss_type', 'learning_rate': 'lr', 'dropout_p_embed': 'dropout_input',
                  'dropout_p_hidden': 'dropout_hidden', 'embedding': 'embedding_dim', 'optimizer': 'optimizer_type'}



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
    if 'final_act' not in params:     # naming a loss brings its activation (official: elu_param, default 0.5)
        if elu is not None and loss in ('bpr-max', 'top1-max'):
            params['final_act'] = f'elu-{float(elu):g}' if float(elu) > 0 else 'linear'
        elif 'loss_type' in params:
            params['final_act'] = DEFAULT_ACTIVATION[loss]
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
        if args.official_quirks == []:                  # the bare flag: every quirk
            config['official_quirks'] = list(QUIRKS)
        quirks = config['official_quirks']
        config['official_quirks'] = quirks.replace('/', ',').split(',') if isinstance(quirks, str) else list(quirks)
        unknown = [q for q in config['official_quirks'] if q not in QUIRKS]
        if unknown:
            raise ValueError(f'--official_quirks {unknown[0]}: expected one of {", ".join(QUIRKS)} (or none: all)')
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
              ('optimizer_type', config['optimizer_type'] in OPTIMIZERS, 'one of ' + ', '.join(OPTIMIZERS)),
              ('step_mode', config['step_mode'] in STEP_MODES, 'one of ' + ', '.join(STEP_MODES))]
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
        if isinstance(default, bool) and not isinstance(config[key], bool):
            raise InputError(f'{name} parameter {key} must be True or False, got {config[key]!r}')
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
              'dropout_probs': (lambda v: len(v) == 2 and all(0 <= p < 1 for p in v), 'two values in [0, 1)'),
              'step': (lambda v: v >= 1, '>= 1'), 'weight_decay': (lambda v: v >= 0, '>= 0'),
              'lr_decay_step': (lambda v: v >= 0, '>= 0 (0: no decay)'), 'lr_decay': (lambda v: 0 < v <= 1, 'in (0, 1]')}
    for key in ('dropout_prob', 'click_dropout', 'hidden_dropout_prob', 'attn_dropout_prob'):
        checks[key] = (lambda v: 0 <= v < 1, 'in [0, 1)')
    if name in SIMILARITIES:                      # the session-kNN family (session_knn.py)
        checks.update(k=(lambda v: v >= 1, '>= 1'), sample_size=(lambda v: v >= 0, '>= 0 (0: every candidate)'),
                      sampling=(lambda v: v in SAMPLINGS, 'one of ' + ', '.join(SAMPLINGS)),
                      similarity=(lambda v: v in SIMILARITIES[name], 'one of ' + ', '.join(SIMILARITIES[name])),
                      weighting=(lambda v: v in WEIGHTINGS, 'one of ' + ', '.join(WEIGHTINGS)),
                      weighting_score=(lambda v: v in WEIGHTINGS, 'one of ' + ', '.join(WEIGHTINGS)))
        for key in ('idf_weighting', 'lambda_spw', 'lambda_snh', 'lambda_inh', 'lambda_ipw', 'lambda_idf'):
            checks[key] = (lambda v: v >= 0, '>= 0 (0: off)')
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
