"""Recipes over HTTP: which recipe the line runs, and a changeover to another one (the PLC's way
is MQTT `<prefix>/<line>/recipe`; both go through `service.changeover`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from service.api.deps import ApiDep, Caller, audit
from service.api.schemas import errors
from service.recipes import NoLineError, RecipeError, UnknownRecipeError

router = APIRouter(prefix="/v1", tags=["recipes"])


class RecipeRequest(BaseModel):
    model_config = {"extra": "forbid"}

    recipe: str = Field(min_length=1, max_length=128, description="The recipe to run.")


@router.get("/recipes", summary="The configured recipes, the active one and each camera's model.")
def recipes(api: ApiDep) -> dict[str, Any]:
    return api.recipes.state()


@router.put(
    "/recipe",
    summary="Change over to another recipe: cameras move to its models (no frame lost, order "
    "kept) and models get its thresholds; an unknown recipe is refused and nothing changes.",
    responses=errors(400, 401, 403, 404, 409, 422, 503),
)
def select(api: ApiDep, body: RecipeRequest, by: Caller) -> dict[str, Any]:
    before = api.recipes.state().get("active")
    try:
        state = api.recipes.select(body.recipe, by=by)
    except UnknownRecipeError as exc:
        raise HTTPException(404, f"{exc}; the line keeps its recipe") from exc
    except NoLineError as exc:
        raise HTTPException(409, str(exc)) from exc
    except RecipeError as exc:
        detail = f"recipe {body.recipe} refused, the line keeps its recipe: {exc}"
        raise HTTPException(409, detail) from exc
    audit(api, by, "recipe.select", body.recipe, "PUT /v1/recipe",
          {"recipe": before}, {"recipe": state.get("active")})  # fmt: skip
    return state
