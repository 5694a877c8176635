"""Schemas shared between stages: the analysis a VL model must write, and job payloads.

Every string and list is bounded so that a schema-constrained generation always ends within a
known number of tokens, even from a model with random weights. Change a schema → bump its
version; the version is recorded on every analysis.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = "1"

Short = Annotated[str, Field(min_length=1, max_length=32)]
Phrase = Annotated[str, Field(min_length=1, max_length=64)]
Prompt = Annotated[str, Field(min_length=8, max_length=160)]
Feasibility = Literal["high", "medium", "low"]
FEASIBILITY_RANK = {"low": 0, "medium": 1, "high": 2}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Person(Strict):
    body: Short = Field(description="build and proportions as visible")
    pose: Short
    current_clothing: list[Short] = Field(min_length=1, max_length=3)
    visible_constraints: list[Short] = Field(max_length=3, description="occlusions, crops, props")


class Garment(Strict):
    category: Literal["top", "bottom", "dress", "outerwear", "footwear", "accessory", "other"]
    colour: Short
    pattern: Short
    material: Short
    fit: Short


class EditCore(Strict):
    """What every recipe ends in: ordered instructions, one prompt, and scores.

    Recipe models list their own observations first and these fields last, so a model writes
    what it sees before the prompt and the scores that depend on it.
    """

    edit_instructions: list[Phrase] = Field(min_length=1, max_length=4)
    edit_prompt: Prompt = Field(description="one instruction for an instruction-edit model")
    negative_prompt: Phrase | None = None
    confidence: float = Field(ge=0, le=1)
    feasibility: Feasibility
    notes: Phrase


class TryOnObservations(Strict):
    person: Person
    garments: list[Garment] = Field(min_length=1, max_length=3)
    transitions: list[Phrase] = Field(min_length=1, max_length=3, description="what changes, item by item")


class TryOnAnalysis(EditCore, TryOnObservations):
    """A person photo + garment photo(s): dress the person in the garments."""


class Character(Strict):
    description: Phrase
    distinctive_features: list[Short] = Field(min_length=1, max_length=3)
    pose: Short


class Variation(Strict):
    background: Phrase
    lighting: Phrase
    art_style: Phrase
    camera_angle: Phrase


class EnrichObservations(Strict):
    character: Character
    variation: Variation
    identity_constraints: list[Phrase] = Field(min_length=1, max_length=3, description="what must not change")


class EnrichAnalysis(EditCore, EnrichObservations):
    """One character photo: a variation that must keep the character's identity."""


#: a judge's rating: 0 (worst) to 10 (best); an enum, so constrained decoding stays in range
Rating = Literal[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
JUDGE_SCHEMA_VERSION = "1"


class JudgeVerdict(Strict):
    """A VLM judge's verdict on one edit (VIEScore-style criteria). Higher is better on every
    scale: ``over_editing`` 10 means nothing was changed beyond the instruction, ``artifacts``
    10 means none are visible."""

    reasons: list[Phrase] = Field(min_length=1, max_length=3, description="what the ratings rest on")
    instruction_followed: Rating
    over_editing: Rating
    naturalness: Rating
    artifacts: Rating
    identity_kept: Rating
    garment_match: Rating

    def combined(self) -> dict[str, float]:
        """The ratings as metrics, plus VIEScore's SC = min(success, over-editing),
        PQ = min(naturalness, artifacts) and overall = sqrt(SC * PQ), all on 0-10."""
        sc = min(self.instruction_followed, self.over_editing)
        pq = min(self.naturalness, self.artifacts)
        return {
            "judge_instruction": float(self.instruction_followed), "judge_over_editing": float(self.over_editing),
            "judge_naturalness": float(self.naturalness), "judge_artifacts": float(self.artifacts),
            "judge_identity": float(self.identity_kept), "judge_garment": float(self.garment_match),
            "judge_sc": float(sc), "judge_pq": float(pq), "judge_overall": round(float((sc * pq) ** 0.5), 4),
        }


ANALYSIS_MODELS: dict[str, type[EditCore]] = {"tryon": TryOnAnalysis, "enrich": EnrichAnalysis}


def analysis_model(recipe: str) -> type[EditCore]:
    try:
        return ANALYSIS_MODELS[recipe]
    except KeyError:
        raise ValueError(f"unknown recipe {recipe!r} (allowed: {', '.join(ANALYSIS_MODELS)})") from None


def analysis_json_schema(recipe: str) -> dict[str, Any]:
    """The JSON schema generation is constrained to (fields in declaration order)."""
    return analysis_model(recipe).model_json_schema()
