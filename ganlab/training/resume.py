"""Resume, all of it: what a job continues, looked up once before it starts, and its state put back.

`look_up` is the one place a job asks what it continues: `resume=` (a run id or an output
folder), or for a sweep's job its own earlier attempt (`earlier_attempt`): when the sweep's
parent run already has a child of the same job number (a SLURM job requeued after a
preemption or a time-out, or a sweep continued with `sweep.resume`), the job resumes that
run instead of starting a second one, and a FINISHED one is skipped. It returns a `Resume`:
the checkpoint (`ganlab.training.checkpoint`), the typed config to continue with and the
lock on the checkpoint's folder; None for a fresh start.

`prepare_resume` finds the checkpoint from a run id (through the run's `output_dir` tag in
MLflow) or a folder, refuses a FINISHED run, a checkpoint its run has gone on past and any
override that would change what is trained, and checks the data is the data the run trained
on. Once the trainer is built, `resume_into` puts the state back, logs the epochs the run
lacks and carries the best generator over.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ganlab.core import scores
from ganlab.core.config import WHERE_KEYS
from ganlab.core.errors import InputError
from ganlab.core.job_config import JobConfig
from ganlab.tracking import run_lock
from ganlab.tracking import store as tracking
from ganlab.tracking.job_run import close_left_running
from ganlab.training.checkpoint import (FILE, FOLDER, AlreadyFinished, Checkpoint, FolderLock, find, load_state,
                                       remove_partials, write)

log = logging.getLogger(__name__)

# What a resumed job may take from its own command line: where things are and how many
# threads. Everything else (what is trained) comes from the checkpoint.
RESUME_OVERRIDES = WHERE_KEYS


@dataclass
class Resume:
    checkpoint: Checkpoint
    config: DictConfig | JobConfig  # the config the resumed job runs with (`look_up` hands it on typed)
    lock: FolderLock


def check_overrides(explicit_overrides: list[str]) -> dict[str, str]:
    """The keys given with resume (key -> override); InputError for any that would change what is trained."""
    given = {item.split("=", 1)[0].lstrip("+~"): item for item in explicit_overrides}
    given.pop("resume", None)
    changed = [item for key, item in given.items() if key not in RESUME_OVERRIDES]
    if changed:
        raise InputError(
            f"resume: a resumed job trains with its checkpoint's config; these overrides would change it: "
            f"{' '.join(changed)}. Only {', '.join(RESUME_OVERRIDES)} may be given with resume."
        )
    return given


def prepare_resume(cfg: DictConfig, explicit_overrides: list[str]) -> Resume:
    """The checkpoint `cfg.resume` (a run id or a folder) names, and the config to continue with.

    The job runs with the checkpoint's config, experiment and thread count. Only the keys in
    RESUME_OVERRIDES, and only when given explicitly on this command line, replace the
    checkpoint's; anything else given is refused, and so is a run that has FINISHED, or a
    checkpoint older than the epochs its run has logged since. The store is where-not-what: a
    run named by its id goes on in the store it was found in (the one this command points at),
    a folder's in the store its checkpoint recorded unless `tracking.uri` is given; a store that
    is not there is refused, never created. The data at the path the job will read is hashed
    and must be the data the run trained on.
    """
    target = str(cfg.resume)
    given = check_overrides(explicit_overrides)
    here = tracking.resolve_uri(OmegaConf.select(cfg, "tracking.uri"))
    if Path(target).exists():
        found = find(Path(target))
        uri = here if "tracking.uri" in given else tracking.resolve_uri(found.tracking_uri)
        _require_store(uri, found)
        stored = _read_run(found.run_id, uri)
        _refuse_finished_run(stored)
    else:
        uri = here  # where the run is looked up is where it goes on
        stored = _read_run(target, uri)
        _refuse_finished_run(stored)
        found = find(_run_output_dir(uri, target))
        if found.run_id != target:  # a copy of (or link to) another run's checkpoint
            raise InputError(f"resume: the checkpoint {str(found.file)!r} belongs to run {found.run_id}, not to "
                             f"run {target} that was asked for; nothing was resumed. Resume run {found.run_id} "
                             "by its own id, or restore this run's own checkpoint.")
    _refuse_overtaken_checkpoint(found, stored)
    lock = FolderLock(found.folder).acquire()
    data_path = OmegaConf.select(cfg if "data.path" in given else found.config, "data.path")
    try:
        remove_partials(found.folder)
        _check_same_data(found, uri, data_path, given="data.path" in given)
    except BaseException:
        lock.release()
        raise
    resumed = found.config.copy()
    OmegaConf.update(resumed, "tracking.uri", uri, force_add=True)
    OmegaConf.update(resumed, "tracking.experiment", found.experiment, force_add=True)
    OmegaConf.update(resumed, "threads", found.threads, force_add=True)
    OmegaConf.update(resumed, "resume", target, force_add=True)
    for key in RESUME_OVERRIDES:
        if key in given and key != "tracking.uri":
            if key == "threads" and OmegaConf.select(cfg, key) != found.threads:
                log.warning("threads=%s differs from the %s threads the run trained with: the numbers will "
                            "differ from an uninterrupted run", OmegaConf.select(cfg, key), found.threads)
            OmegaConf.update(resumed, key, OmegaConf.select(cfg, key), force_add=True)
    return Resume(found, resumed, lock)


def _require_store(uri: str, found: Checkpoint) -> None:
    """A resume writes into an existing store only: a SQLite file that is not there (moved with its
    folder) is refused in one line, never created empty at the old path."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise InputError(f"resume: the store {uri} that holds run {found.run_id} does not exist (was mlruns/ "
                         "moved?); give tracking.uri=<its store now>, e.g. tracking.uri=sqlite:////new/place/mlruns/"
                         "mlflow.db, with resume. Nothing was created.")


