"""Running the pipeline as a Faust worker process."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from .app import Pipeline, WorkerConfig

log = logging.getLogger("recstream.worker")


def claim_state(config: WorkerConfig) -> Path:
    """Mark the local state as in use; discard it first when the previous worker on it
    did not stop cleanly.  Returns the marker, to remove after a clean stop.

    After a crash the RocksDB files may hold writes whose changelog records were never
    committed (under exactly-once, the crashed attempt's transaction is aborted).  Profiles
    skip offsets they have applied, so such a write would make the redelivered event look
    done, and its effect would exist on this disk only.  Starting from an empty folder
    restores every table from its changelog instead, as Kafka Streams does.
    """
    state = config.data_dir / config.kafka.app_id
    marker = config.data_dir / f"{config.kafka.app_id}.running"
    if marker.exists() and state.exists():
        log.warning("the previous worker on %s did not stop cleanly: discarding its local state; "
                    "the tables are restored from their changelogs", state)
        shutil.rmtree(state)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return marker


def run_worker(config: WorkerConfig, *, loglevel: str = "info") -> int:
    """Run until SIGINT/SIGTERM; returns the process exit status."""
    import faust

    marker = claim_state(config)
    pipeline = Pipeline(config)
    if config.create_topics and not pipeline.create_topics():
        log.error("refusing to start: fix the topics above or point --topic-prefix at a fresh namespace")
        marker.unlink(missing_ok=True)
        return 1
    log.info(
        "recstream worker: app %s, broker %s, topics prefix %r, %d partitions, device %s, model %s, emit %s",
        config.kafka.app_id, config.kafka.broker, config.kafka.topic_prefix, config.partitions,
        pipeline.device, pipeline.encoder.name, config.emit,
    )
    worker = faust.Worker(pipeline.app, loglevel=loglevel, quiet=True)
    try:
        worker.execute_from_commandline()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    if code == 0:
        marker.unlink(missing_ok=True)
    return code
