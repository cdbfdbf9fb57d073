"""The line's small parts: buffer policies, the durable outbox, review budget, topics, payloads."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from service.core.types import Frame
from service.core.wire import topic_segment, verdict_payload
from service.inference.runtime import parallelism
from service.outbox import Outbox
from service.sinks.review import HourlyBudget
from service.stages.buffer import BufferPolicy, FrameBuffer
from service.stages.infer import Turns


def frame(i: int, camera: str = "c") -> Frame:
    return Frame(camera, i, np.zeros((2, 2, 3), np.uint8), time.monotonic(), time.time())


@pytest.mark.parametrize(
    ("policy", "kept", "drops"),
    [
        (BufferPolicy.DROP_OLDEST, [3, 4], [("c", "buffer_full_oldest")] * 2),
        (BufferPolicy.DROP_NEWEST, [1, 2], [("c", "buffer_full_newest")] * 2),
    ],
)
def test_buffer_policies_count_every_drop(
    policy: BufferPolicy, kept: list[int], drops: list
) -> None:
    dropped: list[tuple[str, str]] = []
    ready = threading.Event()
    buf = FrameBuffer("c", 2, policy, on_drop=lambda c, r: dropped.append((c, r)), ready=ready)
    for i in range(1, 5):
        buf.put(frame(i))
    assert ready.is_set()
    out = []
    while (f := buf.get_nowait()) is not None:
        out.append(f.frame_id)
    assert out == kept and dropped == drops


def test_blocking_buffer_waits_then_times_out_and_counts() -> None:
    dropped: list[tuple[str, str]] = []
    buf = FrameBuffer("c", 1, BufferPolicy.BLOCK, on_drop=lambda c, r: dropped.append((c, r)))
    assert buf.put(frame(1))
    t0 = time.monotonic()
    assert not buf.put(frame(2), timeout=0.2)
    assert time.monotonic() - t0 >= 0.19 and dropped == [("c", "buffer_full_timeout")]
    threading.Timer(0.1, buf.get_nowait).start()
    assert buf.put(frame(3), timeout=2)  # space freed by the consumer: no drop
    assert len(dropped) == 1


def test_outbox_is_durable_ordered_and_keeps_sequences(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    for seq in (1, 2, 3):
        box.append("t/v", f"m{seq}".encode(), sequence=("cam", seq))
    box.close()
    box = Outbox(path)  # a restart (or a SIGKILL: WAL keeps committed rows)
    assert [m.payload for m in box.pending()] == [b"m1", b"m2", b"m3"]
    assert box.next_sequence("cam") == 4 and box.next_sequence("other") == 1
    first = box.pending(limit=2)
    box.ack([first[0].id])
    assert [m.payload for m in box.pending()] == [b"m2", b"m3"]
    assert [m.payload for m in box.pending(after_id=first[1].id)] == [b"m3"]
    depth, age = box.depth()
    assert depth == 2 and age is not None and age >= 0
    box.close()


def test_outbox_bounds_evict_and_count(tmp_path: Path) -> None:
    evicted: list[tuple[str, int]] = []
    box = Outbox(
        tmp_path / "o.sqlite",
        max_rows=150,
        max_age_s=3600,
        on_evict=lambda r, n: evicted.append((r, n)),
    )
    for i in range(200):
        box.append("t", str(i).encode())
    assert box.depth()[0] == 150 and ("size", 50) in evicted
    assert box.pending(limit=1)[0].payload == b"50", "the oldest are evicted first"
    box.max_age_s = 0.0
    time.sleep(0.01)
    for _ in range(100):
        box.append("t", b"x")
    assert any(r == "age" for r, _ in evicted)
    box.close()


def test_hourly_budget_slides() -> None:
    now = [0.0]
    budget = HourlyBudget(2, window_s=3600, clock=lambda: now[0])
    assert budget.allow("a") and budget.allow("a") and not budget.allow("a")
    assert budget.allow("b"), "the budget is per camera"
    now[0] = 3600.0
    assert budget.allow("a")


@pytest.mark.parametrize(
    ("name", "segment"), [("Cam-1", "cam-1"), ("line 2/#+", "line-2"), ("", "unnamed")]
)
def test_topic_segments(name: str, segment: str) -> None:
    assert topic_segment(name) == segment


def test_error_verdict_payload_is_versioned_and_uncertain() -> None:
    f = Frame("cam", 7, np.zeros((1, 1, 3), np.uint8), time.monotonic() - 0.01, time.time(), "P-9")
    body = verdict_payload("l1", f, None, "inference failed: boom", 42, time.monotonic())
    assert body["schema_version"] == 1 and body["sequence"] == 42 and body["part_id"] == "P-9"
    assert (
        body["verdict"] == "uncertain"
        and body["error"] is True
        and body["reason"] == "inference failed: boom"
    )
    assert 5 <= body["latency_ms"] < 1000


def test_turns_hand_over_in_ticket_order_whoever_finishes_first() -> None:
    turns = Turns()
    with turns.collecting:
        tickets = [turns.take() for _ in range(5)]
    handed: list[int] = []
    returned: list[int] = []

    def worker(ticket: int, delay: float) -> None:
        time.sleep(delay)  # later tickets finish first
        turns.hand_over(ticket, [ticket * 10, ticket * 10 + 1], handed.append)
        returned.append(ticket)

    threads = [threading.Thread(target=worker, args=(t, 0.05 * (5 - t))) for t in reversed(tickets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert handed == [0, 1, 10, 11, 20, 21, 30, 31, 40, 41]
    # an early finisher does not wait for the others: it leaves its items and returns
    assert returned == [4, 3, 2, 1, 0]


def test_a_failed_batch_still_hands_in_its_ticket() -> None:
    turns = Turns()
    first, second = turns.take(), turns.take()
    handed: list[str] = []
    turns.hand_over(second, ["b"], handed.append)
    assert handed == []  # waits for the first ticket
    turns.hand_over(first, [], handed.append)  # the first batch failed: no items
    assert handed == ["b"]


@pytest.mark.parametrize(
    ("runs", "intra", "on_cpu", "cores", "expected"),
    [
        (0, 0, True, 2, (2, 1)),  # auto on the CI box: two single-threaded runs
        (0, 0, True, 1, (1, 1)),
        (0, 0, True, 16, (4, 4)),  # at most 4 runs, the cores shared between them
        (0, 0, True, 6, (4, 1)),
        (1, 0, True, 8, (1, 8)),  # one run: all cores inside it (lowest single-image latency)
        (2, 3, True, 8, (2, 3)),  # explicit values are kept
        (0, 0, False, 16, (1, 0)),  # GPU: one run, ONNX Runtime's default threads
        (3, 2, False, 16, (3, 2)),
    ],
)
def test_parallelism(
    runs: int, intra: int, on_cpu: bool, cores: int, expected: tuple[int, int]
) -> None:
    assert parallelism(runs, intra, on_cpu, cores) == expected


def test_folder_source_plays_class_folders_in_name_order_or_shuffled(tmp_path: Path) -> None:
    import cv2

    from service.stages.capture import make_source

    for cls in ("bad", "good"):
        (tmp_path / cls / "Imgs").mkdir(parents=True)
        for i in range(6):
            image = np.full((4, 4, 3), (10 if cls == "bad" else 200) + i, np.uint8)
            cv2.imwrite(str(tmp_path / cls / "Imgs" / f"{i}.png"), image)
        (tmp_path / cls / "Imgs" / "notes.txt").write_text("not an image")

    def play(shuffle: bool) -> list[int]:
        src = make_source(f"folder:{tmp_path}", False, 1.0, "*/Imgs/*", shuffle)
        src.open()
        out = []
        while (image := src.read()) is not None:
            out.append(int(image[0, 0, 0]))
        return out

    assert play(False) == [10, 11, 12, 13, 14, 15, 200, 201, 202, 203, 204, 205]
    mixed = play(True)
    assert sorted(mixed) == play(False) and mixed != play(False)
    assert mixed == play(True), "seeded: the same order on every start"
    assert any(v < 100 for v in mixed[:6]) and any(v > 100 for v in mixed[:6])
