"""The training loop: GRU4Rec epoch by epoch (or a baseline's fit), a checkpoint, a summary line and the
curves after every epoch, and --resume.

Training (spec B2, B5, B6, B10): session-parallel mini-batches in the fixed oldest-first order, hidden
state zeroed per slot when its session changes and detached every step (no BPTT); candidates = the
batch's targets plus `n_sample` extra items shared by the batch from the sample store; logQ correction
when `logq` > 0; the loss of loss.py; the optimiser of optimizer.py. Baselines are fitted on the same
training file and checkpointed in the same format (model_00000.pt; BPR-MF one per epoch), and evaluated
by the same code.

Deliberate differences from the official PyTorch code, each undone by one `--official_quirks` name
(config.QUIRKS; measured in benchmarks/RESULTS.md, "Faithfulness"): logQ applies to any loss when
logq > 0 (as the Theano code; PT only for cross-entropy: `logq_xe_only`); the in-batch / sampled split of
the logQ columns and the epoch-loss weights use the real number of active slots (PT's fit keeps the
configured batch size, spec B12.1: `n_valid`); the logQ table is logq * alpha * log(supp) (PT takes
log(supp ** alpha) in float32 every step: `logq_float32`); the dropout masks and the negative samples
are drawn differently from the same distributions (`dropout_bernoulli`, `sampler_float32`).
"""
import itertools
import json
import math
import os
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from checkpoints import (build_model, load_checkpoint, new_run_dir, prune_checkpoints, remove_stale_temporaries,
                         save_checkpoint, write_curves, write_json)
from cli import InputError
from config import DEFAULTS, data_path
from dataset import SessionData, SessionParallelIterator
from devices import keep_freed_memory, set_rng_state
from evaluation import evaluate
from loss import loss_function
from model import SampleStore
from optimizer import make_optimizer
import static_step


class Diverged(Exception):
    pass


