"""MQTT out (paho-mqtt v2): drains the durable outbox to the broker, in order, QoS 1.

- A row leaves the outbox only when the broker acknowledged it (`MQTTMessageInfo.is_published`,
  polled, which sidesteps the callback-before-mid race of `on_publish`).
- While the broker is away nothing new is handed to paho; rows wait on disk. paho resends its
  own unacknowledged messages when the connection returns (with the DUP flag), then the drain
  continues where it stopped, so order is kept and delivery is at least once.
- Retained `<prefix>/<line>/status` = online on connect; the broker publishes the retained
  last will (offline) if the service dies, and a clean stop publishes offline itself.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from service.core.wire import status_payload
from service.outbox import Outbox

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MqttOptions:
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "lineinspect"
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    keepalive_s: int = 30
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 10.0
    inflight: int = 32
    status_topic: str = "lineinspect/line/status"


class MqttLink:
    def __init__(
        self,
        options: MqttOptions,
        outbox: Outbox,
        on_connection: Callable[[bool], None] | None = None,
        on_sent: Callable[[int], None] | None = None,
        subscriptions: Mapping[str, Callable[[str, bytes], None]] | None = None,
    ) -> None:
        self.options, self.outbox = options, outbox
        # topic filter -> its handler (triggers, recipe selections), called on paho's thread
        self.subscriptions = dict(subscriptions or {})
        self._on_connection = on_connection or (lambda up: None)
        self._on_sent = on_sent or (lambda n: None)
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._client = self._make_client()
        self._inflight: deque[tuple[mqtt.MQTTMessageInfo, int]] = deque()
        self._cursor = 0
        self._thread = threading.Thread(target=self._drain, name="mqtt-drain", daemon=True)
        self.last_error = ""

    def _make_client(self) -> mqtt.Client:
        o = self.options
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=o.client_id,
            clean_session=False,  # persistent session: the broker keeps our QoS 1 state
            protocol=mqtt.MQTTv311,
        )
        if o.username is not None:
            client.username_pw_set(o.username, o.password)
        if o.tls:
            client.tls_set(
                ca_certs=o.ca_file,
                certfile=o.cert_file,
                keyfile=o.key_file,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            client.tls_insecure_set(o.tls_insecure)
        client.will_set(
            o.status_topic, status_payload("offline", reason="connection lost"), qos=1, retain=True
        )
        client.reconnect_delay_set(
            min_delay=max(1, int(o.reconnect_min_s)), max_delay=max(1, int(o.reconnect_max_s))
        )
        client.max_inflight_messages_set(o.inflight)
        client.max_queued_messages_set(0)
        client.on_connect = self._connected
        client.on_disconnect = self._disconnected
        client.on_message = self._message
        return client

    # -- paho callbacks (network thread)
    def _connected(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            log.error("mqtt %s:%d: %s", self.options.host, self.options.port, self.last_error)
            return
        o = self.options
        present = getattr(flags, "session_present", "?")
        log.info("mqtt: connected to %s:%d (session present: %s)", o.host, o.port, present)
        client.publish(self.options.status_topic, status_payload("online"), qos=1, retain=True)
        for topic in self.subscriptions:
            client.subscribe(topic, qos=1)
        self.last_error = ""
        self.connected.set()
        self._on_connection(True)

    def _disconnected(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if self.connected.is_set() and not self._stop.is_set():
            log.warning("mqtt: disconnected from %s:%d (%s); verdicts wait in the outbox",
                        self.options.host, self.options.port, reason)  # fmt: skip
        self.connected.clear()
        self._on_connection(False)

    def _message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            for sub, handle in self.subscriptions.items():
                if mqtt.topic_matches_sub(sub, message.topic):
                    handle(message.topic, bytes(message.payload))
                    return
        except Exception:  # a bad trigger must not kill paho's network thread
            log.exception("mqtt: handling a message on %s failed", message.topic)

    # -- lifecycle
    def start(self) -> None:
        o = self.options
        # connect_async + loop_start: paho keeps reconnecting in its own thread, even when the
        # broker is down at start-up.
        self._client.connect_async(o.host, o.port, keepalive=o.keepalive_s)
        self._client.loop_start()
        self._thread.start()

    def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Give the outbox a moment to empty, say offline, disconnect. Rows left stay on disk."""
        deadline = time.monotonic() + drain_timeout_s
        while self.connected.is_set() and time.monotonic() < deadline:
            if self.outbox.depth()[0] == 0 and not self._inflight:
                break
            time.sleep(0.05)
        self._stop.set()
        self._thread.join(5)
        if self.connected.is_set():
            info = self._client.publish(
                self.options.status_topic,
                status_payload("offline", reason="stopped"),
                qos=1,
                retain=True,
            )
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(2)
        self._client.disconnect()
        self._client.loop_stop()

    # -- the drain (own thread)
    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                self._drain_once()
            except Exception:  # the drain must outlive any error, or nothing is sent again
                log.exception("mqtt: drain step failed; retrying in 1 s")
                self._stop.wait(1.0)
        self._collect_acks()

    def _drain_once(self) -> None:
        """One step: collect acks, then publish what fits in the in-flight window."""
        self._collect_acks()
        if not self.connected.is_set():
            self._stop.wait(0.1)
            return
        room = self.options.inflight - len(self._inflight)
        if room <= 0:
            self._stop.wait(0.002)
            return
        batch = self.outbox.pending(after_id=self._cursor, limit=room)
        if not batch:
            self.outbox.wait(0.05)
            return
        in_flight = {row for _, row in self._inflight}
        for msg in batch:
            if not self.connected.is_set():
                break
            if msg.id in in_flight:  # after a rewind (see _collect_acks): already on its way
                self._cursor = max(self._cursor, msg.id)
                continue
            info = self._client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
            if msg.qos == 0:
                self.outbox.ack([msg.id])
            else:
                self._inflight.append((info, msg.id))
            self._cursor = msg.id

    def _collect_acks(self) -> None:
        if not self._inflight:
            return
        done: list[int] = []
        failed: list[int] = []
        for info, row in self._inflight:
            try:
                if info.is_published():
                    done.append(row)
            except (RuntimeError, ValueError):
                # paho raises here for a message whose publish failed (the connection dropped
                # under it), forever: left in flight it would stop the drain for good.
                failed.append(row)
        if not done and not failed:
            return
        finished = set(done) | set(failed)
        self._inflight = deque((i, r) for i, r in self._inflight if r not in finished)
        if done:
            self.outbox.ack(done)
            self._on_sent(len(done))
        if failed:  # still in the outbox: publish them again (at least once, never lost)
            self._cursor = min(self._cursor, min(failed) - 1)
            log.warning("mqtt: %d message(s) not sent (connection lost while publishing); "
                        "sending them again from the outbox", len(failed))  # fmt: skip


class NullLink:
    """MQTT disabled: nothing is sent and nothing waits."""

    connected = threading.Event()
    last_error = "mqtt disabled"

    def start(self) -> None:
        pass

    def stop(self, drain_timeout_s: float = 0.0) -> None:
        pass
