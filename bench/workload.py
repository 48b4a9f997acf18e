"""What every engine is asked to do: the prompts, token counts and the agreement text.

Shared by the orchestrator and the per-engine child processes so that all engines get exactly the
same token ids (the GGUF's tokenizer and ours are the same vocabulary; ids are produced once, by our
tokenizer, and given to llama.cpp as ids).
"""

from __future__ import annotations

SYSTEM = "You are a helpful assistant."
SHORT_USER = "Write a long story about a dragon who learns to cook. Use at least 300 words."
RESET_USER = "Hi"
"""A one-token generation on this prompt precedes every measured prompt, so no engine can reuse a
cached prefix of the previous measurement (each engine gets the same treatment)."""

_PARAGRAPH = (
    "The history of cartography is the story of how people learned to draw the world. Early maps "
    "were scratched into clay and stone; later ones were painted on silk, parchment and paper. "
    "Sailors charted coasts by measuring angles to the stars, while surveyors walked the land with "
    "chains and compasses. Each new instrument, from the astrolabe to the satellite, changed what a "
    "map could show and who could make one. "
)
LONG_USER = "Summarise the following text in three sentences.\n\n" + _PARAGRAPH * 11
"""About 1,000 tokens once templated (the orchestrator reports the exact count)."""

NEW_TOKENS = 128
AGREEMENT_TEXT = (
    "The capital of France is Paris. It is known for the Eiffel Tower, the Louvre museum and its "
    "cafes. Paris lies on the river Seine in the north of the country. Many tourists visit every "
    "year to see its art, architecture and food. The city has a long history: it was a Roman town, "
    "then the seat of French kings, and later the heart of the revolution of 1789. Today it is a "
    "centre of finance, fashion and science, with universities, theatres and parks. " + _PARAGRAPH * 2
)
"""Teacher-forced text for top-1 agreement (its first 256 tokens are used)."""
AGREEMENT_POSITIONS = 256
MIXED_TEXT = (
    "Photosynthesis is the process by which green plants use sunlight to make food from carbon dioxide "
    "and water. In 1969, two astronauts walked on the Moon while a third orbited above. The recipe calls "
    "for two cups of flour, a pinch of salt and three eggs, beaten until smooth. Python is a programming "
    "language that lets you work quickly and integrate systems more effectively. def add(a, b):\n    "
    "return a + b\n\nThe stock market fell sharply on Monday as investors worried about rising interest "
    "rates. Dear Sir or Madam, I am writing to apply for the position of junior librarian advertised in "
    "your newsletter. The mitochondria is the powerhouse of the cell. "
)
AGREEMENT_TEXTS = (AGREEMENT_TEXT, MIXED_TEXT + LONG_USER[:1500])
"""Teacher-forced texts for agreement and KL divergence (the first 256 and 512 tokens): one point of
agreement over 256 positions alone is a single token, well within what near-ties decide."""
AGREEMENT_LIMITS = (AGREEMENT_POSITIONS, 512)


def messages(user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
