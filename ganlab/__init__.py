"""ganlab: the classic Keras MNIST GAN as a Hydra app, tracked in MLflow.

The package is a house in wings, each a subpackage that owns one part of the work. Imports
go one way, down this list: a wing imports the wings below it, never one above or beside
it higher up, and a fact two wings share lives in `core`.

1. `core`       errors, choice registries, the score registry, the config and its defaults,
                TensorFlow's runtime, the machine, image data, the runs.csv record, pictures
2. `gan`        the models, losses and optimizers chosen by name, and the training step
3. `evaluation` the score formulas, the scoring classifier, the evaluator
4. `tracking`   the way into MLflow and a job's run
5. `training`   one job: the epoch loop, the end-of-epoch steps, checkpoint and resume, its files
6. `sweeps`     the sweep's parent run, SLURM, seed statistics, comparisons, the sweep summary
7. `baseline`   the baseline record, its verdict and the MLflow read-back

The command-line entry points sit at the top and may import any wing: `ganlab.train`,
`ganlab.evaluate`, `ganlab.report`, `ganlab.reproduce` and `ganlab.classifier`.
"""

__version__ = "0.1.0"