def earlier_attempt(cfg: DictConfig, parent_run_id: str, job_num, overrides: list[str]) -> str | None:
    """The run id of this sweep job's earlier attempt to continue, or None for a first attempt.

    AlreadyFinished if that attempt FINISHED; InputError if a live process (here or on another
    machine: `ganlab.tracking.run_lock`) holds it. An attempt that left no checkpoint (its folder
    is gone) and that no live process holds cannot be continued: it is deleted, and the job
    starts again in a new run.
    """
    client, experiment_id = tracking.open_store(OmegaConf.select(cfg, "tracking.uri"), cfg.tracking.experiment)
    found = client.search_runs([experiment_id], order_by=["attributes.start_time DESC"], filter_string=(
        f"tags.`{tracking.PARENT_RUN_TAG}` = '{parent_run_id}' and tags.`{tracking.JOB_NUM_TAG}` = '{job_num}'"))
    if not found:
        return None
    earlier = found[0]
    trained = earlier.data.tags.get(tracking.OVERRIDES_TAG, "")
    if trained != " ".join(overrides):
        raise InputError(f"sweep.resume: job {job_num} of this sweep has the overrides {' '.join(overrides)!r}, but "
                         f"job {job_num} of the sweep it continues (run {earlier.info.run_id}) trained {trained!r}. A "
                         "sweep is continued with the overrides it started with (its parent's sweep.overrides tag).")
    if earlier.info.status == "FINISHED":
        raise AlreadyFinished(f"sweep job {job_num} ({earlier.info.run_name}) finished in run {earlier.info.run_id}; "
                              "skipped.")
    if not run_lock.closable(earlier):
        raise run_lock.RunHeld(f"sweep job {job_num}: its run {earlier.info.run_id} is held by "
                               f"{run_lock.describe(run_lock.owner_of(earlier))}, which is still running; wait for it "
                               "to end (or stop it) and continue the sweep again.")
    folder = earlier.data.tags.get(tracking.OUTPUT_DIR_TAG)
    if folder is None or not (Path(folder) / FOLDER / FILE).is_file():
        log.warning("sweep job %s: its earlier run %s left no checkpoint (in %s); that run is deleted and the job "
                    "starts again", job_num, earlier.info.run_id, folder)
        client.delete_run(earlier.info.run_id)
        return None
    return earlier.info.run_id