def train_epoch(model, optimizer, loss_fn, iterator, sampler, logq_tables, config, device, progress=None,
                max_steps=None):
    """One pass over all training sessions (spec B10). Returns (mean loss per target, targets, steps).
    max_steps cuts the epoch short (for benchmarks only)."""
    n_sample = config['n_sample']
    split = config['batch_size'] if 'n_valid' in config.get('official_quirks', ()) else None   # B12.1
    mode = static_step.mode_in_effect(config, model, optimizer)
    fast = mode != 'plain' and model.has_fast_step      # (the one-hot mode's static runs: plain beside them)
    static = static_step.step_for(mode, model, optimizer)      # None: the fast or plain step
    update = getattr(optimizer, 'update', optimizer.step)     # AdagradM: its step without torch's wrapper
    hidden = model.init_hidden(iterator.n_slots, device)
    no_reset = None if static is None else torch.zeros(iterator.n_slots, dtype=torch.bool, device=device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    n_targets = n_steps = weights = 0
    start = time.perf_counter()
    for inputs, targets, reset, keep in iterator.torch_steps(device):
        if keep is not None:
            hidden = [h[keep] for h in hidden]
            static = None              # the epoch's tail, where the batch shrinks: the fast step (same numbers)
        if reset is not None and static is None:
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
            if split is not None:                    # PT: the first B candidates count as in-batch
                correction = torch.cat([in_batch.index_select(0, candidates[:split]),
                                        sampled.index_select(0, candidates[split:])])
            else:
                correction = in_batch.index_select(0, targets)
                if n_sample:
                    correction = torch.cat([correction, sampled.index_select(0, samples)])
        if static is not None:     # static shapes, the update included (static_step.py, issue #31)
            loss, hidden = static(model, optimizer, loss_fn, inputs, hidden, candidates,
                                  no_reset if reset is None else reset, correction)
        elif fast:    # the same numbers as the plain lines below, with a hand-written backward (issue #6)
            loss, hidden = model.train_step(inputs, hidden, candidates, loss_fn, correction)
        else:
            optimizer.zero_grad(set_to_none=True)
            scores, hidden = model(inputs, hidden, candidates)
            loss = loss_fn(scores if correction is None else scores - correction)
            loss.backward()
        if static is None:
            update()
        elif static_step.fell_back(static):
            static = None      # the compilation failed (one warning line): fast (plain) for the rest of the epoch
        if not fast:
            hidden = [h.detach() for h in hidden]
        weight = len(targets) if split is None else split
        total.add_(loss.detach(), alpha=weight)
        weights += weight
        n_targets += len(targets)
        n_steps += 1
        if n_steps % 200 == 0:
            current = total.item() / weights
            if not math.isfinite(current):
                raise Diverged(f'step {n_steps}')
            if progress is None:
                continue
            progress.update(200)
            progress.set_postfix(loss=f'{current:.4f}', events_s=f'{n_targets / (time.perf_counter() - start):,.0f}')
    mean = total.item() / max(weights, 1)
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
    quirks = config.get('official_quirks', ())
    sampler = SampleStore(support, config['n_sample'], config['sample_alpha'], config['sample_store'],
                          seed=config['seed'], device=device,
                          dtype=torch.float32 if 'sampler_float32' in quirks else torch.float64) \
        if config['n_sample'] else None
    logq_tables = None
    if config['logq'] > 0 and ('logq_xe_only' not in quirks or config['loss_type'] == 'cross-entropy'):
        counts = torch.from_numpy(support).float()            # spec B6; supp >= 1 for every training item
        if 'logq_float32' in quirks:                           # PT: log(supp) and log(supp ** alpha), float32
            logq_tables = (config['logq'] * torch.log(counts), config['logq'] * torch.log(counts ** config['sample_alpha']))
        else:
            log_support = torch.log(counts)
            logq_tables = (config['logq'] * log_support, config['logq'] * config['sample_alpha'] * log_support)
        logq_tables = tuple(t.to(device) for t in logq_tables)
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
    if torch.device(device).type == 'cpu':
        keep_freed_memory()                 # a step's buffers are not page-faulted in afresh every step
    data = SessionData(train_path)
    valid = SessionData(valid_path, item_map=data.item_map) if valid_path else None
    torch.manual_seed(config['seed'] if 'seed' in config else 42)
    np.random.seed(config['seed'] if 'seed' in config else 42)
    name = config.get('model', 'GRU4Rec')
    print(f'train {train_path}: {data.n_events:,} events, {data.n_sessions:,} sessions, {len(data.item_map):,} items')
    first, history, auto = 0, [], ''
    if name == 'GRU4Rec':
        run = training_setup(config, data, device)
        model, optimizer, loss_fn, iterator, sampler, _ = run
        check_learning_rate(config['lr'], model)
        if config.get('step_mode', 'auto') == 'auto':       # the mode is recorded resolved (config.json, checkpoints)
            config['step_mode'], why = static_step.auto_mode(config, model, optimizer, len(data.item_map),
                                                             data.n_events, device, loss_fn)
            auto = f' (auto: {why})'
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
    mode = static_step.mode_in_effect(config, model, optimizer) if name == 'GRU4Rec' else None
    step = f'  step: {mode}{auto}' if mode else ''
    print(f'run folder: {run_dir}  device: {device}  threads: {torch.get_num_threads()}{step}')
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
                metrics = evaluate(model, valid, args.eval_cutoffs, args.tie_mode, args.eval_batch_size, device,
                                   **static_step.evaluation_options(mode, model))
                line += '  ' + '  '.join(f'{k} {v:.4f}' for k, v in metrics.items() if '@' in k)
            history.append({'epoch': epoch, 'loss': loss, 'metrics': metrics})
            path = os.path.join(run_dir, f'model_{epoch:05d}.pt')
            try:
                save_checkpoint(path, model, dict(config, model=name), data.item_map, optimizer, sampler, epoch,
                                loss, metrics, history, item_support=data.item_support())
                last_good = path
                if getattr(args, 'keep_checkpoints', None):
                    prune_checkpoints(run_dir, epoch, args.keep_checkpoints)
                write_curves(os.path.join(run_dir, 'curves.png'), history, f'{name} ({os.path.basename(run_dir)})')
            except InputError as err:       # the disk is full (write_atomically removed its temporary file)
                if name != 'GRU4Rec':
                    hint = 'make room and fit it again'
                elif last_good:
                    hint = f'make room, then continue with: python main.py --resume {run_dir}'
                else:
                    hint = 'no epoch was saved, so there is nothing to resume: make room and start again'
                raise InputError(f'{err}; {hint}') from None
            print(line, flush=True)
    except KeyboardInterrupt:        # checkpoints are renamed into place whole, so the last one is intact
        print(f'\ninterrupted in epoch {epoch}. ' + (
            f'The last complete checkpoint is {last_good}; continue with: python main.py --resume {run_dir}'
            if last_good else 'No epoch was complete, so there is nothing to resume.'), file=sys.stderr)
        sys.exit(130)
    print(f'saved {last_good}')
    return last_good, metrics


def check_learning_rate(lr, model):
    """Stop (exit 3, as for a NaN loss) before training when --lr is beyond the weights' float range: torch
    refuses such a step size ("value cannot be converted to type float without overflow"), and an
    infinite one makes the weights infinite at the first step."""
    dtype = next(model.parameters()).dtype
    if not lr <= torch.finfo(dtype).max:
        print(f'error: --lr {lr:g} is beyond the largest {str(dtype).replace("torch.", "")} '
              f'({torch.finfo(dtype).max:.3g}), the type of the weights: every step would make them infinite; '
              f'stopped before training. Try a lower --lr.', file=sys.stderr)
        sys.exit(3)


def restore(state, data, model, optimizer, sampler, device):
    """Put a run back where its checkpoint left it: weights, optimiser, sample store, dropout RNG.
    Returns (the next epoch, the history so far)."""
    if state['item_ids'] != data.item_map.to_list():
        raise InputError('--resume: the training file no longer gives the item map the run was trained with')
    trained_on, here = state.get('device'), torch.device(device).type
    if trained_on is not None and trained_on != here:       # (checkpoints before issue #16: the sampler check)
        raise InputError(f'--resume: the run trained on {trained_on} and would continue on {here}; its sampler '
                         f'and dropout random streams are {trained_on} streams, so continue it with --device '
                         f'{trained_on} (or start a new run on {here})')
    model.load_state_dict(state['model'])                   # the CPU tensors of the checkpoint, copied to the device
    optimizer.load_state_dict(state['optimizer'])           # torch.optim moves the state to its parameters' device
    if sampler is not None:
        try:
            sampler.load_state_dict(state['sampler'])
        except ValueError as err:
            raise InputError(f'--resume: {err}; continue the run on the kind of device it trained on') from None
    set_rng_state(state, device)
    return state['epoch'] + 1, list(state.get('history') or [])


def resume_run(args, device, defaults):
    """--resume RUN: continue a run from its last complete checkpoint with its saved configuration.
    `defaults`: the command line's default values (main.py's parser), to tell a flag given from one left out."""
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
               'num_layers', 'load_model', 'model', 'max_seq_length', 'valid_data')) and k not in ('n_epochs', 'step_mode')]
    refused += [k for k in ('data_folder', 'train_data', 'checkpoint_dir') if getattr(args, k) != defaults[k]]
    if refused:
        raise InputError(f'--resume continues with the run\'s saved settings; drop --{refused[0]} '
                         f'(only --n_epochs may extend the run, and --step_mode change how it computes)')
    if args.n_epochs is not None:
        config['n_epochs'] = args.n_epochs
        write_json(config_path, config)         # a later --resume of the extended run keeps its length
    if args.step_mode is not None:              # the same training in another execution mode (static_step.py)
        config['step_mode'] = args.step_mode
    removed = remove_stale_temporaries(run_dir)     # left by a process killed in mid-write
    if removed:
        print(f'removed {len(removed)} temporary file(s) of an interrupted write: {", ".join(removed)}')
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
