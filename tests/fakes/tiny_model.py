"""A tiny Llama model as a complete onnx-community repo folder, built in a fraction of a second.

``build_tiny_repo`` writes ``config.json``, ``generation_config.json``, ``tokenizer.json`` (byte-level
BPE trained on a few sentences), ``tokenizer_config.json`` (ChatML template), ``special_tokens_map.json``
and ``onnx/model*.onnx`` per quantization, with the same graph builder the GGUF importer uses.

Two kinds of weights:
- random (default): large init (std 0.2) so greedy output varies; ``tests.fakes.reference`` computes
  the expected logits from ``TinyModel.weights``.
- ``reply="..."``: weights chosen so that the greedy continuation of any prompt ending in the ChatML
  assistant header (``<|im_start|>assistant\\n``) is exactly ``reply`` followed by ``<|im_end|>``.
  Attention and MLP outputs are zeroed (o_proj/down_proj = 0), so the last hidden state is the last
  token's embedding; chain tokens get orthonormal embeddings and the lm_head maps each to its successor.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from agent.convert.llama_graph import Quant, write_llama_onnx
from agent.convert.llama_shape import LlamaShape
from agent.convert.repo_files import TokenizerSpec, write_model_configs, write_tokenizer_files

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
ENDOFTEXT_ID, IM_START_ID, IM_END_ID = 0, 1, 2
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ASSISTANT_HEADER = "<|im_start|>assistant\n"
CORPUS = (
    "The capital of France is Paris.",
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! How are you today? I am fine, thank you.",
    "You are a helpful assistant. Answer the question briefly.",
    "system user assistant: what is the weather like in Berlin, London and Tokyo?",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024.",
    "Once upon a time there was a small model that could count to ten.",
    "Python, Rust and C are programming languages; JSON is a data format.",
    "def main():\n    print('hello')\n    return 0\n",
    "Ünïcödé text, emoji 🙂 and accents: café, naïve, jalapeño.",
)
MAX_POSITIONS = 256


@dataclass
class TinyModel:
    """What a test needs to know about a built tiny repo."""

    path: Path
    shape: LlamaShape
    weights: dict[str, np.ndarray]
    tokenizer: Tokenizer
    files: dict[Quant, Path] = field(default_factory=dict)
    eos_token_id: int = IM_END_ID
    bos_token_id: int = IM_START_ID
    chat_template: str = CHAT_TEMPLATE
    reply_ids: tuple[int, ...] | None = None

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))


def train_tokenizer(vocab_size: int = 400) -> Tokenizer:
    """Byte-level BPE (GPT-2 style) over :data:`CORPUS`; round-trips any UTF-8 text."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok


def tiny_shape(vocab_size: int, *, tie_word_embeddings: bool = True, context: int = MAX_POSITIONS) -> LlamaShape:
    return LlamaShape(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        max_position_embeddings=context,
        tie_word_embeddings=tie_word_embeddings,
    )


def random_weights(shape: LlamaShape, seed: int = 0, std: float = 0.2) -> dict[str, np.ndarray]:
    """Hugging Face-named float32 weights; norms near 1 so their scale is exercised too."""
    rng = np.random.default_rng(seed)
    h, i, hd = shape.hidden_size, shape.intermediate_size, shape.head_dim

    def normal(*dims: int) -> np.ndarray:
        return (rng.standard_normal(dims) * std).astype(np.float32)

    def norm() -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(h)).astype(np.float32)

    w = {"model.embed_tokens.weight": normal(shape.vocab_size, h)}
    for n in range(shape.num_layers):
        p = f"model.layers.{n}"
        w[f"{p}.input_layernorm.weight"] = norm()
        w[f"{p}.self_attn.q_proj.weight"] = normal(shape.num_heads * hd, h)
        w[f"{p}.self_attn.k_proj.weight"] = normal(shape.num_kv_heads * hd, h)
        w[f"{p}.self_attn.v_proj.weight"] = normal(shape.num_kv_heads * hd, h)
        w[f"{p}.self_attn.o_proj.weight"] = normal(h, shape.num_heads * hd)
        w[f"{p}.post_attention_layernorm.weight"] = norm()
        w[f"{p}.mlp.gate_proj.weight"] = normal(i, h)
        w[f"{p}.mlp.up_proj.weight"] = normal(i, h)
        w[f"{p}.mlp.down_proj.weight"] = normal(h, i)
    w["model.norm.weight"] = norm()
    if not shape.tie_word_embeddings:
        w["lm_head.weight"] = normal(shape.vocab_size, h)
    return w


