"""Running the pipeline as a Faust worker process."""

from __future__ import annotations

import asyncio
import gc
import logging
import shutil
from pathlib import Path
from time import monotonic
from typing import Any, Mapping

import aiokafka
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Consumer as AIOKafkaConsumer
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth, server_list

from .app import Pipeline, WorkerConfig
from .state import guard_faust_store_writes
from .streamtime import StreamTimeConsumer, StreamTimeMerger
from .transactions import PartitionTransactions, data_ends

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
        log.warning("the previous worker on %s did not stop cleanly: discarding its local state; the tables are restored from their changelogs", state)
        shutil.rmtree(state)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return marker


class CommitBeforeRevoke:
    """Consumer mixin: finish and commit the work in flight before a rebalance takes the
    partitions away.

    Faust 0.15 first forgets the acknowledged, not yet committed offsets of the revoked
    partitions, and only then runs the revocation handler that stops the flow, waits for the
    streams and commits (``stream_wait_empty``).  What was processed since the last periodic
    commit (every 2.8 s), and the micro-batch that finished meanwhile, were then processed,
    and answered, again after the rebalance, by whichever worker got the partition.  This
    runs the handler's first steps before Faust forgets anything: stop the flow, empty the
    stream buffers (their records are fetched again from the committed offset), wait for the
    micro-batch in flight and commit, as Kafka's own clients commit in their revocation
    callback; the group waits for its members' callbacks before it reassigns.
    """

    async def on_partitions_revoked(self, revoked: set) -> None:
        if revoked:
            app = self.app  # type: ignore[attr-defined]
            self.stop_flow()  # type: ignore[attr-defined]
            app.flow_control.suspend()
            app.flow_control.clear()
            await self.wait_empty()  # type: ignore[attr-defined]  # commits as the acks arrive, then once more
        await super().on_partitions_revoked(revoked)  # type: ignore[misc]


class HoldFlowDuringSeek:
    """Consumer mixin: no record reaches the streams while the partitions are sought back to
    their committed offsets.

    Faust 0.15 ends every rebalance with ``perform_seek`` (seek each partition to its
    committed offset, then set its read offset to that offset) followed by
    ``flow_control.resume()``, which empties the stream buffers, and ``resume_flow()``.
    Recovery has already resumed the flow to read the changelogs, so during the seek the
    fetch loop keeps going, and it delivers a record only at or after the partition's read
    offset (the last offset it delivered), dropping the others silently (a debug line):

    * a record whose delivery the rebalance interrupted sets its offset as the read offset
      after the rebalance cleared them, though it was never delivered; when the worker keeps
      that partition, every re-fetched record below that offset is dropped during the seek;
    * records delivered during the seek are emptied out of the buffers right after it, their
      offsets already counted as read.

    Either way those events are never processed nor answered, and the next record looks like
    a jump past the read offset, which Faust counts as a gap and commits over: even a
    restart does not bring them back.  Stopping the flow for the seek leaves nothing to drop
    or to empty: the callers resume the flow right after (both places in
    ``faust.tables.recovery`` call ``flow_control.resume()`` then ``resume_flow()``; the
    third caller, ``getmany``, runs only while the flow is already stopped).
    """

    async def perform_seek(self) -> None:
        self.stop_flow()  # type: ignore[attr-defined]
        await super().perform_seek()  # type: ignore[misc]


