"""`lineinspect demo-client`: wait for the service, send real defect images, print the verdicts
and where to look (scripts/demo.sh runs it beside `lineinspect serve`).

HTTP through the standard library, so it runs with nothing but the service installed.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from service.paths import DATA_ENV, data_root

TILE_MODEL = "mt-defect"  # the shipped magnetic-tile gate (models/mt-defect.onnx)


def wait_ready(base: str, pid: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise SystemExit("the service exited during start-up (see the error above)") from None
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"the service at {base} was not ready after {timeout:.0f} s")


def sample_images(data: Path, per_class: int = 2) -> list[Path]:
    folder = data / "neu-det" / "Validation_Images"
    if not folder.is_dir():
        raise SystemExit(
            f"no NEU images at {folder}: set {DATA_ENV} to the folder holding neu-det/"
        )
    chosen: dict[str, list[Path]] = {}
    for path in sorted(folder.glob("*.jpg")):
        group = chosen.setdefault(path.name.rsplit("_", 1)[0], [])
        if len(group) < per_class:
            group.append(path)
    return [p for group in chosen.values() for p in group]


def tile_samples(data: Path, card: Path, good: int = 4) -> list[tuple[str, Path]]:
    """(truth, path) of held-out magnetic tiles from the model card's test split: a few good
    ones and one of each defect class, so the gate is seen passing as well as failing."""
    import yaml

    split = yaml.safe_load(card.read_text())["training"]["split"]
    files = split["files"]["test"]
    out = [("good", data / "magnetic-tile" / f) for f in files[split["good_class"]][:good]]
    for cls, paths in files.items():
        if cls != split["good_class"]:
            out.append((cls.removeprefix("MT_").lower(), data / "magnetic-tile" / paths[0]))
    return [(truth, p) for truth, p in out if p.is_file()]


def judge_tiles(base: str, data: Path, model: str, card: Path) -> None:
    samples = tile_samples(data, card)
    print(f"\njudging {len(samples)} held-out magnetic tiles with {model} (good and defective):\n")
    print(f"{'tile':<24} {'truth':<10} {'verdict':<10} {'score':>6} {'ms':>7}")
    for truth, path in samples:
        req = urllib.request.Request(
            f"{base}/v1/predict?model={model}",
            data=path.read_bytes(),
            headers={"content-type": "image/jpeg"},
        )
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=60) as r:
            body = json.load(r)
        ms = (time.perf_counter() - t0) * 1000
        score = (body.get("anomaly") or {}).get("score", 0.0)
        print(f"{path.name:<24} {truth:<10} {body['verdict'].upper():<10} {score:>6.3f} {ms:>7.1f}")


def watch_line(settings: Any, base: str, seconds: float = 4.0) -> None:
    """Show the verdicts a PLC would see: subscribe like one, or explain where they wait."""
    q, line = settings.mqtt, settings.line.name
    topic = f"{q.topic_prefix}/{line}/+/verdict"
    try:
        from service.commands.mqtt_subscriber import Subscriber

        sub = Subscriber(
            q.port, topic, host=q.host, client_id="lineinspect-demo-viewer", keepalive=10
        )
        sub.connect(timeout=seconds)
        time.sleep(seconds)
        sub.close()
    except (OSError, ImportError) as exc:
        with urllib.request.urlopen(f"{base}/v1/cameras", timeout=5) as r:
            state = json.load(r)
        print(
            f"\nno MQTT broker at {q.host}:{q.port} ({exc}).\n"
            f"The line keeps inspecting; {state['outbox']['messages']} verdicts wait in "
            f"{settings.outbox.path} and will be delivered in order once a broker is up:\n"
            "  sudo apt-get install -y mosquitto && mosquitto -d    (then watch: "
            f"mosquitto_sub -t '{topic}' -v)"
        )
        return
    print(
        f"\nverdicts received on {topic} in {seconds:.0f} s (what a PLC subscribed there sees):\n"
    )
    print(
        f"{'camera':<12} {'seq':>5} {'frame':>6} {'verdict':<10} {'top finding':<18} "
        f"{'conf':>6} {'ms':>7}"
    )
    received = sub.verdicts()
    for v in received[-12:]:
        top = (v.get("findings") or [{}])[0]
        print(
            f"{v['camera']:<12} {v['sequence']:>5} {v['frame_id']:>6} "
            f"{v['verdict'].upper():<10} {top.get('class_name', '-'):<18} "
            f"{top.get('confidence', 0):>6.3f} {v['latency_ms']:>7.1f}"
        )
    print(
        f"({len(received)} verdicts; watch them live: "
        f"mosquitto_sub -h {q.host} -p {q.port} -t '{topic}' -v)"
    )


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo-client",
        help="the demo's client: judge real images on a running service, show its verdicts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, required=True, help="the running service's config")
    p.add_argument(
        "--server-pid", type=int, required=True, help="the service's process (fail if it exits)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from service.config import load_settings

    settings = load_settings(args.config, os.environ)
    host = "127.0.0.1" if settings.api.host in ("0.0.0.0", "::") else settings.api.host
    base = f"http://{host}:{settings.api.port}"
    data = data_root()
    images = sample_images(data)
    wait_ready(base, args.server_pid)
    print(f"\njudging {len(images)} real NEU steel-surface images from {data}:\n")
    print(f"{'image':<24} {'verdict':<10} {'top class':<16} {'p':>6} {'ms':>7}  reason")
    for path in images:
        req = urllib.request.Request(
            f"{base}/v1/predict", data=path.read_bytes(), headers={"content-type": "image/jpeg"}
        )
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=30) as r:
            body = json.load(r)
        ms = (time.perf_counter() - t0) * 1000
        top = (body.get("classes") or [{}])[0]
        print(
            f"{path.name:<24} {body['verdict'].upper():<10} {top.get('class_name', '-'):<16} "
            f"{top.get('probability', 0):>6.3f} {ms:>7.1f}  {body['reason']}"
        )
    gates = [m for m in settings.models if m.path.stem == TILE_MODEL]
    if gates:
        judge_tiles(base, data, TILE_MODEL, gates[0].path.with_suffix("").with_suffix(".card.yaml"))
    if settings.cameras:
        watch_line(settings, base)
    print(
        f"""
lineinspect is serving {", ".join(str(m.path) for m in settings.models)} at {base}
  predict:  curl -H 'content-type: image/jpeg' --data-binary @IMAGE.jpg {base}/v1/predict
  operator: {base}/ui             (live frames with boxes, verdict feed, drift, review queue)
  cameras:  {base}/v1/cameras     models: {base}/v1/models      drift: {base}/v1/drift
  docs:     {base}/docs           metrics: {base}/metrics
  health:   {base}/healthz        ready:   {base}/readyz
Ctrl-C stops it (verdicts not yet delivered stay in the outbox for the next start).""",
        flush=True,
    )
    return 0