def scripted_weights(shape: LlamaShape, chain: Sequence[int], seed: int = 0) -> dict[str, np.ndarray]:
    """Weights whose greedy next token after ``chain[j]`` is ``chain[j+1]``, whatever came before."""
    sources = list(chain[:-1])
    if len(set(sources)) != len(sources):
        raise ValueError("a scripted reply may not repeat a token (nor contain the header's last token)")
    if len(sources) > shape.hidden_size:
        raise ValueError(f"a scripted reply can have at most {shape.hidden_size - 1} tokens")
    w = random_weights(shape, seed)
    rng = np.random.default_rng(seed + 1)
    basis = np.linalg.qr(rng.standard_normal((shape.hidden_size, shape.hidden_size)))[0].T
    embed = w["model.embed_tokens.weight"]
    head = (rng.standard_normal(embed.shape) * 0.01).astype(np.float32)
    for j, (src, dst) in enumerate(itertools.pairwise(chain)):
        embed[src] = basis[j]
        head[dst] += 10.0 * basis[j]
    for n in range(shape.num_layers):
        w[f"model.layers.{n}.self_attn.o_proj.weight"][:] = 0.0
        w[f"model.layers.{n}.mlp.down_proj.weight"][:] = 0.0
    w["model.norm.weight"][:] = 1.0
    w["lm_head.weight"] = head
    return w


def build_tiny_repo(
    dest: Path,
    quants: Sequence[Quant] = ("fp32",),
    seed: int = 0,
    *,
    reply: str | None = None,
    tie_word_embeddings: bool | None = None,
    context: int = MAX_POSITIONS,
) -> TinyModel:
    """Write the repo folder at ``dest`` (created if needed) and describe it.

    ``reply``: build the scripted model (untied lm_head) whose greedy answer to any ChatML prompt is
    ``reply`` then ``<|im_end|>``; ``TinyModel.reply_ids`` holds the expected ids (without eos).
    ``context``: the model's context length (agent clients send prompts of thousands of tokens).
    """
    dest = Path(dest)
    tokenizer = train_tokenizer()
    vocab = tokenizer.get_vocab_size()
    reply_ids: tuple[int, ...] | None = None
    if reply is None:
        shape = tiny_shape(vocab, tie_word_embeddings=True if tie_word_embeddings is None else tie_word_embeddings,
                           context=context)
        weights = random_weights(shape, seed)
    else:
        if tie_word_embeddings:
            raise ValueError("the scripted model needs an untied lm_head")
        shape = tiny_shape(vocab, tie_word_embeddings=False, context=context)
        reply_ids = tuple(tokenizer.encode(reply, add_special_tokens=False).ids)
        trigger = tokenizer.encode(ASSISTANT_HEADER, add_special_tokens=False).ids[-1]
        weights = scripted_weights(shape, [trigger, *reply_ids, IM_END_ID], seed)

    write_model_configs(dest, shape, bos_token_id=IM_START_ID, eos_token_id=IM_END_ID, pad_token_id=IM_END_ID)
    spec = TokenizerSpec(
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        add_bos_token=False,
        chat_template=CHAT_TEMPLATE,
        model_max_length=context,
    )
    write_tokenizer_files(dest, tokenizer, spec)
    files = {q: write_llama_onnx(shape, weights, dest, q) for q in quants}
    return TinyModel(dest, shape, weights, tokenizer, files, reply_ids=reply_ids)