class RewindUncommitted:
    """Consumer mixin: a seek to the committed offsets also takes back the partitions that
    have no committed offset yet.

    Faust drops fetched records whenever it seeks back to the committed offsets (a
    rebalance, a fetch that returned while the flow was stopped), and the stream-time
    merger drops the records it holds at every seek: the seek is what brings them back.
    But aiokafka's ``seek_to_committed`` moves only the partitions whose committed offset is
    above 0; a partition with none (not one of its records processed yet) keeps the
    position its fetches reached, and the dropped records are never read again nor
    answered, while the later ones are, and committed.  Seen in a replay through three
    workers: the first records of two of the six partitions of the reviews topic (sparse,
    so held longest) were lost.  This remembers, per input partition, the offset of the
    first record fetched since the last seek, and seeks an uncommitted partition back to
    it (a partition whose committed offset is 0, to 0), as a Java consumer whose position
    was reset by ``auto.offset.reset`` at assignment would read it again.
    """

    _fetch_origins: dict | None = None

    async def _getmany(self, active_partitions: set | None, timeout: float) -> Any:
        records = await super()._getmany(active_partitions, timeout)  # type: ignore[misc]
        if self._fetch_origins is None:
            self._fetch_origins = {}
        for tp, recs in records.items():
            if recs and tp not in self._fetch_origins and not self._is_changelog_tp(tp):  # type: ignore[attr-defined]
                self._fetch_origins[tp] = recs[0].offset
        return records

    async def seek_to_committed(self) -> Mapping[Any, int]:
        committed = await super().seek_to_committed()  # type: ignore[misc]
        origins, self._fetch_origins = self._fetch_origins or {}, {}
        for tp, offset in committed.items():
            start = origins.get(tp)
            if not offset and start is not None:  # None or 0: aiokafka left the position where fetching took it
                target = start if offset is None else 0
                log.debug("rewinding %s[%d], not committed yet, to offset %d", tp.topic, tp.partition, target)
                await self._seek(tp, target)  # type: ignore[attr-defined]
        return committed

    async def on_partitions_revoked(self, revoked: set) -> None:
        await super().on_partitions_revoked(revoked)  # type: ignore[misc]
        for tp in revoked:
            (self._fetch_origins or {}).pop(tp, None)


class SeekWithinRange:
    """Consumer mixin: Faust's table recovery never seeks a changelog partition to an
    offset below 0.

    Recovery starts a changelog partition with no persisted offset at its earliest offset
    minus one, and seeks to that (``-1`` becomes 0).  For a changelog topic created moments
    before (a replay's workers start together), the broker can answer the earliest-offset
    lookup with -1, and the standby seek then asked aiokafka for offset -2: "Offset must be a
    positive integer", and the worker crashed while starting its standby partitions (seen in
    a replay through three workers).  An offset below 0 means "from the start": 0.
    """

    async def seek_wait(self, partitions: Mapping[Any, int]) -> None:
        below = {tp: offset for tp, offset in partitions.items() if offset is None or offset < 0}
        if below:
            log.debug("seeking %s from their start (offsets %s)", sorted(below), sorted(below.values(), key=str))
        await super().seek_wait({tp: 0 if tp in below else offset for tp, offset in partitions.items()})  # type: ignore[misc]


class RebalanceSafeConsumer(StreamTimeConsumer, CommitBeforeRevoke, RewindUncommitted, HoldFlowDuringSeek, SeekWithinRange, AIOKafkaConsumer):
    """Faust's aiokafka consumer with :class:`CommitBeforeRevoke`, :class:`RewindUncommitted`,
    :class:`HoldFlowDuringSeek` and :class:`SeekWithinRange`: a partition changes hands (or
    stays) without losing an event or answering one twice; and
    with :class:`~streams.streamtime.StreamTimeConsumer` when given a merger: the event
    topics' records reach the events agent in stream-time order."""


