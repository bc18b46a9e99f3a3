"""The lenses: prompt templates (a system part and a user part) and the model each step uses.

A lens is one unit of work over a source. Most make a single call; ``deep_dive`` maps one call over
every section of the article in parallel and then synthesises the notes, and ``headline`` drafts and
refines through :class:`~examples.lens_app.services.GeneratorService`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["LENSES", "Lens", "Prompt"]


@dataclass(frozen=True, slots=True)
class Prompt:
    """One chat call: ``user`` is a ``str.format`` template over the fields the step provides."""

    model: str
    system: str
    user: str
    temperature: float = 0.2
    max_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Lens:
    """A prompt template run over a source.

    ``prompt`` is the final call. ``section_prompt`` (if set) runs first, once per section, and the
    final call gets the notes as ``{notes}``; ``refine_prompt`` (if set) hands the work to the
    generator, which drafts with ``prompt`` and then improves the draft. ``with_images`` attaches
    the source's images, and the lens only applies to sources that have some.
    """

    key: str
    description: str
    prompt: Prompt
    section_prompt: Prompt | None = None
    refine_prompt: Prompt | None = None
    with_images: bool = False


_EDITOR = "You are a careful editor at a news desk. Be factual, concise and never invent numbers."

LENSES: Final[dict[str, Lens]] = {
    lens.key: lens
    for lens in (
        Lens(
            key="default_summary",
            description="three-sentence summary",
            prompt=Prompt(
                model="gpt-4o-mini",
                system=_EDITOR,
                user="Summarise this article in at most three sentences.\n\nTitle: {title}\n\n{text}",
                max_tokens=400,
            ),
        ),
        Lens(
            key="key_points",
            description="the facts a reader should remember",
            prompt=Prompt(
                model="gpt-4.1-mini",
                system=_EDITOR + " Answer with a Markdown bullet list only.",
                user=(
                    "List the five most important facts in this article, each with its number or "
                    "source where the article gives one.\n\nTitle: {title}\n\n{text}"
                ),
                max_tokens=400,
            ),
        ),
        Lens(
            key="image_description",
            description="alt text for the article's chart",
            prompt=Prompt(
                model="gpt-4o",
                system=(
                    "You write alt text for charts in news articles: what is plotted and the trend, "
                    "in two sentences."
                ),
                user="Describe the attached chart for a reader who cannot see it. The article: {title!r}.",
                max_tokens=400,
            ),
            with_images=True,
        ),
        Lens(
            key="deep_dive",
            description="per-section notes in parallel, then a synthesis",
            section_prompt=Prompt(
                model="gpt-4o-mini",
                system=_EDITOR,
                user=(
                    "Take notes on this section of the article {title!r}: its claim, its evidence and "
                    "what it leaves open.\n\n## {heading}\n\n{section}"
                ),
                max_tokens=300,
            ),
            prompt=Prompt(
                model="gpt-4o",
                system=_EDITOR + " Write for a reader who wants the reasoning, not just the conclusions.",
                user=(
                    "From these section notes, write a short analysis of the article {title!r}: its "
                    "argument, how well the evidence supports it and what a follow-up should check."
                    "\n\n{notes}"
                ),
                max_tokens=600,
            ),
        ),
        Lens(
            key="headline",
            description="drafted, then refined by the generator",
            prompt=Prompt(
                model="gpt-4.1-mini",
                system="You write headlines: specific, under twelve words, no clickbait.",
                user="Write a headline for this article.\n\n{text}",
                temperature=0.7,
            ),
            refine_prompt=Prompt(
                model="gpt-4o-mini",
                system="You are a copy chief. Return only the improved headline.",
                user=(
                    "Improve this draft headline so that it states the article's main finding with its "
                    "number.\n\nDraft: {draft}\n\nArticle title: {title}"
                ),
            ),
        ),
    )
}
