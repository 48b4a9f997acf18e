"""Turning a stream of token ids into a stream of text, and cutting it at stop strings.

``IncrementalDetokenizer`` decodes a sliding window of ids with the real tokenizer and emits the
difference (the algorithm of TGI and vLLM): a word's leading space is kept because the window
starts before the word (SentencePiece decoders drop the space of the first token they see), and a
trailing U+FFFD means "a character is not complete yet", so that text is held back until the next
token completes it. The window is seeded with the last prompt tokens, so the completion text is
what the tokens add to the prompt's text. ``flush`` releases whatever is held (an incomplete
character at the very end is emitted as U+FFFD, exactly as a full decode would show it).

For valid UTF-8 the streamed text equals the full decode. For byte sequences that never form a
character the two can differ slightly: SentencePiece's ByteFallback decoder turns a whole run of
byte tokens into U+FFFD once the run is invalid, even bytes (like ``#``) already streamed as text.

``StopMatcher`` holds back the end of the text while it could be the start of a stop string; when
a stop string appears, the text before it is released and the rest dropped. With several stop
strings, the first to be completed wins, so the cut does not depend on how the text was chunked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

PROMPT_CONTEXT_TOKENS = 6
"""How many prompt tokens seed the window (enough for any word-boundary effect of a decoder)."""

Decode = Callable[[list[int]], str]


class IncrementalDetokenizer:
    """Text of generated tokens, released as soon as it is stable. Not thread-safe."""

    def __init__(self, decode: Decode, prompt_ids: Sequence[int] = ()) -> None:
        self._decode = decode
        self._ids: list[int] = [int(i) for i in prompt_ids[-PROMPT_CONTEXT_TOKENS:]] if prompt_ids else []
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def push(self, token_id: int) -> str:
        """Add a token; return the text that became stable (often ``""``)."""
        self._ids.append(int(token_id))
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return full[len(prefix) :]
        return ""

    def flush(self) -> str:
        """Release everything still held back (call once, at the end)."""
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._ids)
        return full[len(prefix) :] if len(full) > len(prefix) else ""


class StopMatcher:
    """Finds stop strings in streamed text. Empty stop strings are ignored."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = sorted({s for s in stops if s}, key=len)
        self._pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Add text; return ``(releasable text, stopped)``. After a stop, nothing more is released."""
        if not self._stops:
            return text, False
        pending = self._pending + text
        # The stop that completes first wins (then the one that starts first), as if the text had
        # arrived one character at a time: the result does not depend on how text is chunked.
        best: tuple[int, int] | None = None
        for stop in self._stops:
            at = pending.find(stop)
            if at >= 0 and (best is None or (at + len(stop), at) < best):
                best = (at + len(stop), at)
        if best is not None:
            self._pending = ""
            return pending[: best[1]], True
        hold = self._held_length(pending)
        self._pending = pending[len(pending) - hold :] if hold else ""
        return pending[: len(pending) - hold], False

    def _held_length(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins some stop string."""
        longest = min(len(text), len(self._stops[-1]) - 1)
        for size in range(longest, 0, -1):
            tail = text[-size:]
            if any(stop.startswith(tail) for stop in self._stops):
                return size
        return 0

    def flush(self) -> str:
        """Release held text (the generation ended without completing a stop string)."""
        text, self._pending = self._pending, ""
        return text
