"""The static training step (static_step.py, issue #31) beside today's fast step, side by side in one process.

    python scripts/bench_static_step.py                       # RSC15 setting: 37,500 items, rsc15_xe_shared_100
    python scripts/bench_static_step.py --presets rsc15_xe_shared_100 diginetica_bprmax_shared --threads 2
    python scripts/bench_static_step.py --device cuda --presets <the six paramfiles>   # + graph, compiled_graph
    python scripts/bench_static_step.py --loss top1 tanh --threads 2          # a loss with autograd's gradient

Rows: `fast` = GRU4Rec.train_step + AdagradM.update (the training loop's step today; for the one-hot input of
the iclr16 presets, which has no fast step, `plain` = forward, autograd and the update), `static` = the static
step run eagerly, `compiled` = the static step under torch.compile(fullgraph=True) (TorchInductor's C++
kernels on CPU, Triton on GPU; Inductor's on-disk cache makes a second run's compilation short; on the CPU the
item tables' row updates by row_kernel after the graph), `inductor_rows` = the compiled step with Inductor's
row updates inside the graph instead (CompiledStep.ROW_KERNEL off: until 2026-12-07 the only way), and on a
GPU `graph` / `compiled_graph` = the static / compiled step captured as a CUDA graph (static_step.GraphStep),
for each official paramfile named (config.PRESETS: layers, batch size, n_sample, loss, dropout, momentum).
Untrained model, random inputs and popularity-skewed candidates (the cost of a step does not depend on the
weights; the logQ correction is a zero vector, computed outside the step in every mode); each round times
`--steps` steps after the untimed first call (for `compiled` its time is the compilation; a graph mode's
first four calls: three warm-up calls and the capture). Prints the load average it ran under: figures taken
beside another job mean nothing.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from checkpoints import build_model                                     # noqa: E402
from config import DEFAULTS, PRESETS                                    # noqa: E402
from devices import keep_freed_memory                                   # noqa: E402
from loss import loss_function                                          # noqa: E402
from optimizer import make_optimizer                                    # noqa: E402
import static_step                                                      # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--presets', nargs='+', default=['rsc15_xe_shared_100'], choices=sorted(PRESETS))
    p.add_argument('--items', type=int, default=37_500)
    p.add_argument('--threads', type=int, nargs='+', default=[1, 2])
    p.add_argument('--steps', type=int, default=60)
    p.add_argument('--rounds', type=int, default=2)
    p.add_argument('--device', default='cpu', help='cpu (default) or cuda[:n]')
    p.add_argument('--loss', nargs=2, metavar=('LOSS', 'FINAL_ACT'),
                   help="another loss for every paramfile, e.g. --loss top1 tanh (the paramfile's bpreg kept)")
    p.add_argument('--n_sample', type=int, help="another number of shared negatives for every paramfile")
    p.add_argument('--modes', nargs='+', choices=['fast', 'static', 'compiled', 'inductor_rows', 'graph',
                                                 'compiled_graph'],
                   help='default: fast static compiled, and inductor_rows on the CPU, graph compiled_graph on a GPU')
    return p.parse_args(argv)


def sync(device):
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def bench(config, n, threads, steps, rounds, generator, device='cpu', modes=('fast', 'static', 'compiled')):
    """{mode: (seconds of the first call, best seconds a step)} for one paramfile at one thread count."""
    B = config['batch_size']
    loss = loss_function(config['loss_type'], config['final_act'], B, config['bpreg'])
    popularity = torch.rand(n, generator=generator) ** 4
    batches = [(torch.randint(0, n, (B,), generator=generator).to(device),
                torch.multinomial(popularity, B + config['n_sample'], replacement=True, generator=generator).to(device))
               for _ in range(steps + 1)]
    correction = torch.zeros(B + config['n_sample'], device=device)
    no_reset = torch.zeros(B, dtype=torch.bool, device=device)
    compiled, inductor_rows = static_step.CompiledStep(), static_step.CompiledStep()
    inductor_rows.ROW_KERNEL = False            # the compiled step with its row updates in the graph

    def fast(model, optimizer, inputs, hidden, candidates):
        if model.has_fast_step:
            value, hidden = model.train_step(inputs, hidden, candidates, loss, correction)
        else:                       # the one-hot input: the plain step, as the training loop takes it
            with torch.enable_grad():
                optimizer.zero_grad(set_to_none=True)
                scores, hidden = model(inputs, hidden, candidates)
                value = loss(scores - correction)
                value.backward()
            hidden = [h.detach() for h in hidden]
        optimizer.update()
        return value, hidden

    def stepping(function):
        return lambda m, o, i, h, c: function(m, o, loss, i, h, c, no_reset, correction)

    functions = {'fast': lambda: fast, 'static': lambda: stepping(static_step.static_step),
                 'compiled': lambda: stepping(compiled), 'inductor_rows': lambda: stepping(inductor_rows),
                 'graph': lambda: stepping(static_step.GraphStep(static_step.static_step)),
                 'compiled_graph': lambda: stepping(static_step.GraphStep(compiled))}
    torch.set_num_threads(threads)
    best, first = {}, {}
    for _ in range(rounds):
        for name in modes:
            step = functions[name]()               # a graph mode captures anew for each round's model
            model = build_model(config, n, device).train()
            optimizer = make_optimizer('AdagradM', model.parameters(), config['lr'], config['momentum'])
            static_step.init_state(optimizer)
            hidden = model.init_hidden(B, device)
            with torch.no_grad():
                sync(device)
                start = time.perf_counter()
                for _ in range(static_step.GraphStep.WARMUP + 1 if 'graph' in name else 1):
                    _, hidden = step(model, optimizer, batches[0][0], hidden, batches[0][1])
                sync(device)
                first.setdefault(name, time.perf_counter() - start)
                start = time.perf_counter()
                for inputs, candidates in batches[1:]:
                    _, hidden = step(model, optimizer, inputs, hidden, candidates)
                sync(device)
                seconds = (time.perf_counter() - start) / steps
            best[name] = min(best.get(name, seconds), seconds)
    return {name: (first[name], best[name]) for name in modes}


def main(argv=None):
    args = parse_args(argv)
    if args.device == 'cpu' and any('graph' in m for m in args.modes or ()):
        raise SystemExit('--modes graph / compiled_graph: CUDA graphs need --device cuda')
    from torch._dynamo import config as dynamo
    from torch._inductor import config as inductor
    keep_freed_memory()                      # as training.train does on the CPU
    inductor.fallback_random = True          # dropout draws the eager step's random numbers
    dynamo.recompile_limit = 64              # one compilation per paramfile
    if static_step.traces_autograd():
        dynamo.trace_autograd_ops = True     # as CompiledStep: the losses that take their gradient from autograd
    modes = args.modes or ['fast', 'static', 'compiled'] + (['graph', 'compiled_graph'] if args.device != 'cpu'
                                                            else ['inductor_rows'])
    if args.device != 'cpu':
        print(f'device {args.device}: {torch.cuda.get_device_name(torch.device(args.device))}')
    print(f'{args.items:,} items, AdagradM; load average {os.getloadavg()[0]:.2f} at the start')
    print('| paramfile | layers / batch / n_sample / loss | threads | mode | first call (s) | ms / step (best round) '
          '| events/s | vs fast |')
    print('|---|---|---|---|---|---|---|---|')
    for preset in args.presets:
        config = {**DEFAULTS, **PRESETS[preset]}
        if args.loss:
            config['loss_type'], config['final_act'] = args.loss
        if args.n_sample is not None:
            config['n_sample'] = args.n_sample
        shape = (f'{"/".join(map(str, config["layers"]))} / {config["batch_size"]} / {config["n_sample"]} / '
                 f'{config["loss_type"]}')
        for threads in args.threads:
            times = bench(config, args.items, threads, args.steps, args.rounds, torch.Generator().manual_seed(0),
                          args.device, modes)
            onehot = not config['constrained_embedding'] and config['embedding_dim'] <= 0
            for name, (first, seconds) in times.items():
                name = 'plain' if onehot and name == 'fast' else name      # no fast step for the one-hot input
                print(f'| {preset} | {shape} | {threads} | {name} | {first:.2f} | {seconds * 1000:.2f} | '
                      f'{config["batch_size"] / seconds:,.0f} | ' + (f'{times["fast"][1] / seconds:.2f}x |' if 'fast' in times
                                                                else ' |'), flush=True)
    print(f'load average {os.getloadavg()[0]:.2f} at the end')


if __name__ == '__main__':
    main()
