"""Running the pipeline as a Faust worker process."""

from __future__ import annotations

import logging

from .app import Pipeline, WorkerConfig

log = logging.getLogger("recstream.worker")


def run_worker(config: WorkerConfig, *, loglevel: str = "info") -> int:
    """Run until SIGINT/SIGTERM; returns the process exit status."""
    import faust

    pipeline = Pipeline(config)
    if config.create_topics and not pipeline.create_topics():
        log.error("refusing to start: fix the topics above or point --topic-prefix at a fresh namespace")
        return 1
    log.info(
        "recstream worker: app %s, broker %s, topics prefix %r, %d partitions, device %s, model %s, emit %s",
        config.kafka.app_id, config.kafka.broker, config.kafka.topic_prefix, config.partitions,
        pipeline.device, pipeline.encoder.name, config.emit,
    )
    worker = faust.Worker(pipeline.app, loglevel=loglevel, quiet=True)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
