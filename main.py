"""Train and evaluate GRU4Rec: `python main.py --loss_type TOP1`, `python main.py --is_eval --load_model ...`.

Not written yet: training, checkpoints and evaluation arrive with the faithful-core issue (#3). Until then
this command says so and exits with status 2 instead of pretending to train.
"""
import sys

if __name__ == '__main__':
    print('error: main.py (training and evaluation) is not implemented yet; see issue #3. '
          'Available now: scripts/make_synthetic.py, preprocessing.py, dataset.py', file=sys.stderr)
    sys.exit(2)
