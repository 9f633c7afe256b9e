"""A settle sweep's scores in MLflow: the seeds already run elsewhere, the sweep's own, and its reused runs.

Seeds already run count: a FINISHED run of the same experiment (not of this sweep, not itself
a reused copy) with the same setting and the same scoring protocol is reused, not rerun.
"The same" means every param the new job would log agrees, except `seed` and the keys that say
where a job runs (`ganlab.core.config.WHERE_KEYS`, `ganlab.tracking.store.NOT_PARAMS`); a
param an older run lacks counts as its default in conf/ (a knob added since). Its data and its
classifier must be the ones this sweep's jobs will use, too: the run's data sha256 and
classifier-weights sha256 tags (`protocol`) equal theirs, so a run trained on another file
passed as the same `data.path`, or scored with other weights, is never reused. Each reused run
becomes a child of the settle sweep's parent (its params, tags and metric histories copied,
tagged `settle.reused_from`), so the sweep's summary and `python -m ganlab.report` read it like
any job of the sweep; its samples stay in its own run.
"""

from __future__ import annotations

import logging

from mlflow.entities import Metric, Param

from ganlab.core.config import SEED_KEY, WHERE_KEYS
from ganlab.core.defaults import config_defaults
from ganlab.core.params import same_value
from ganlab.tracking import store as tracking

log = logging.getLogger(__name__)

REUSED_TAG = "settle.reused_from"  # a reused run's copy under the settle sweep: the id of the run it copies
IGNORED = (*WHERE_KEYS, *tracking.NOT_PARAMS, SEED_KEY, "settle.")


def same_setting(run_params: dict[str, str], expected: dict[str, str], defaults: dict[str, str]) -> bool:
    """Whether a run with `run_params` trained and was scored as a job with `expected` params would be (seed aside)."""
    for key, value in expected.items():
        if key.startswith(IGNORED):
            continue
        have = run_params.get(key, defaults.get(key))
        if have is None or not same_value(have, value):
            return False
    return True


def protocol(config: dict) -> dict[str, str]:
    """The data and classifier tags a job of the resolved `config` will set: the sha256 of its data (all four
    arrays, as the job hashes them) and, with evaluation on, of its classifier's weights. InputError if either
    cannot be read (the same paragraph the job would give)."""
    from ganlab.core.data import load_dataset

    data, evaluation = config.get("data", {}), config.get("eval", {})
    dataset = load_dataset(data.get("name", "mnist"), data.get("path"), download=data.get("download"))
    tags = {tracking.DATA_SHA_TAG: dataset.sha256()}
    if evaluation.get("enabled", True):
        from ganlab.evaluation import classifier

        tags[tracking.CLASSIFIER_SHA_TAG] = classifier.check(evaluation.get("classifier"), dataset.name)[1]
    return tags


def reusable(client, experiment_id: str, parent_id: str, expected: dict[str, str], metric: str, epoch: int,
             protocol_tags=None) -> dict[int, object]:
    """{seed: run} of FINISHED runs outside this sweep with the `expected` params (seed aside), the tags of
    its scoring protocol (`protocol_tags`, from `protocol`, or a function returning them, called only once a
    run's params agree: a run without one of them is not known to match) and `metric` at `epoch`."""
    wanted = " and ".join(["attributes.status = 'FINISHED'",
                           *(f"params.`{key}` = '{value}'" for key, value in expected.items() if key == "epochs")])
    defaults = config_defaults()
    found: dict[int, object] = {}
    for run in client.search_runs([experiment_id], filter_string=wanted, max_results=50000,
                                  order_by=["attributes.start_time ASC"]):
        tags = run.data.tags
        if tags.get(tracking.SWEEP_PARENT_TAG) == "true" or REUSED_TAG in tags:
            continue
        if tags.get(tracking.PARENT_RUN_TAG) == parent_id or SEED_KEY not in run.data.params:
            continue
        if not same_setting(run.data.params, expected, defaults):
            continue
        if callable(protocol_tags):
            protocol_tags = protocol_tags()
        if any(tags.get(key) != value for key, value in (protocol_tags or {}).items()):
            continue
        try:
            seed = int(run.data.params[SEED_KEY])
        except ValueError:
            continue
        if seed not in found and score_at(client, run.info.run_id, metric, epoch) is not None:
            found[seed] = run  # the earliest run of a seed
    return found


def score_at(client, run_id: str, metric: str, epoch: int) -> float | None:
    """`metric` of a run at step `epoch` (the last value logged at that step), or None."""
    points = [point for point in client.get_metric_history(run_id, metric) if point.step == epoch]
    return tracking.as_logged(points[-1].value) if points else None


def copy_as_child(client, run, parent_id: str, experiment_id: str) -> str:
    """A FINISHED child of `parent_id` that repeats `run` (params, tags, metric histories); returns its id."""
    tags = {key: value for key, value in run.data.tags.items() if not key.startswith(("mlflow.", "sweep."))}
    tags.update({tracking.PARENT_RUN_TAG: parent_id, REUSED_TAG: run.info.run_id,
                 tracking.NOTE_TAG: f"Reused by a settle sweep: a copy of run {run.info.run_id}'s params and "
                                        "metrics (its samples and model are in that run)."})
    child = client.create_run(experiment_id, run_name=f"{run.info.run_name} (reused)", tags=tags,
                              start_time=run.info.start_time)
    child_id = child.info.run_id
    params = [Param(key, value) for key, value in run.data.params.items()]
    for start in range(0, len(params), 100):
        client.log_batch(child_id, params=params[start:start + 100])
    points = [Metric(name, point.value, point.timestamp, point.step)
              for name in run.data.metrics for point in client.get_metric_history(run.info.run_id, name)]
    for start in range(0, len(points), 1000):
        client.log_batch(child_id, metrics=points[start:start + 1000])
    client.set_terminated(child_id, "FINISHED", end_time=run.info.end_time)
    return child_id


def reused_children(client, experiment_id: str, parent_id: str) -> dict[str, object]:
    """{id of the run reused: its copy} already under this parent (a resumed sweep copies nothing twice)."""
    copies = client.search_runs([experiment_id], filter_string=f"tags.`{tracking.PARENT_RUN_TAG}` = '{parent_id}'",
                                max_results=50000)
    return {run.data.tags[REUSED_TAG]: run for run in copies if REUSED_TAG in run.data.tags}


def own_children(client, experiment_id: str, parent_id: str) -> dict[int, object]:
    """{job number: FINISHED child run} of the sweep's own jobs."""
    runs = client.search_runs([experiment_id], max_results=50000, filter_string=(
        f"tags.`{tracking.PARENT_RUN_TAG}` = '{parent_id}' and attributes.status = 'FINISHED'"))
    return {int(run.data.tags[tracking.JOB_NUM_TAG]): run for run in runs if tracking.JOB_NUM_TAG in run.data.tags}


def artifacts_of(run) -> str:
    """The run whose artifacts (samples, model) `run` shows: the run it reuses, else itself."""
    return run.data.tags.get(REUSED_TAG, run.info.run_id)
