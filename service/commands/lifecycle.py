"""`lineinspect models candidate | candidate-report | promote | discard | rollback | history`:
try a new model safely on a running service, over its HTTP API.

    lineinspect models candidate neu-cls-demo models/neu-cls-v2.onnx   # judges beside the live one
    lineinspect models candidate-report neu-cls-demo                    # agreement, flips, shifts
    lineinspect models promote neu-cls-demo                             # or: discard
    lineinspect models rollback neu-cls-demo                            # back to the one before
    lineinspect models history neu-cls-demo

Each prints the service's JSON answer and exits 0, or prints its refusal (the status code and
the reason) and exits 2. The service is `--url` (default $LINEINSPECT_URL, else
http://127.0.0.1:8080); the API token is read from $LINEINSPECT__API__TOKEN, the variable the
service itself reads, never from the command line. Paths are files on the service's host; a
relative one is taken from this command's working directory.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from service.commands import fail

DEFAULT_URL = "http://127.0.0.1:8080"
TOKEN_ENV = "LINEINSPECT__API__TOKEN"


def add_parser(models: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def command(name: str, text: str) -> argparse.ArgumentParser:
        p = models.add_parser(
            name,
            help=text,
            description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("model", help="the live model's name (GET /v1/models lists them)")
        p.add_argument("--url", default=os.environ.get("LINEINSPECT_URL", DEFAULT_URL))
        p.add_argument("--timeout", type=float, default=120.0, help="seconds (a load warms up)")
        p.set_defaults(func=run, action=name)
        return p

    load = command("candidate", "load a candidate beside a live model on a running service")
    load.add_argument("path", type=Path, help="the candidate's ONNX file")
    load.add_argument("--card", type=Path, help="its card (default: next to the file)")
    command("candidate-report", "how the candidate judged the live model's frames")
    command("promote", "serve the candidate as the live model (atomic swap)")
    command("discard", "drop the candidate (prints its last report)")
    command("rollback", "serve the model that served before the current one")
    command("history", "the models kept for rollback, newest first")


def request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    """(method, path, JSON body) of the command's call."""
    base = f"/v1/models/{urllib.parse.quote(args.model, safe='')}"
    if args.action == "candidate":
        body: dict[str, Any] = {"path": str(Path(args.path).absolute())}
        if args.card is not None:
            body["card"] = str(Path(args.card).absolute())
        return "POST", f"{base}/candidate", body
    return {
        "candidate-report": ("GET", f"{base}/candidate", None),
        "promote": ("POST", f"{base}/candidate/promote", None),
        "discard": ("DELETE", f"{base}/candidate", None),
        "rollback": ("POST", f"{base}/rollback", None),
        "history": ("GET", f"{base}/history", None),
    }[args.action]


def run(args: argparse.Namespace) -> int:
    method, path, body = request(args)
    headers = {"accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    token = os.environ.get(TOKEN_ENV)
    if token:
        headers["authorization"] = f"Bearer {token}"
    call = urllib.request.Request(args.url.rstrip("/") + path, data, headers, method=method)
    try:
        with urllib.request.urlopen(call, timeout=args.timeout) as response:
            answer = json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("detail", exc.reason)
        except (ValueError, AttributeError):
            detail = exc.reason
        return fail(f"HTTP {exc.code}: {detail}")
    except (urllib.error.URLError, OSError) as exc:
        return fail(f"cannot reach the service at {args.url}: {exc}")
    print(json.dumps(answer, indent=2))
    return 0
