"""Prompts of the generate stage: the keyword sampler's context around the character's trigger."""

from __future__ import annotations

import random
import string

from common.core.errors import ConfigError
from common.core.keywords import draw, load_keywords
from common.core.settings import Settings


def template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def check_template(settings: Settings) -> None:
    """Every placeholder of ``generate.prompt_template`` must be ``trigger`` or a context axis of
    the keyword file; ``{trigger}`` must be there (the LoRA only answers to its token)."""
    template = settings.generate.prompt_template
    axes = set(load_keywords(settings.pairing.keywords_file).context)
    try:
        needed = template_fields(template)
    except ValueError as exc:
        raise ConfigError(f"generate.prompt_template (SYNTHPIPE_GENERATE__PROMPT_TEMPLATE): {exc}") from None
    unknown = sorted(needed - axes - {"trigger"})
    if unknown or "trigger" not in needed:
        why = f"no axis {', '.join(map(repr, unknown))} in the keyword file" if unknown else "{trigger} is missing"
        raise ConfigError(f"generate.prompt_template (SYNTHPIPE_GENERATE__PROMPT_TEMPLATE): {why}")


def draw_prompt(settings: Settings, trigger: str, rng: random.Random) -> tuple[str, dict[str, str]]:
    """One prompt and the keywords drawn for it (one value per context axis the template uses)."""
    template = settings.generate.prompt_template
    context = load_keywords(settings.pairing.keywords_file).context
    used = {axis: context[axis] for axis in sorted(template_fields(template) - {"trigger"})}
    keywords = draw(used, rng)
    return template.format(trigger=trigger, **keywords), keywords
