"""Recipe planning and parsing: pure functions, table-tested."""

from __future__ import annotations

import pytest

from service.inference.card import ThresholdSpec
from service.recipes import RecipeConfig, RecipeError, check, plan, selection

BRACKET = RecipeConfig.model_validate(
    {
        "name": "bracket-a",
        "cameras": {
            "cam1": {"model": "det-a", "thresholds": {"default": 0.4}},
            "cam2": {"model": "det-a", "thresholds": {"default": 0.4}},
        },
    }
)
PLATE = RecipeConfig.model_validate(
    {"name": "plate", "cameras": {"cam1": {"model": "det-b"}, "cam2": {"model": "det-a"}}}
)
BOOK = {r.name: r for r in (BRACKET, PLATE)}
ROUTING = {"cam1": "det-a", "cam2": "det-a"}


def test_plan_moves_only_what_changes_and_sets_thresholds() -> None:
    p = plan("plate", BOOK, ROUTING, ["det-a", "det-b"])
    assert (p.recipe, p.moves, p.thresholds) == ("plate", {"cam1": "det-b"}, {})
    p = plan("bracket-a", BOOK, {"cam1": "det-b", "cam2": "det-a"}, ["det-a", "det-b"])
    assert p.moves == {"cam1": "det-a"} and p.thresholds == {"det-a": ThresholdSpec(default=0.4)}


@pytest.mark.parametrize(
    ("name", "models", "routing", "message"),
    [
        ("nope", ["det-a", "det-b"], ROUTING, "no recipe named 'nope'; recipes: \\['bracket-a'"),
        ("plate", ["det-a"], ROUTING, "not loaded: \\['det-b'\\]"),
        ("plate", ["det-a", "det-b"], {"cam2": "det-a"}, "not running: \\['cam1'\\]"),
    ],
)
def test_plan_refuses_what_cannot_be_applied(
    name: str, models: list[str], routing: dict[str, str], message: str
) -> None:
    with pytest.raises(RecipeError, match=message):
        plan(name, BOOK, routing, models)


def test_check_finds_unknown_cameras_duplicates_and_conflicting_thresholds() -> None:
    conflict = RecipeConfig.model_validate(
        {
            "name": "plate",
            "cameras": {
                "cam1": {"model": "det-a", "thresholds": {"default": 0.4}},
                "cam9": {"model": "det-a", "thresholds": {"default": 0.6}},
            },
        }
    )
    problems = check([BRACKET, PLATE, conflict], ["cam1", "cam2"])
    assert problems == [
        "two recipes are named 'plate'",
        "recipe plate: unknown cameras ['cam9']; cameras: ['cam1', 'cam2']",
        "recipe plate: model det-a is given two threshold sets (thresholds belong to a model: "
        "cameras sharing it share them)",
    ]
    assert check([BRACKET, PLATE], ["cam1", "cam2"]) == []


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"recipe": "plate", "request_id": "r-1"}', ("plate", "r-1")),
        (b'{"recipe": "plate"}', ("plate", None)),
        (b"plate", ("plate", None)),
        (b'"plate"', ("plate", None)),
    ],
)
def test_selection_parses_json_or_a_bare_name(
    payload: bytes, expected: tuple[str, str | None]
) -> None:
    assert selection(payload) == expected


@pytest.mark.parametrize("payload", [b"", b"{}", b'{"recipe": 3}', b'{"recipe": "  "}', b"[1]"])
def test_selection_without_a_name_is_refused(payload: bytes) -> None:
    with pytest.raises(RecipeError, match="needs a name"):
        selection(payload)


def test_recipe_names_are_topic_and_url_safe() -> None:
    with pytest.raises(ValueError, match="pattern"):
        RecipeConfig.model_validate({"name": "a/b", "cameras": {"cam1": {"model": "m"}}})
