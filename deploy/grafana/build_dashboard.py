"""Generate deploy/grafana/dashboards/lineinspect.json, the Grafana dashboard of a lineinspect line.

    python deploy/grafana/build_dashboard.py            # rewrite the committed JSON
    python deploy/grafana/build_dashboard.py --check    # exit 1 if the JSON is out of date

Pure standard library and deterministic (same input, same bytes), so the JSON stays reviewable
in diffs; edit this script (the rows) or panels.py (panel and query builders, the grid), never
the JSON. tests/integration/test_observability.py runs every query below against a real
Prometheus scraping a real line and fails on one that returns nothing.

Queries filter on `line` (a target label set in deploy/prometheus/prometheus.yml) and `camera`.
Series the service only creates on first use (a drop reason, a review reason, an error stage)
get an `or on (...)` fallback at 0, so a healthy line shows a flat 0 rather than "No data".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from panels import (
    LC,
    RI,
    UP_MAPPING,
    L,
    Panel,
    Row,
    dashboard,
    layout,
    per_s,
    quantile,
    stat,
    table,
    targets,
    timeseries,
    up_down,
    zero_for,
)

OUT = Path(__file__).resolve().parent / "dashboards" / "lineinspect.json"

# -- the panels, row by row ------------------------------------------------------------------
VERDICT_COLORS = [
    {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": color}}],
    }
    for name, color in (("pass", "green"), ("fail", "red"), ("uncertain", "orange"))
]
VERDICTS = "lineinspect_verdicts_total"
F2V = "lineinspect_frame_to_verdict_seconds"
# 0 series to fall back on: one per camera, one per line.
CAMERAS_ZERO = f"sum by (line, camera) (lineinspect_camera_up{{{LC}}})"
LINE_ZERO = f"sum by (line) (lineinspect_build_info{{{L}}})"


def overview() -> list[Panel]:
    return [
        stat(
            "Service",
            f'min(up{{job="lineinspect", {L}}})',
            description="Prometheus can scrape the service.",
            mappings=UP_MAPPING,
            steps=((1, "green"),),
            base="red",
        ),
        stat(
            "Cameras up",
            f"sum(lineinspect_camera_up{{{LC}}})",
            description="Cameras delivering frames (see the Cameras row).",
        ),
        stat(
            "MQTT",
            f"min(lineinspect_mqtt_connected{{{L}}})",
            description="Connected to the broker: verdicts reach the PLC.",
            mappings=UP_MAPPING,
            steps=((1, "green"),),
            base="red",
        ),
        stat(
            "Outbox waiting",
            f"sum(lineinspect_outbox_messages{{{L}}})",
            description="Verdicts not yet acknowledged by the broker.",
            steps=((100, "orange"), (1000, "red")),
        ),
        stat(
            "Oldest unsent",
            f"max(lineinspect_outbox_oldest_age_seconds{{{L}}})",
            unit="s",
            steps=((10, "orange"), (60, "red")),
        ),
        stat("Verdicts/s", f"sum(rate({VERDICTS}{{{LC}}}[{RI}]))", unit="cps"),
        stat(
            "Review queue",
            f"sum(lineinspect_review_queue_items{{{L}}})",
            description="Frames waiting for a human label.",
        ),
        stat(
            "Firing alerts",
            f'count(ALERTS{{alertstate="firing", {L}}}) or vector(0)',
            description="Alerts of deploy/prometheus/alerts.yml firing now for these lines.",
            steps=((1, "red"),),
        ),
    ]


def throughput() -> list[Panel]:
    dropped = per_s("line, camera, reason", "lineinspect_frames_dropped_total", LC)
    return [
        timeseries(
            "Throughput (verdicts/s per camera)",
            targets((per_s("line, camera", VERDICTS, LC), "{{line}} / {{camera}}")),
            unit="cps",
        ),
        timeseries(
            "Verdict mix",
            targets((per_s("verdict", VERDICTS, LC), "{{verdict}}")),
            unit="cps",
            stack=True,
            overrides=VERDICT_COLORS,
            description="PASS / FAIL / UNCERTAIN verdicts per second, stacked.",
        ),
        timeseries(
            "Reject rate",
            targets((f"camera:lineinspect_reject_ratio:rate5m{{{LC}}}", "{{line}} / {{camera}}")),
            unit="percentunit",
            limits=(0, 1),
            description="Share of FAIL verdicts over 5 minutes (recording rule).",
        ),
        timeseries(
            "Uncertain ratio",
            targets((f"lineinspect_uncertain_ratio{{{LC}}}", "{{line}} / {{camera}}")),
            unit="percentunit",
            limits=(0, 1),
            steps=((0.3, "red"),),
            description="Share of UNCERTAIN verdicts in the drift window; alert above 30 %.",
        ),
        timeseries(
            "Frames dropped by reason",
            targets(
                (
                    f"{dropped} or on (line, camera) {zero_for(CAMERAS_ZERO, 'reason')}",
                    "{{camera}} {{reason}}",
                )
            ),
            unit="cps",
            description="Frames dropped before inference (buffer full); 'none': no drops.",
        ),
        timeseries(
            "Frames captured vs judged",
            targets(
                (per_s("camera", "lineinspect_frames_captured_total", LC), "{{camera}} captured"),
                (per_s("camera", VERDICTS, LC), "{{camera}} judged"),
            ),
            unit="cps",
        ),
    ]


def latency() -> list[Panel]:
    inference = "lineinspect_inference_duration_seconds"
    return [
        timeseries(
            "Frame to verdict latency p50 / p95 / p99",
            targets(
                (quantile(0.5, F2V, LC, "camera"), "{{camera}} p50"),
                (quantile(0.95, F2V, LC, "camera"), "{{camera}} p95"),
                (quantile(0.99, F2V, LC, "camera"), "{{camera}} p99"),
            ),
            unit="s",
            steps=((0.25, "red"),),
            description="Capture to verdict ready; the alert budget (p99) is 250 ms.",
        ),
        timeseries(
            "Inference latency by model",
            targets(
                (quantile(0.5, inference, L, "model"), "{{model}} p50"),
                (quantile(0.99, inference, L, "model"), "{{model}} p99"),
            ),
            unit="s",
            description="One ONNX Runtime session.run (a whole batch).",
        ),
        timeseries(
            "Stage time p95 by model",
            targets(
                (
                    quantile(0.95, "lineinspect_stage_duration_seconds", L, "model, stage"),
                    "{{model}} {{stage}}",
                )
            ),
            unit="s",
            description="Per image: decode, preprocess, infer, postprocess, decide.",
        ),
    ]


def drift() -> list[Panel]:
    return [
        timeseries(
            "Drift PSI per signal",
            targets((f"lineinspect_drift_psi{{{LC}}}", "{{camera}} {{signal}}")),
            steps=((0.1, "orange"), (0.25, "red")),
            description="Population stability index against the model card's reference: "
            "above 0.1 watch, above 0.25 drifted (alert after 15 min).",
        ),
        timeseries(
            "Drift KS per signal",
            targets((f"lineinspect_drift_ks{{{LC}}}", "{{camera}} {{signal}}")),
            limits=(0, 1),
            description="Two-sample Kolmogorov-Smirnov statistic (largest CDF gap).",
        ),
        timeseries(
            "Drift window",
            targets(
                (f"lineinspect_drift_window_frames{{{LC}}}", "{{camera}} frames"),
                (
                    per_s("camera", "lineinspect_drift_samples_skipped_total", LC),
                    "{{camera}} skipped/s",
                ),
            ),
            description="Frames in the window (drift is meaningful from drift.min_frames) and "
            "frames per second the drift worker had to skip.",
        ),
    ]


def delivery() -> list[Panel]:
    evicted = per_s("line, reason", "lineinspect_outbox_evicted_total", L)
    return [
        up_down("MQTT connected", targets((f"lineinspect_mqtt_connected{{{L}}}", "{{line}}"))),
        timeseries(
            "Outbox",
            targets(
                (f"lineinspect_outbox_messages{{{L}}}", "{{line}} waiting"),
                (f"lineinspect_outbox_oldest_age_seconds{{{L}}}", "{{line}} oldest age"),
            ),
            description="Verdicts waiting for a broker acknowledgement, and the age of the "
            "oldest (right axis).",
            overrides=[
                {
                    "matcher": {"id": "byFrameRefID", "options": "B"},
                    "properties": [
                        {"id": "unit", "value": "s"},
                        {"id": "custom.axisPlacement", "value": "right"},
                    ],
                }
            ],
        ),
        timeseries(
            "MQTT acknowledged / evicted",
            targets(
                (
                    per_s("line", "lineinspect_mqtt_messages_acknowledged_total", L),
                    "{{line}} acknowledged",
                ),
                (
                    f"{evicted} or on (line) {zero_for(LINE_ZERO, 'reason')}",
                    "{{line}} evicted {{reason}}",
                ),
            ),
            unit="cps",
            description="Evicted verdicts never reach the PLC.",
        ),
    ]


def cameras() -> list[Panel]:
    reconnects = per_s("line, camera", "lineinspect_camera_reconnects_total", LC, "increase")
    errors = per_s("line, stage", "lineinspect_pipeline_errors_total", L)
    return [
        up_down("Camera up", targets((f"lineinspect_camera_up{{{LC}}}", "{{camera}}"))),
        timeseries(
            "Camera reconnects",
            targets((f"{reconnects} or on (line, camera) 0 * {CAMERAS_ZERO}", "{{camera}}")),
            description="Source re-open attempts after a failure or a stall.",
        ),
        timeseries(
            "Pipeline errors by stage",
            targets(
                (f"{errors} or on (line) {zero_for(LINE_ZERO, 'stage')}", "{{line}} {{stage}}")
            ),
            unit="cps",
            description="Frames that failed in a stage; each still got an UNCERTAIN verdict.",
        ),
    ]


def review() -> list[Panel]:
    kept = per_s("camera, reason", "lineinspect_review_enqueued_total", LC)
    refused = per_s("camera, reason", "lineinspect_review_dropped_total", LC)
    zero = zero_for(CAMERAS_ZERO, "reason")
    return [
        timeseries(
            "Review inflow",
            targets(
                (f"{kept} or on (camera) {zero}", "{{camera}} {{reason}}"),
                (f"{refused} or on (camera) {zero}", "{{camera}} not kept: {{reason}}"),
            ),
            unit="cps",
            description="Frames kept for human review (uncertain, sampled) and those refused "
            "by the hourly budget or a full disk.",
        ),
        timeseries(
            "Review queue depth",
            targets((f"lineinspect_review_queue_items{{{L}}}", "{{line}}")),
        ),
    ]


def models() -> list[Panel]:
    return [
        table(
            "Models",
            f"lineinspect_model_info{{{L}}}",
            hide=("job",),
            description="Served models: version, sha256, task, layout and the execution "
            "provider really in use.",
        ),
        up_down(
            "Model ready",
            targets(
                (f"lineinspect_model_ready{{{L}}}", "{{model}}"),
                (f"lineinspect_inference_server_up{{{L}}}", "{{model}} inference server"),
            ),
            description="Loaded and warmed; with runtime.backend triton also whether the "
            "inference server answers (while it does not, the model's frames are UNCERTAIN).",
        ),
        timeseries(
            "Thresholds version and kept models",
            targets(
                (f"lineinspect_thresholds_version{{{L}}}", "{{model}} thresholds version"),
                (f"lineinspect_model_history_entries{{{L}}}", "{{model}} models kept"),
            ),
            description="The thresholds version goes up on every threshold change and model "
            "swap (verdicts carry it); kept models are what POST .../rollback can return to.",
        ),
    ]


def candidate() -> list[Panel]:
    """A candidate model judging the live model's frames off the PLC path (POST
    /v1/models/{name}/candidate): empty while no candidate runs."""
    mean_shift = f"lineinspect_candidate_score_shift_mean{{{LC}}}"
    duration = "lineinspect_candidate_duration_seconds"
    return [
        table(
            "Candidates",
            f"lineinspect_candidate_info{{{L}}}",
            hide=("job",),
            description="The candidate running beside each live model: version and sha256.",
        ),
        timeseries(
            "Candidate agreement",
            targets((f"lineinspect_candidate_agreement_ratio{{{LC}}}", "{{model}} / {{camera}}")),
            unit="percentunit",
            limits=(0, 1),
            description="Share of frames on which the candidate gave the live verdict, since "
            "it was loaded (GET /v1/models/{name}/candidate has the details).",
        ),
        timeseries(
            "Candidate verdict flips by direction",
            targets(
                (
                    per_s("camera, live, candidate", "lineinspect_candidate_flips_total", LC),
                    "{{camera}} {{live}} -> {{candidate}}",
                )
            ),
            unit="cps",
            description="Frames the candidate judged otherwise: live verdict -> candidate verdict "
            "(pass -> fail: stricter, fail -> pass: misses the live model's rejects).",
        ),
        timeseries(
            "Candidate score shift by class (mean)",
            targets((mean_shift, "{{camera}} {{class}}")),
            limits=(-1, 1),
            description="Candidate score minus live score on the same frames, averaged since "
            "the candidate was loaded: above 0, the candidate is more confident in that class.",
        ),
        timeseries(
            "Candidate vs live latency",
            targets(
                (quantile(0.5, duration, LC, "camera"), "{{camera}} candidate p50"),
                (quantile(0.95, duration, LC, "camera"), "{{camera}} candidate p95"),
                (
                    quantile(0.5, "lineinspect_inference_duration_seconds", L, "model"),
                    "{{model}} live inference p50",
                ),
            ),
            unit="s",
            description="The candidate's time per frame (preprocess to decision, in its own "
            "worker) beside the live model's inference time.",
        ),
        timeseries(
            "Candidate frames: judged, dropped, failed",
            targets(
                (per_s("camera", "lineinspect_candidate_frames_total", LC), "{{camera}} judged"),
                (
                    per_s("camera", "lineinspect_candidate_frames_dropped_total", LC),
                    "{{camera}} dropped",
                ),
                (per_s("camera", "lineinspect_candidate_errors_total", LC), "{{camera}} failed"),
            ),
            unit="cps",
            description="Dropped: the candidate's queue was full (the live path never waits "
            "for it); its figures cover the frames it judged.",
        ),
    ]


def per_camera() -> list[Panel]:
    """Repeated once per selected camera (the row repeats on $camera)."""
    return [
        timeseries(
            "$camera verdicts",
            targets((per_s("verdict", VERDICTS, LC), "{{verdict}}")),
            unit="cps",
            stack=True,
            overrides=VERDICT_COLORS,
        ),
        timeseries(
            "$camera latency",
            targets(
                (quantile(0.5, F2V, LC, "camera"), "p50"),
                (quantile(0.99, F2V, LC, "camera"), "p99"),
            ),
            unit="s",
            steps=((0.25, "red"),),
        ),
        timeseries(
            "$camera drift PSI",
            targets((f"lineinspect_drift_psi{{{LC}}}", "{{signal}}")),
            steps=((0.1, "orange"), (0.25, "red")),
        ),
    ]


def build() -> dict[str, Any]:
    # (title, panels, panel height, panels side by side, variable the row repeats on)
    rows: list[Row] = [
        ("Overview: line $line", overview(), 4, 8, None),
        ("Throughput and verdicts", throughput(), 8, 3, None),
        ("Latency", latency(), 8, 3, None),
        ("Drift", drift(), 8, 3, None),
        ("Delivery to the PLC (MQTT, outbox)", delivery(), 8, 3, None),
        ("Cameras", cameras(), 8, 3, None),
        ("Human review", review(), 8, 2, None),
        ("Models", models(), 8, 3, None),
        ("Candidate model (shadow, off the PLC path)", candidate(), 8, 3, None),
        ("Camera $camera", per_camera(), 8, 3, "camera"),
    ]
    return dashboard(layout(rows))


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write (default {OUT})")
    parser.add_argument("--check", action="store_true", help="exit 1 if --out is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
