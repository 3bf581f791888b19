"""The static training step (static_step.py, issue #31) beside today's fast step, side by side in one process.

    python scripts/bench_static_step.py                       # RSC15 setting: 37,500 items, B 32, 2048 samples, 100 units
    python scripts/bench_static_step.py --threads 1 2 --rounds 3

Rows: `fast` = GRU4Rec.train_step + AdagradM.update (the training loop's step today), `static` = the static
step run eagerly, `compiled` = the static step under torch.compile(fullgraph=True) (TorchInductor's C++
kernels on CPU; Inductor's on-disk cache makes a second run's compilation short). Untrained model, random
inputs and popularity-skewed candidates (the cost of a step does not depend on the weights); each round
times `--steps` steps after one untimed call (whose time, for `compiled`, is the compilation). Prints the
load average it ran under: figures taken beside another job mean nothing.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from loss import loss_function                                          # noqa: E402
from model import GRU4Rec                                               # noqa: E402
from optimizer import AdagradM                                          # noqa: E402
import static_step                                                      # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--items', type=int, default=37_500)
    p.add_argument('--batch_size', type=int, default=32)
    p.add_argument('--n_sample', type=int, default=2048)
    p.add_argument('--layers', type=int, default=100)
    p.add_argument('--threads', type=int, nargs='+', default=[1, 2])
    p.add_argument('--steps', type=int, default=60)
    p.add_argument('--rounds', type=int, default=2)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from torch._inductor import config as inductor
    inductor.fallback_random = True          # dropout draws the eager step's random numbers
    B, n = args.batch_size, args.items
    loss = loss_function('cross-entropy', 'softmax', B)
    generator = torch.Generator().manual_seed(0)
    popularity = torch.rand(n, generator=generator) ** 4
    steps = [(torch.randint(0, n, (B,), generator=generator),
              torch.multinomial(popularity, B + args.n_sample, replacement=True, generator=generator))
             for _ in range(args.steps + 1)]
    correction = torch.zeros(B + args.n_sample)
    no_reset = torch.zeros(B, dtype=torch.bool)
    compiled = torch.compile(static_step.static_step, fullgraph=True)

    def fast(model, optimizer, inputs, hidden, candidates):
        value, hidden = model.train_step(inputs, hidden, candidates, loss, correction)
        optimizer.update()
        return value, hidden

    modes = {'fast': fast,
             'static': lambda m, o, i, h, c: static_step.static_step(m, o, loss, i, h, c, no_reset, correction),
             'compiled': lambda m, o, i, h, c: compiled(m, o, loss, i, h, c, no_reset, correction)}
    print(f'{n:,} items, batch {B}, {args.n_sample} samples, {args.layers} units, XE + dropout 0.4, AdagradM with '
          f'momentum; load average {os.getloadavg()[0]:.2f} at the start')
    print('| threads | mode | first call (s) | ms / step (min of rounds) | events/s | vs fast |')
    print('|---|---|---|---|---|---|')
    for threads in args.threads:
        torch.set_num_threads(threads)
        best, first = {}, {}
        for _ in range(args.rounds):
            for name, step in modes.items():
                model = GRU4Rec(n, layers=[args.layers], dropout_p_hidden=0.4).train()
                optimizer = AdagradM(model.parameters(), lr=0.2, momentum=0.2)
                static_step.init_state(optimizer)
                hidden = model.init_hidden(B)
                with torch.no_grad():
                    start = time.perf_counter()
                    _, hidden = step(model, optimizer, steps[0][0], hidden, steps[0][1])
                    first.setdefault(name, time.perf_counter() - start)
                    start = time.perf_counter()
                    for inputs, candidates in steps[1:]:
                        _, hidden = step(model, optimizer, inputs, hidden, candidates)
                    seconds = (time.perf_counter() - start) / args.steps
                best[name] = min(best.get(name, seconds), seconds)
        for name, seconds in best.items():
            print(f'| {threads} | {name} | {first[name]:.2f} | {seconds * 1000:.2f} | {B / seconds:,.0f} | '
                  f'{best["fast"] / seconds:.2f}x |')
    print(f'load average {os.getloadavg()[0]:.2f} at the end')


if __name__ == '__main__':
    main()
