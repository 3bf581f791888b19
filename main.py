"""Train and evaluate GRU4Rec, with the command line of the popular PyTorch port and the official algorithm.

    python main.py --loss_type TOP1                     # train; a checkpoint after every epoch
    python main.py --params rsc15_xe_shared_100         # a published configuration (see config.PRESETS)
    python main.py --is_eval --load_model checkpoint/<run>/model_00009.pt [--valid_data FILE]
    python main.py --model ItemKNN --valid_data rsc15_test.txt  # a baseline of baselines.py (POP, SPOP, ItemKNN, BPRMF)

This file is the command line; the pieces it calls live in the rooms named for them: config.py (defaults,
presets, --params), training.py (the loop, --resume), checkpoints.py (the checkpoint format, run
folders, curves), evaluation.py (ranking and metrics), devices.py (--device).
"""
import argparse
import json
import os

from checkpoints import load_checkpoint, write_json
from cli import ArgumentParser, InputError, run_cli
from config import MODELS, PRESETS, QUIRKS, data_path, resolve_baseline_config, resolve_config
from dataset import SessionData
from devices import make_deterministic, pick_device
from evaluation import DEFAULT_CUTOFFS, TIE_MODES, evaluate
from optimizer import OPTIMIZERS
from provenance import provenance
from static_step import STEP_MODES, evaluation_options
from training import resume_run, train


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
    g.add_argument('--step_mode', choices=STEP_MODES, help='auto (default): compiled on the CPU where it measured '
                   'faster (2,500 items and more, 2M training events x epochs and more, batches up to 200), else '
                   'fast; fast: the hand-written step; plain: forward + autograd; static: the static-shape step '
                   '(static_step.py, the update of fast to float rounding); compiled: the static step under '
                   'torch.compile (needs a C++ compiler on CPU; falls back to the fast step with one warning), and '
                   'the evaluation compiled; graph / compiled_graph: the static / compiled step captured as a CUDA '
                   'graph (GPU only). Also with --resume')
    g.add_argument('--official_quirks', nargs='*', metavar='QUIRK', help='the official PyTorch code\'s behaviour '
                   'where ours deliberately differs, by name (' + ', '.join(QUIRKS) + '); the flag alone: all. '
                   'Measured effect: README, "Faithfulness"')
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
    d.add_argument('--keep_checkpoints', type=int, metavar='N', help='keep only the newest N checkpoints of the '
                   'run (older ones are deleted after each epoch\'s checkpoint is written; also with --resume); '
                   'default: all')
    d.add_argument('--load_model', help='checkpoint to evaluate')
    d.add_argument('--eval_cutoffs', type=int, nargs='+', default=list(DEFAULT_CUTOFFS))
    d.add_argument('--tie_mode', default='standard', choices=TIE_MODES)
    d.add_argument('--eval_batch_size', type=int, default=512)
    d.add_argument('--device', default='auto', help='auto (the GPU when one is present and runs a test kernel, '
                   'else cpu), cpu, cuda, cuda:<n>')
    d.add_argument('--deterministic', action='store_true', help='deterministic GPU kernels only (torch\'s '
                   'use_deterministic_algorithms and CUBLAS_WORKSPACE_CONFIG): a GPU run then repeats bit for bit and '
                   '--resume equals an uninterrupted run; slower. CPU runs are deterministic anyway')
    return p.parse_args(argv)


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
    options = evaluation_options(args.step_mode or config.get('step_mode'), model)
    try:
        metrics = evaluate(model, data, args.eval_cutoffs, args.tie_mode, args.eval_batch_size, device, **options)
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
    files = [test_path]
    try:
        with open(os.path.join(os.path.dirname(args.load_model) or '.', 'config.json')) as f:
            files.insert(0, json.load(f)['train_data'])
    except (OSError, ValueError, KeyError):
        pass
    results[os.path.basename(args.load_model)] = dict(metrics, test_data=test_path, epoch=state['epoch'],
                                                      step_mode=config.get('step_mode'),
                                                      compiled_evaluation=options['compiled'],
                                                      graph_evaluation=options['graphs'] is not None,
                                                      provenance=provenance(files, [config.get('seed')], device))
    write_json(results_path, results)
    return metrics


def main(argv=None):
    args = parse_args(argv)
    for flag in ('eval_batch_size',):
        if getattr(args, flag) < 1:
            raise InputError(f'--{flag} must be >= 1, got {getattr(args, flag)}')
    if args.keep_checkpoints is not None and args.keep_checkpoints < 1:
        raise InputError(f'--keep_checkpoints must be >= 1, got {args.keep_checkpoints}')
    if min(args.eval_cutoffs) < 1:
        raise InputError(f'--eval_cutoffs must all be >= 1, got {args.eval_cutoffs}')
    if args.deterministic:
        make_deterministic()            # before pick_device's test kernel initialises CUDA
    device = pick_device(args.device)
    if args.is_eval:
        return run_eval(args, device)
    if args.resume:
        return resume_run(args, device, vars(parse_args([])))
    if args.load_model:
        raise InputError('--load_model is for --is_eval (to evaluate a checkpoint); training starts from scratch')
    if args.model not in (None, 'GRU4Rec'):
        return train(args, resolve_baseline_config(args, args.model), device)
    return train(args, resolve_config(args), device)


if __name__ == '__main__':
    run_cli(main)
