"""The verdict sink: every verdict into the durable outbox, which the MQTT link drains to the
broker (`service.sinks.mqtt`). This is the one sink that blocks: on a full disk it keeps the
verdict and retries every second, because a verdict is never thrown away.

`OutboxPublisher` is the same outbox seen from other writers (review announcements): topic +
payload in, durable QoS 1 out.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from service.core.types import Judged
from service.core.wire import Topics, encode
from service.metrics import Metrics
from service.outbox import Outbox, OutboxFullError

log = logging.getLogger(__name__)
STOP_GRACE_S = 10.0  # how long a stopping service keeps retrying a full disk before logging


class OutboxPublisher:
    """Announcements (review items) through the outbox, QoS 1, in order with the verdicts."""

    def __init__(self, outbox: Outbox, topics: Topics) -> None:
        self.outbox, self.topics = outbox, topics

    def announce(self, camera: str, kind: str, payload: dict[str, Any]) -> None:
        self.outbox.append(self.topics.camera(camera, kind), encode(payload), qos=1)

    def announce_line(self, kind: str, payload: dict[str, Any]) -> None:
        """`<prefix>/<line>/<kind>`, not retained."""
        self.outbox.append(self.topics.line_topic(kind), encode(payload), qos=1)


class NullPublisher:
    """No broker configured: announcements go nowhere."""

    def announce(self, camera: str, kind: str, payload: dict[str, Any]) -> None:
        pass

    def announce_line(self, kind: str, payload: dict[str, Any]) -> None:
        pass


class VerdictSink:
    name = "outbox"

    def __init__(
        self,
        outbox: Outbox,
        topics: Topics,
        metrics: Metrics,
        shutdown: threading.Event,  # set when the service starts stopping
        grace_s: float = STOP_GRACE_S,
    ) -> None:
        self.outbox, self.topics, self.metrics = outbox, topics, metrics
        self.shutdown, self.grace_s = shutdown, grace_s

    def handle(self, judged: Judged) -> None:
        """Write the verdict to the outbox; on a full disk keep it and retry every second.

        Every failed attempt is counted; the log says so once, then every 30 s. Only when the
        service is stopping and the disk is still full `grace_s` later is a verdict given up,
        and then its whole payload goes to the log so it can still be recovered."""
        camera, seq, frame_id = judged.camera, judged.sequence, judged.frame.frame_id
        data = encode(judged.payload)
        topic = self.topics.camera(camera, "verdict")
        attempts = 0
        stopping_since: float | None = None
        while True:
            try:
                self.outbox.append(topic, data, qos=1, sequence=(camera, seq))
                if attempts:
                    log.warning("camera %s frame %d: outbox writable again after %d attempts",
                                camera, frame_id, attempts)  # fmt: skip
                return
            except OutboxFullError as exc:
                self.metrics.pipeline_errors.labels("outbox").inc()
                if attempts % 30 == 0:
                    log.error("camera %s frame %d: outbox failed (retrying every second): %s",
                              camera, frame_id, exc)  # fmt: skip
                attempts += 1
                if self.shutdown.is_set():
                    stopping_since = stopping_since or time.monotonic()
                    if time.monotonic() - stopping_since > self.grace_s:
                        log.error("stopping with the outbox unwritable: verdict %s/%d not "
                                  "stored, payload: %s", camera, seq, data.decode())  # fmt: skip
                        return
                time.sleep(1.0)

    def close(self) -> None:
        pass  # the outbox outlives the sink: the MQTT link drains it, the root closes it
