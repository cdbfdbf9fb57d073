"""A subscriber that stands where a PLC stands: QoS 1 on the verdict topics, keeping what arrives.

`lineinspect demo-client` shows through it the verdicts a PLC would receive; the benchmarks, the
soak test and the tests use the same class as their PLC (through scripts/harness.py).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, NamedTuple


class Message(NamedTuple):
    arrived: float  # time.time() when it arrived here
    topic: str
    payload: Any  # the JSON payload, decoded


class Subscriber:
    """Subscribes to `topic` on every (re)connection and keeps each message in `arrivals`
    (override `on_message` to keep something else). Nothing happens until `connect`."""

    def __init__(
        self,
        port: int,
        topic: str,
        *,
        host: str = "127.0.0.1",
        client_id: str = "lineinspect-subscriber",
        qos: int = 1,
        clean_session: bool = True,
        keepalive: int = 60,
        username: str | None = None,
        password: str | None = None,
        reconnect_delay: int | None = None,
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.host, self.port, self.topic, self.keepalive = host, port, topic, keepalive
        self.arrivals: list[Message] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
        )
        if reconnect_delay is not None:
            self.client.reconnect_delay_set(reconnect_delay, reconnect_delay)
        if username is not None:
            self.client.username_pw_set(username, password)

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            client.subscribe(topic, qos=qos)

        def on_subscribe(*args: Any) -> None:
            self.subscribed.set()

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            self.on_message(Message(time.time(), msg.topic, json.loads(msg.payload)))

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message

    def connect(self, timeout: float = 10, *, retry: bool = False) -> bool:
        """Connect, start the network loop and wait up to `timeout` s for the subscription;
        False when it was not confirmed in time. Without `retry` a broker that cannot be reached
        raises OSError at once; with it the client keeps trying in the background."""
        if retry:
            self.client.connect_async(self.host, self.port, keepalive=self.keepalive)
        else:
            self.client.connect(self.host, self.port, keepalive=self.keepalive)
        self.client.loop_start()
        return self.subscribed.wait(timeout)

    def on_message(self, message: Message) -> None:
        with self.lock:
            self.arrivals.append(message)

    def received(self, camera: str | None = None, suffix: str = "/verdict") -> list[Message]:
        """The messages on topics ending with `suffix` (verdicts), of one camera or all."""
        with self.lock:
            return [
                m
                for m in self.arrivals
                if m.topic.endswith(suffix) and (camera is None or m.payload["camera"] == camera)
            ]

    def verdicts(self, camera: str | None = None) -> list[dict[str, Any]]:
        return [m.payload for m in self.received(camera)]

    def wait_for(
        self, count: int, timeout: float, camera: str | None = None
    ) -> list[dict[str, Any]]:
        """The verdicts once `count` distinct sequence numbers arrived, or what there is after
        `timeout` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.verdicts(camera)
            if len({v["sequence"] for v in got}) >= count:
                return got
            time.sleep(0.02)
        return self.verdicts(camera)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
