"""A tiny model that decides to call a tool, for the real-agent tests (AI SDK, OpenCode).

``build_tool_repo`` writes an onnx-community style folder (like ``tests.fakes.tiny_model``) whose chat
template is Hermes/Qwen-style: tools are listed in the system turn between ``<tools>`` and
``</tools>``, calls are ``<tool_call>{json}</tool_call>`` and tool results come back inside
``<tool_response>`` … ``</tool_response>``. Its greedy answer to any conversation is one of three:

- tools offered, no tool result seen yet: :data:`CALL_TEXT`, a call of the ``write`` tool (OpenCode's
  own, ``{"content", "filePath"}``) with fixed arguments;
- a tool result seen (turn two of an agent loop): :data:`RESULT_TEXT`;
- no tools offered: :data:`PLAIN_TEXT`;

then ``<|im_end|>``. How the weights decide: every embedding carries a constant "bias" coordinate;
``<tools>`` and ``<tool_response>`` are the only tokens with a coordinate of their own. In layer 0 one
attention head per marker queries with the bias coordinate and keys on the marker's, so from any
position it attends (almost) only to that marker wherever it is in the prompt, and writes "marker
seen" into a feature coordinate of the residual stream; with the marker absent its values are zero.
RoPE is made harmless by a huge ``rope_theta`` (the lowest frequency turns less than 0.2 rad over the
whole context). Everything else is the scripted chain of ``tiny_model.scripted_weights``: attention and
MLP outputs otherwise zero, orthonormal embeddings for the chain's tokens, and a head mapping each to
its successor; the first token after the assistant header is chosen by the two features. Each text is
a short list of added tokens (non-special, like Qwen's ``<tool_call>``), so no token repeats in a
chain. The server's constraint may change what such a model writes; these texts are what it writes
unconstrained, and what a grammar that allows them leaves it to write: the call's chunks are cut where
the grammar forces text (see :data:`CALL_CHUNKS`). Where a grammar leaves no chain token allowed (a
JSON schema's values), a weak bias picks the shortest valid JSON (:data:`FALLBACK`: ``""``, ``0``...),
so structured output ends instead of running to the token limit.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Tokenizer

from agent.convert.llama_graph import Quant, write_llama_onnx
from agent.convert.llama_shape import LlamaShape
from agent.convert.repo_files import TokenizerSpec, write_model_configs, write_tokenizer_files
from tests.fakes.tiny_model import ASSISTANT_HEADER, IM_END_ID, IM_START_ID, train_tokenizer

TOOLS_MARKER = "<tools>"
RESULT_MARKER = "<tool_response>"
WRITE_ARGUMENTS = {"content": "hello from hflocal", "filePath": "hello.txt"}
"""The arguments of the ``write`` call, in the order of OpenCode's schema (content, then filePath)."""
CALL_CHUNKS = (
    "<tool_call>",
    '\n{"name": "write", "arguments": ',
    '{"content": "',
    "hello from hflocal",
    '", "filePath": "',
    "hello.txt",
    '"}',
    "}\n</tool_call>",
)
"""Cut where the server's grammar may take over: it forces (fast-forwards) what the schema leaves no
choice about (the tool's name, a required key and its quotes), tokenized by llguidance; each forced
run ends on a chunk boundary, so the last forced token is still a chunk the chain knows, and the
free parts (the two string values) are single chunks the model picks itself."""
RESULT_CHUNKS = ("Done: ", "hello.txt is written.")
PLAIN_CHUNKS = ("Hello! ", "I am a tiny test model.")
CALL_TEXT = "".join(CALL_CHUNKS)
RESULT_TEXT = "".join(RESULT_CHUNKS)
PLAIN_TEXT = "".join(PLAIN_CHUNKS)
MARKUP_TOKENS = ("<tools>", "</tools>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
CONTEXT = 32768
"""Positions: OpenCode's system prompt and ten tool schemas are ~15k tokens of this small vocabulary."""

CHAT_TEMPLATE = (
    "{%- set sys = messages[0]['content'] if messages and messages[0]['role'] == 'system' else none %}"
    "{%- if tools %}"
    "<|im_start|>system\n{% if sys %}{{ sys }}\n\n{% endif %}# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
    "{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    "{%- elif sys %}<|im_start|>system\n{{ sys }}<|im_end|>\n{% endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}"
    "{%- if not loop.first %}<|im_start|>system\n{{ message['content'] }}<|im_end|>\n{% endif %}"
    "{%- elif message['role'] == 'tool' %}"
    "<|im_start|>user\n<tool_response>\n{{ message['content'] }}\n</tool_response><|im_end|>\n"
    "{%- elif message['role'] == 'assistant' %}"
    "<|im_start|>assistant\n{{ message['content'] or '' }}"
    "{%- for call in message['tool_calls'] or [] %}"
    '<tool_call>\n{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}'
    "\n</tool_call>{% endfor %}<|im_end|>\n"
    "{%- else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Residual-stream coordinates with a meaning; the rest hold the chain tokens' embeddings.
BIAS, TOOLS_IN, RESULT_IN, TOOLS_SEEN, RESULT_SEEN = range(5)
FIRST_FREE = 5
ROPE_THETA = 1e9
SCORE = 30.0
"""Attention logit on a marker (vs 0 elsewhere): e^30 outweighs any number of other positions."""
CHAIN_GAIN, FEATURE_GAIN, THRESHOLD = 10.0, 4.0, 2.0
FALLBACK, FALLBACK_GAIN = ('"', "0", "]", "}", ","), 1.0
"""Single-byte tokens a constrained answer falls back to, best first (see ``tool_weights``)."""


@dataclass
class ToolModel:
    """What a test needs to know about a built tool model."""

    path: Path
    shape: LlamaShape
    weights: dict[str, np.ndarray]
    tokenizer: Tokenizer
    files: dict[Quant, Path] = field(default_factory=dict)
    chat_template: str = CHAT_TEMPLATE

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def ids_of(self, chunks: Sequence[str]) -> list[int]:
        return [self.token_id(c) for c in chunks]

    def token_id(self, token: str) -> int:
        found = self.tokenizer.token_to_id(token)
        if found is None:
            raise KeyError(token)
        return int(found)


def tool_tokenizer() -> Tokenizer:
    """The tiny byte-level BPE plus the markup and every chunk of the three answers as added tokens."""
    tok = train_tokenizer()
    extra = dict.fromkeys([*MARKUP_TOKENS, *CALL_CHUNKS, *RESULT_CHUNKS, *PLAIN_CHUNKS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in extra])
    return tok


def tool_shape(vocab_size: int) -> LlamaShape:
    return LlamaShape(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=16, rms_norm_eps=1e-5, rope_theta=ROPE_THETA,
        max_position_embeddings=CONTEXT, tie_word_embeddings=False,
    )


def tool_weights(shape: LlamaShape, tok: Tokenizer, seed: int = 0) -> dict[str, np.ndarray]:
    """Hugging Face-named float32 weights implementing the decision described in the module doc."""
    h, hd, vocab = shape.hidden_size, shape.head_dim, shape.vocab_size
    rng = np.random.default_rng(seed)

    def tid(text: str) -> int:
        found = tok.token_to_id(text)
        assert found is not None, text
        return int(found)

    trigger = tok.encode(ASSISTANT_HEADER, add_special_tokens=False).ids[-1]
    chains = [[tid(c) for c in chunks] + [IM_END_ID] for chunks in (CALL_CHUNKS, RESULT_CHUNKS, PLAIN_CHUNKS)]
    sources = [trigger] + [t for chain in chains for t in chain[:-1]]
    if len(set(sources)) != len(sources) or len(sources) > h - FIRST_FREE:
        raise ValueError("chain tokens must be distinct and fit the free coordinates")

    # Embeddings: unit "content" vector + the bias coordinate, so every row has the same norm.
    embed = np.zeros((vocab, h), np.float32)
    content = rng.standard_normal((vocab, h - FIRST_FREE))
    embed[:, FIRST_FREE:] = content / np.linalg.norm(content, axis=1, keepdims=True)
    basis = np.linalg.qr(rng.standard_normal((h - FIRST_FREE, h - FIRST_FREE)))[0].T
    for j, src in enumerate(sources):
        embed[src, FIRST_FREE:] = basis[j]
    for marker, coord in ((TOOLS_MARKER, TOOLS_IN), (RESULT_MARKER, RESULT_IN)):
        embed[tid(marker), FIRST_FREE:] = 0.0
        embed[tid(marker), coord] = 1.0
    embed[:, BIAS] = 1.0

    def content(token: int) -> np.ndarray:
        row = embed[token].copy()
        row[BIAS] = 0.0
        return row

    head = (rng.standard_normal((vocab, h)) * 0.01).astype(np.float32)
    for chain in chains:
        for src, dst in itertools.pairwise(chain):
            head[dst] += CHAIN_GAIN * content(src)
    call, result, plain = (chain[0] for chain in chains)
    for first in (call, result, plain):
        head[first] += CHAIN_GAIN * content(trigger)
    head[call, TOOLS_SEEN] += FEATURE_GAIN
    head[call, RESULT_SEEN] -= FEATURE_GAIN
    head[call, BIAS] -= THRESHOLD
    head[result, RESULT_SEEN] += FEATURE_GAIN
    head[result, BIAS] -= THRESHOLD
    del plain  # wins when neither feature is on
    # Where no chain speaks (inside a JSON value a grammar opened), prefer the shortest valid JSON:
    # close the string, 0, close the array; weak next to a chain's CHAIN_GAIN, strong next to noise.
    for rank, text in enumerate(FALLBACK):
        head[tid(text), BIAS] += FALLBACK_GAIN - 0.1 * rank

    w: dict[str, np.ndarray] = {"model.embed_tokens.weight": embed, "lm_head.weight": head, "model.norm.weight": np.ones(h, np.float32)}
    norm_scale = float(np.sqrt(h / 2.0))  # RMSNorm of a row of norm sqrt(2)
    slot = hd // 2 - 1  # the lowest rotary frequency: dims slot and slot + hd/2
    for n in range(shape.num_layers):
        p = f"model.layers.{n}"
        q = np.zeros((shape.num_heads * hd, h), np.float32)
        k = np.zeros((shape.num_kv_heads * hd, h), np.float32)
        v = np.zeros((shape.num_kv_heads * hd, h), np.float32)
        o = np.zeros((h, shape.num_heads * hd), np.float32)
        if n == 0:
            gain = float(np.sqrt(SCORE * np.sqrt(hd))) / norm_scale
            for kv_head, (marker_in, seen) in enumerate(((TOOLS_IN, TOOLS_SEEN), (RESULT_IN, RESULT_SEEN))):
                q_head = kv_head * shape.kv_groups
                q[q_head * hd + slot, BIAS] = gain
                k[kv_head * hd + slot, marker_in] = gain
                v[kv_head * hd, marker_in] = 1.0 / norm_scale
                o[seen, q_head * hd] = 1.0
        w[f"{p}.input_layernorm.weight"] = np.ones(h, np.float32)
        w[f"{p}.post_attention_layernorm.weight"] = np.ones(h, np.float32)
        w[f"{p}.self_attn.q_proj.weight"] = q
        w[f"{p}.self_attn.k_proj.weight"] = k
        w[f"{p}.self_attn.v_proj.weight"] = v
        w[f"{p}.self_attn.o_proj.weight"] = o
        w[f"{p}.mlp.gate_proj.weight"] = np.zeros((shape.intermediate_size, h), np.float32)
        w[f"{p}.mlp.up_proj.weight"] = np.zeros((shape.intermediate_size, h), np.float32)
        w[f"{p}.mlp.down_proj.weight"] = np.zeros((h, shape.intermediate_size), np.float32)
    return w


def build_tool_repo(dest: Path, quants: Sequence[Quant] = ("fp32",), seed: int = 0) -> ToolModel:
    """Write the repo folder at ``dest`` (created if needed) and describe it."""
    dest = Path(dest)
    tokenizer = tool_tokenizer()
    shape = tool_shape(tokenizer.get_vocab_size(with_added_tokens=True))
    weights = tool_weights(shape, tokenizer, seed)
    write_model_configs(dest, shape, bos_token_id=IM_START_ID, eos_token_id=IM_END_ID, pad_token_id=IM_END_ID)
    spec = TokenizerSpec(
        eos_token="<|im_end|>", bos_token="<|im_start|>", pad_token="<|im_end|>", unk_token="<|endoftext|>",
        add_bos_token=False, chat_template=CHAT_TEMPLATE, model_max_length=CONTEXT,
    )
    write_tokenizer_files(dest, tokenizer, spec)
    files = {q: write_llama_onnx(shape, weights, dest, q) for q in quants}
    return ToolModel(dest, shape, weights, tokenizer, files)


def write_call(arguments: dict[str, str] | None = None) -> dict[str, object]:
    """The OpenAI ``tool_calls`` function object the model's call stands for."""
    return {"name": "write", "arguments": json.dumps(arguments or WRITE_ARGUMENTS)}
