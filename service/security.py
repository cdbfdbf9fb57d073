"""Who may change the running service, and what it may be pointed at.

- Protected mode (`exposure_problem`): an API bound to a non-loopback address needs a token, or
  an explicit `api.allow_unauthenticated: true` (logged at WARNING on every start).
- Tokens and roles (`Tokens`): operator tokens label review frames and trigger cameras, admin
  tokens also change thresholds, models and recipes and read the audit trail. Every presented
  token is compared with every configured one in constant time (sha256 digests through
  `hmac.compare_digest`, no early exit), so timing says neither which token nor how much matched.
- Confined model paths (`confine`): files named in request bodies must resolve (symlinks and
  `..` followed) inside the configured model folders.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from service.config import ApiConfig, Settings

Role = Literal["operator", "admin"]
# A token shorter than this is guessable on a network: refused when the API is exposed.
MIN_EXPOSED_TOKEN = 16
TOKEN_ENV = "LINEINSPECT__API__TOKEN"
# The id of the single `api.token` (an admin token, kept for configurations that predate roles).
LEGACY_ID = "default"
# Who acted when no token is configured (loopback only, or allow_unauthenticated).
ANONYMOUS = "api"


def is_loopback(host: str) -> bool:
    """Only this machine can reach `host` (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def exposure_problem(api: ApiConfig) -> str | None:
    """Why the API may not start as configured (None: it may). One line, with the way out."""
    if is_loopback(api.host) or api.allow_unauthenticated:
        return None
    secrets = [t.secret for t in api.tokens] + ([api.token] if api.token else [])
    if not secrets:
        return (
            f"api.host {api.host} is reachable from the network and no token is configured: "
            f"set {TOKEN_ENV} (e.g. to $(openssl rand -hex 32)) or api.tokens, bind "
            "api.host 127.0.0.1, or opt out explicitly with api.allow_unauthenticated: true"
        )
    if any(len(s.get_secret_value()) < MIN_EXPOSED_TOKEN for s in secrets):
        return (
            f"api.host {api.host} is reachable from the network and a token is shorter than "
            f"{MIN_EXPOSED_TOKEN} characters: use e.g. $(openssl rand -hex 32)"
        )
    return None


def exposure_warning(api: ApiConfig) -> str | None:
    """The WARNING every start logs when the API is open to the network by choice."""
    if is_loopback(api.host) or api.tokens or api.token is not None:
        return None
    return (
        f"UNAUTHENTICATED: api.allow_unauthenticated is set and no token is configured: anyone "
        f"who reaches {api.host}:{api.port} can change thresholds, swap models and label frames"
    )


@dataclass(frozen=True)
class Principal:
    """Who made a request: a token's id and role (never its secret)."""

    id: str
    role: Role

    @property
    def name(self) -> str:
        """As recorded in the model history, candidates and the audit trail: `admin:alice`."""
        return f"{self.role}:{self.id}"

    def may(self, role: Role) -> bool:
        return self.role == "admin" or role == "operator"  # admin implies operator


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class Tokens:
    """The configured tokens, as digests; `identify` finds the one presented."""

    def __init__(self, api: ApiConfig) -> None:
        entries = [(t.id, t.role, t.secret.get_secret_value()) for t in api.tokens]
        if api.token is not None:
            entries.append((LEGACY_ID, "admin", api.token.get_secret_value()))
        self._entries = [(Principal(i, r), _digest(s)) for i, r, s in entries]

    @property
    def configured(self) -> bool:
        return bool(self._entries)

    def identify(self, presented: str) -> Principal | None:
        """The principal whose token this is, or None; every entry is compared, always."""
        digest = _digest(presented)
        found: Principal | None = None
        for principal, expected in self._entries:
            if hmac.compare_digest(digest, expected) and found is None:
                found = principal
        return found


class ConfinementError(PermissionError):
    """A path outside the model folders; the message says which and why."""


def model_dirs(settings: Settings) -> list[Path]:
    """`api.model_dirs`, default: the folders of the configured models and candidates."""
    if settings.api.model_dirs is not None:
        return list(settings.api.model_dirs)
    dirs: list[Path] = []
    for m in settings.models:
        for p in (m.path, m.candidate):
            if p is not None and p.parent not in dirs:
                dirs.append(p.parent)
    return dirs


def confine(path: Path, dirs: Sequence[Path], what: str = "model file") -> Path:
    """`path` resolved (symlinks and `..` followed) when it lies under one of `dirs`;
    ConfinementError otherwise. A file that does not exist is resolved as far as it goes (its
    absence is the loader's refusal to make)."""
    try:
        try:
            resolved = path.resolve(strict=True)
        except FileNotFoundError:
            resolved = path.resolve(strict=False)
    except (OSError, RuntimeError, ValueError) as exc:  # a loop, a NUL byte, a name too long
        raise ConfinementError(f"{what} {path!r}: cannot be resolved: {exc}") from exc
    roots = list(_resolved(dirs))
    if any(resolved.is_relative_to(root) for root in roots):
        return resolved
    shown = ", ".join(str(r) for r in roots) or "none configured"
    raise ConfinementError(
        f"{what} {path} resolves to {resolved}, outside the model folders ({shown}); "
        "set api.model_dirs to allow another folder"
    )


def _resolved(dirs: Iterable[Path]) -> Iterable[Path]:
    for d in dirs:
        try:
            yield d.resolve(strict=True)
        except OSError:
            continue  # a folder that does not exist holds nothing