def close_refused(cfg: DictConfig, run_id: str, error: BaseException) -> None:
    """A sweep job's earlier run whose checkpoint was refused (damaged, other data) ends FAILED with the
    reason, unless a live process holds it: it is not left RUNNING (best-effort)."""
    try:
        client, _ = tracking.open_reader(OmegaConf.select(cfg, "tracking.uri"), option="tracking.uri")
        close_left_running(client, client.get_run(run_id), "FAILED", str(error))
    except Exception as closing:  # noqa: BLE001 - the refusal itself is what the user must read
        log.warning("run %s could not be marked FAILED: %s", run_id, closing)


def look_up(cfg: DictConfig, parent_run_id: str | None, job_num, overrides: list[str]) -> Resume | None:
    """All of resume's look-up, in one place before a job starts: what the job continues (`resume=`,
    or a sweep job's earlier attempt), with the config to continue with and its folder's lock; None
    for a fresh start."""
    explicit = overrides
    if parent_run_id and not cfg.get("resume"):  # a requeued or resumed sweep job continues its own run
        earlier = earlier_attempt(cfg, parent_run_id, job_num, overrides)
        if earlier is not None:
            cfg, explicit = cfg.copy(), []  # its checkpoint holds the config these overrides made
            cfg.resume = earlier
    if not cfg.get("resume"):
        return None
    try:
        resume = prepare_resume(cfg, explicit)
    except InputError as refused:  # a damaged checkpoint, other data: the earlier run is not left RUNNING
        if parent_run_id and not explicit:
            close_refused(cfg, cfg.resume, refused)
        raise
    try:  # what is trained comes from the checkpoint (checked when it started), where from this command
        return dataclasses.replace(resume, config=JobConfig.of(OmegaConf.to_container(resume.config, resolve=True)))
    except BaseException:
        resume.lock.release()
        raise


def _check_same_data(found: Checkpoint, uri: str, path: str | None, given: bool) -> None:
    """A resumed run trains on the data it started with: the data at the path it will read (given
    now, or recorded) must hash to the sha256 the run recorded in its `data.sha256` tag."""
    try:
        client, _ = tracking.open_reader(uri, option="tracking.uri")
        recorded = client.get_run(found.run_id).data.tags.get(tracking.DATA_SHA_TAG)
    except Exception:  # noqa: BLE001 - no store or no run: opening the run says so
        return
    if recorded is None:  # stopped before its data was read: any data is its first
        return
    from ganlab.core.data import load_dataset

    digest = load_dataset(OmegaConf.select(found.config, "data.name") or "mnist", path).sha256()
    if digest != recorded:
        where = f"data.path={path}" if path else "the Keras MNIST cache (data.path=null)"
        fix = ("Give that data's file, or leave data.path out to use the recorded one." if given else
               "Restore that data, or give data.path=<a copy of it>.")
        raise InputError(f"resume: {where} now holds data with sha256 {digest}, but run {found.run_id} trained on "
                         f"data with sha256 {recorded}; a resumed run goes on with the data it started with. {fix}")


def _run_output_dir(uri: str | None, run_id: str) -> Path:
    """The output folder (holding the checkpoint) that run `run_id` recorded."""
    try:
        client, _ = tracking.open_reader(uri, option="tracking.uri")
    except InputError:
        raise InputError(f"resume: no MLflow run {run_id!r}: there is no store at {tracking.resolve_uri(uri)} "
                         "(give tracking.uri=... where the run lives, or resume=<its output folder>).") from None
    run = tracking.find_run(client, run_id, option="resume")
    if tracking.OUTPUT_DIR_TAG not in run.data.tags:
        raise InputError(f"resume: run {run_id} records no output folder, so its checkpoint cannot be found.")
    return Path(run.data.tags[tracking.OUTPUT_DIR_TAG])


