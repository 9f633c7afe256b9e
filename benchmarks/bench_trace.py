"""The training step's first call (tracing it, then one step) with and without AutoGraph, side by side.

    python benchmarks/bench_trace.py --data ../shared/data/mnist.npz [--pairs 3]

Each job traces its step once, in its own process. `GanTrainer.train_step` is traced without
AutoGraph (`tf.function(autograph=False)`): its branches and loops are all on Python values.
Each pair runs two fresh processes, in alternating order: one builds the default job's
trainer from conf/ (mlp, ns) and times the first call of the step as shipped, the other the
same Python function wrapped with AutoGraph on (AutoGraph converts a function once per
process, so only a fresh process shows its cost). Both then take 20 more steps, and the
pair's line says whether their losses are the same.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def first_call(data: str | None, autograph: bool) -> dict:
    """CPU seconds of a fresh trainer's first step, and the losses after 20 more."""
    from ganlab.core import runtime

    runtime.quiet_console()
    from hydra import compose, initialize_config_dir

    from ganlab.core import config
    from ganlab.core.data import load_dataset
    from ganlab.core.defaults import CONF_DIR
    from ganlab.gan import choices

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        job = config.typed_config(compose("train", overrides=[f"data.path={data}"] if data else []), choices.registries())
    dataset = load_dataset(job.data.name, job.data.path)
    runtime.configure_tensorflow(job.seed, job.threads, job.deterministic)
    trainer = choices.build_trainer(job, dataset.x_train)
    step = trainer.train_step
    if autograph:  # the same Python function, traced the way a bare @tf.function traces it
        import tensorflow as tf

        traced = tf.function(type(trainer).train_step.python_function, autograph=True)
        step = lambda update_generator: traced(trainer, update_generator)  # noqa: E731
    started = time.process_time()
    step(True)
    seconds = time.process_time() - started
    for _ in range(20):
        losses = step(True)
    return {"seconds": seconds, "losses": [float(value) for value in losses]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--one", choices=["plain", "autograph"], help=argparse.SUPPRESS)  # a measuring process
    args = parser.parse_args()
    data = os.path.abspath(args.data) if args.data else None
    if args.one:
        print(json.dumps(first_call(data, args.one == "autograph")))
        return
    from ganlab.core.machine import cpu_model

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; the first call of the default job's step, CPU-s")
    for pair in range(args.pairs):
        order = ("plain", "autograph") if pair % 2 == 0 else ("autograph", "plain")
        measured = {}
        for kind in order:
            command = [sys.executable, __file__, "--one", kind, *(["--data", data] if data else [])]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            measured[kind] = json.loads(done.stdout.strip().splitlines()[-1])
        same = "same losses" if measured["plain"]["losses"] == measured["autograph"]["losses"] else "LOSSES DIFFER"
        print(f"pair {pair + 1}: without AutoGraph (shipped) {measured['plain']['seconds']:.2f}, "
              f"with AutoGraph {measured['autograph']['seconds']:.2f}; {same}")


if __name__ == "__main__":
    main()
