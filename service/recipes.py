"""Recipes: named sets of (model, thresholds) per camera, for lines that change product.

A PLC (MQTT `<prefix>/<line>/recipe`) or an engineer (`PUT /v1/recipe`) selects one by name;
every camera the recipe names moves to its model (`InferStage.move`: nothing lost, order kept)
and each model gets the recipe's thresholds. A recipe that is unknown, or that cannot be
applied, is refused and the line keeps the current one. Every verdict carries the recipe it
was judged under.

This module holds the configuration and the pure planning; `service.control` applies a plan.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from service.inference.card import ThresholdSpec

RecipeName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class RecipeCamera(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Name of a loaded model (its card `name` or file stem).")
    thresholds: ThresholdSpec | None = Field(
        None, description="The model's thresholds under this recipe; unset: leave them as they are."
    )


class RecipeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: RecipeName = Field(description="What the PLC sends to select it.")
    cameras: dict[str, RecipeCamera] = Field(
        min_length=1, description="Camera name -> its model and thresholds under this recipe."
    )


class RecipeError(ValueError):
    """A recipe cannot be selected; the message says why (the line keeps the current one)."""


class UnknownRecipeError(RecipeError):
    """No recipe of that name."""


class NoLineError(RuntimeError):
    """Recipes switch cameras: without a running line there is nothing to switch."""


@dataclass(frozen=True)
class Plan:
    """What selecting a recipe changes."""

    recipe: str
    moves: dict[str, str] = field(default_factory=dict)  # camera -> model it moves to
    thresholds: dict[str, ThresholdSpec] = field(default_factory=dict)  # model -> thresholds


def check(recipes: Iterable[RecipeConfig], cameras: Iterable[str]) -> list[str]:
    """Problems in the recipes themselves (names, cameras, conflicting thresholds); the model
    names are checked when the models are loaded (`plan`)."""
    known, problems, seen = set(cameras), [], set[str]()
    for r in recipes:
        if r.name in seen:
            problems.append(f"two recipes are named {r.name!r}")
        seen.add(r.name)
        unknown = sorted(set(r.cameras) - known)
        if unknown:
            problems.append(f"recipe {r.name}: unknown cameras {unknown}; cameras: {sorted(known)}")
        given: dict[str, ThresholdSpec] = {}
        for cam in r.cameras.values():
            if cam.thresholds is None:
                continue
            if cam.model in given and given[cam.model] != cam.thresholds:
                problems.append(
                    f"recipe {r.name}: model {cam.model} is given two threshold sets "
                    "(thresholds belong to a model: cameras sharing it share them)"
                )
            given[cam.model] = cam.thresholds
    return problems


def plan(
    name: str,
    recipes: Mapping[str, RecipeConfig],
    routing: Mapping[str, str],  # camera -> the model it uses now
    models: Iterable[str],  # the loaded models
) -> Plan:
    """What selecting `name` changes; RecipeError when it is unknown or names what is not
    loaded."""
    recipe = recipes.get(name)
    if recipe is None:
        raise UnknownRecipeError(f"no recipe named {name!r}; recipes: {sorted(recipes)}")
    loaded = set(models)
    missing = sorted({c.model for c in recipe.cameras.values()} - loaded)
    if missing:
        raise RecipeError(f"recipe {name} names models that are not loaded: {missing}")
    absent = sorted(set(recipe.cameras) - set(routing))
    if absent:
        raise RecipeError(f"recipe {name} names cameras that are not running: {absent}")
    moves = {c: r.model for c, r in recipe.cameras.items() if routing[c] != r.model}
    thresholds = {r.model: r.thresholds for r in recipe.cameras.values() if r.thresholds}
    return Plan(name, moves, thresholds)


def selection(payload: bytes) -> tuple[str, str | None]:
    """(recipe name, request id) from an MQTT `…/recipe` message: `{"recipe": "...",
    "request_id": "..."}` or the bare name. RecipeError when there is no name."""
    text = payload.decode(errors="replace").strip()
    try:
        body: Any = json.loads(text)
    except ValueError:
        body = text
    if isinstance(body, dict):
        name, request = body.get("recipe"), body.get("request_id")
        request = None if request is None else str(request)[:128]
    else:
        name, request = body, None
    if not isinstance(name, str) or not name.strip():
        raise RecipeError('a recipe selection needs a name: {"recipe": "..."}')
    return name.strip()[:128], request