def _read_run(run_id: str, uri: str):
    """(reader, run) for the two early words below, read once; None where there is no store or no such run:
    prepare_resume says so."""
    try:
        client, _ = tracking.open_reader(uri, option="tracking.uri")
        return client, client.get_run(run_id)
    except Exception:  # noqa: BLE001 - the early words are best-effort
        return None


def _refuse_finished_run(stored) -> None:
    """A FINISHED run has trained all its epochs (only a complete job ends FINISHED): nothing to resume.
    An early word only: the run's own lock checks again (`ganlab.tracking.job_run.JobRun`)."""
    if stored is None:
        return
    run = stored[1]
    if run.info.status == "FINISHED":
        raise AlreadyFinished(f"run {run.info.run_id} has trained all {run.data.params.get('epochs', 'its')} epochs "
                              "already; nothing to resume (it stays as it was).")


def _refuse_overtaken_checkpoint(found: Checkpoint, stored) -> None:
    """A run has one history: a checkpoint older than the epochs its run has logged since (an earlier job
    folder of a run resumed and stopped again) would log those epochs a second time. Refused, naming the
    folder the run goes on from; a checkpoint one epoch ahead of the log (stopped between the two) is fine.
    `stored` is `_read_run` of the checkpoint's run (prepare_resume has checked it is that run)."""
    if stored is None:
        return
    client, run = stored
    try:
        logged = max((point.step for point in client.get_metric_history(found.run_id, scores.D_LOSS)), default=0)
    except Exception:  # noqa: BLE001 - the store failing now: opening the run says so
        return
    if logged <= found.epoch:
        return
    newest = run.data.tags.get(tracking.OUTPUT_DIR_TAG)
    fix = (f"Resume it from its newest checkpoint, resume={found.run_id} (its output folder now: {newest}), or start "
           "the job again." if newest and Path(newest).resolve() != found.folder.parent.resolve() else
           "Start the job again.")
    raise InputError(f"resume: the checkpoint {str(found.file)!r} holds epoch {found.epoch}, but run {found.run_id} "
                     f"has logged epochs up to {logged} since: resuming from it would log epochs {found.epoch + 1} "
                     f"to {logged} a second time. {fix} Nothing was resumed.")


def resume_into(trainer, resume: Resume, run, output_dir: Path, threads: int | None) -> list:
    """Put the checkpoint's state into `trainer`, log the epochs the run lacks, carry the best
    generator over, write the checkpoint into this job's folder; return the epoch records."""
    from ganlab.gan.trainer import EpochRecord
    from ganlab.training.epochs import log_step_losses
    from ganlab.training.outputs import BEST_GENERATOR

    found = resume.checkpoint
    values, saved_records = load_state(found)
    history = []
    if values:  # else the job was stopped before its first epoch: it starts again from its seed
        try:
            trainer.set_state(values, epochs_done=found.epoch)
        except ValueError as error:
            raise InputError(f"resume: {error}; was the checkpoint {str(found.file)!r} written by another model config?") from error
        history = [EpochRecord.from_dict(values) for values in saved_records]
        logged = run.logged_steps(scores.D_LOSS)
        for record in history:
            if record.epoch not in logged:
                run.log_metrics(record.summary(), step=record.epoch)
                log_step_losses(run, record)
        log.info("resumed from %s after epoch %d", found.folder, found.epoch)
    earlier_best = found.folder.parent / BEST_GENERATOR
    if earlier_best.is_file() and earlier_best.resolve() != (Path(output_dir) / BEST_GENERATOR).resolve():
        (Path(output_dir) / BEST_GENERATOR).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(earlier_best, Path(output_dir) / BEST_GENERATOR)
    write(output_dir, trainer, history, run, threads, resume.config)
    run.set_tags({tracking.OUTPUT_DIR_TAG: str(output_dir)})  # re-pointed only once a checkpoint is here
    return history