class _ReadCommittedThread(AIOKafkaConsumerThread):
    """Faust's consumer thread with a ``read_committed`` aiokafka consumer (Faust asks for it
    only under its own exactly-once mode, which recstream does not use)."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._isolation_level = "read_committed"  # read by start(), which builds the fetcher
        return consumer


class ExactlyOnceConsumer(RebalanceSafeConsumer):
    """The consumer under ``--processing-guarantee exactly_once`` (:mod:`streams.transactions`):

    * it reads ``read_committed``: table recovery restores no write of an aborted attempt;
    * before Faust handles an assignment (recovery, then the seek to the committed offsets),
      it starts the transactional producers of the assigned input partitions, which fences
      their previous holders and completes their open transactions;
    * it does not commit the event topics' offsets (the micro-batch transactions do), only
      the others' (the catalog stays at-least-once);
    * it tells Faust's recovery where each changelog's last data record is: a transactional
      partition ends with a marker that no consumer receives, and Faust waits for the record
      just below the end offset.
    """

    eos_transactions: PartitionTransactions  # set by install_consumer_fixes (faust has .transactions)

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return _ReadCommittedThread(self, loop=self.loop, beacon=self.beacon)

    async def on_partitions_assigned(self, assigned: set, generation_id: int = 0) -> None:
        await self.eos_transactions.on_assigned(assigned)
        await super().on_partitions_assigned(assigned, generation_id)

    async def on_partitions_revoked(self, revoked: set) -> None:
        await super().on_partitions_revoked(revoked)  # the batch in flight is committed by now
        await self.eos_transactions.on_revoked(revoked)

    async def on_stop(self) -> None:
        await super().on_stop()
        await self.eos_transactions.close()
        if self._tail is not None:
            # in a task of its own: aiokafka's stop lets the CancelledError of an internal
            # task escape, which would cancel this one
            await asyncio.gather(asyncio.ensure_future(self._tail.stop()), return_exceptions=True)

    async def _commit(self, offsets: Mapping[Any, int]) -> bool:
        inputs = self.eos_transactions.input_topics
        rest = {tp: offset for tp, offset in offsets.items() if tp.topic not in inputs}
        now = monotonic()
        self._thread.tp_last_committed_at.update({tp: now for tp in offsets if tp.topic in inputs})
        return await super()._commit(rest) if rest else True

    _tail: Any = None  # a read_committed consumer without a group, for data_ends
    _tail_lock: asyncio.Lock | None = None

    async def highwaters(self, *partitions: Any) -> Mapping[Any, int]:
        ends = dict(await super().highwaters(*partitions))  # read_committed: the last stable offsets
        changelogs = [tp for tp in partitions if self._is_changelog_tp(tp) and ends.get(tp) is not None]
        if not changelogs:
            return ends
        begins = await self.earliest_offsets(*changelogs)
        # One caller at a time, and the tail consumer kept only once started: a recovery after
        # a rebalance (a worker of the group SIGKILLed) found it created but not started (a
        # start cancelled with its recovery, or under way in another call) and crashed the
        # worker ("'NoneType' object has no attribute 'seek_to'"); data_ends also reassigns it.
        if self._tail_lock is None:
            self._tail_lock = asyncio.Lock()
        async with self._tail_lock:
            if self._tail is None:
                conf = self.app.conf
                tail = aiokafka.AIOKafkaConsumer(
                    bootstrap_servers=server_list(self.transport.url, self.transport.default_port),  # type: ignore[attr-defined]  # faust's TransportT omits it
                    enable_auto_commit=False,
                    group_id=None,
                    isolation_level="read_committed",
                    **credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context),
                )
                try:
                    await tail.start()
                except BaseException:
                    asyncio.ensure_future(tail.stop())  # not awaited: this task may be cancelled
                    raise
                self._tail = tail
            ends.update(await data_ends(self._tail, {tp: ends[tp] for tp in changelogs}, {tp: begins.get(tp) or 0 for tp in changelogs}))
        return ends


def install_consumer_fixes(app: Any, transactions: PartitionTransactions | None = None, merger: StreamTimeMerger | None = None) -> None:
    """Make ``app`` (a faust.App on the aiokafka transport) create a :class:`RebalanceSafeConsumer`,
    or an :class:`ExactlyOnceConsumer` driving ``transactions``, that delivers the event
    topics in stream-time order through ``merger`` (``None``: as fetched); call before the
    app starts (its consumer is created on first use)."""
    if app._consumer is not None:
        raise RuntimeError("the app's consumer already exists: install the consumer fixes before starting it")
    transport = app.transport
    if not issubclass(transport.Consumer, AIOKafkaConsumer):
        raise RuntimeError(f"unexpected Faust consumer class {transport.Consumer!r} (recstream runs on aiokafka)")
    if transactions is None:
        transport.Consumer = type("RebalanceSafeConsumer", (RebalanceSafeConsumer,), {"merger": merger})
    else:
        transport.Consumer = type("ExactlyOnceConsumer", (ExactlyOnceConsumer,), {"eos_transactions": transactions, "merger": merger})


def run_worker(config: WorkerConfig, *, loglevel: str = "info") -> int:
    """Run until SIGINT/SIGTERM; returns the process exit status."""
    import faust

    from .logs import install as install_logging
    from .metrics import HealthPolicy, MonitoringService, metrics_socket
    from .security import check_connection

    install_logging(config.log_format)
    root = logging.getLogger()  # --loglevel covers the start-up lines too, not only Faust's own
    root.setLevel(min(root.getEffectiveLevel(), logging.getLevelName(loglevel.upper())))
    # a refused password or an unreachable broker stops here, with one line, instead of
    # Faust retrying its bootstrap forever
    check_connection(config.kafka.bootstrap_servers, config.kafka.security)
    try:  # bound before the model loads: a busy --metrics-port is reported at once
        sock = metrics_socket(config.metrics_port, config.metrics_host)
    except OSError as exc:
        log.error("cannot serve metrics on %s:%s: %s", config.metrics_host, config.metrics_port, exc.strerror or exc)
        return 1
    if sock is not None and config.api and config.api_url is None:
        # the address the other workers of the group forward this worker's users' requests to
        import dataclasses
        import socket as _socket

        host, port = sock.getsockname()[:2]
        if host in ("0.0.0.0", "::", ""):
            host = _socket.getfqdn()
        config = dataclasses.replace(config, api_url=f"http://{f'[{host}]' if ':' in host else host}:{port}")
    marker = claim_state(config)
    guard_faust_store_writes()  # a full or failing state volume stops the worker (status 74), see streams.state
    pipeline = Pipeline(config)
    # rebalances neither lose events nor answer them twice; exactly-once: the transactions
    install_consumer_fixes(pipeline.app, pipeline.transactions, pipeline.stream_time)
    if config.create_topics and not pipeline.create_topics():
        log.error("refusing to start: fix the topics above or point --topic-prefix at a fresh namespace")
        marker.unlink(missing_ok=True)
        return 1
    log.info(
        "recstream worker: app %s, broker %s (%s), topics prefix %r, %d partitions, device %s, model %s, ranker %s, emit %s",
        config.kafka.app_id,
        config.kafka.broker,
        config.kafka.security.describe(),
        config.kafka.topic_prefix,
        config.partitions,
        pipeline.device,
        pipeline.encoder.name,
        pipeline.engine.describe_ranker(),
        config.emit,
    )
    services = []
    if sock is not None:
        api = front = None
        if config.api:
            from .api import Api, PipelineBackend

            assert config.api_url is not None
            if config.api_process:
                from .front import STATE_PATH, FrontProcess

                front = FrontProcess(
                    sock, own_url=config.api_url, partitions=config.partitions, max_k=config.k, token=config.api_token, log_format=config.log_format
                )
            api = Api(
                PipelineBackend(pipeline, config.api_url),
                token=config.api_token,
                registry=pipeline.telemetry.registry,
                internal_paths=frozenset({STATE_PATH}) if front is not None else frozenset(),
            )
        services.append(MonitoringService(pipeline, sock, HealthPolicy(config.stall_timeout_s, config.broker_grace_s), api=api, front=front))
    elif config.api:
        log.warning("API off: it is served on the metrics endpoint's port, which is off")

    class Worker(faust.Worker):
        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            super().on_setup_root_logger(logger, level)
            install_logging(config.log_format, logger)  # faust replaced the handlers

    worker = Worker(pipeline.app, *services, loglevel=loglevel, quiet=True)
    try:
        worker.execute_from_commandline()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        if sock is not None:
            sock.close()
        # the startup objects frozen for the collector's sake (Pipeline.freeze_startup_heap) go
        # back to it, so interpreter shutdown frees them (native extensions such as triton's
        # nanobind types otherwise report them as leaked on stderr)
        gc.unfreeze()
    if code == 0 and not pipeline.uncommitted_writes:  # else the next start restores from the changelogs
        marker.unlink(missing_ok=True)
    return code
