"""A1111's way of turning a prompt into text-encoder conditioning.

The prompt is split into weighted fragments (`parse_weighted`), tokenized, and packed into chunks of 75
tokens (a chunk that fills up breaks after its last comma when that is at most 20 tokens back; `BREAK`
ends a chunk). Each chunk becomes [start] + 75 tokens + [end], padded, and is encoded on its own; the
chunks' outputs are concatenated, so nothing is truncated. Embedding names in the prompt are replaced by
their vectors. Weights scale each token's output, then the chunk is rescaled to keep its original mean.
Clip skip N takes the output N-1 layers before the last (then the final layer norm) for SD1.x/SD2.x; SDXL
already uses the penultimate layer of both encoders and goes N-1 further back, as ComfyUI and diffusers do.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from backend.core.model_family import ModelFamily
from backend.prompts.embeddings import Embedding
from backend.prompts.parser import parse_weighted

CHUNK_LENGTH = 75
COMMA_BACKTRACK = 20  # A1111's default "comma padding backtrack"
PLACEHOLDER_TOKEN = 0  # stands where an embedding's vectors go


@dataclass
class PromptChunk:
    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    embeddings: list[tuple[int, Embedding]] = field(default_factory=list)  # (offset in tokens, embedding)


@dataclass(frozen=True)
class EncodedPrompt:
    embeds: torch.Tensor  # (1, 77 * chunks, width)
    pooled: torch.Tensor | None  # (1, width) for SDXL: the first chunk's pooled output of text encoder 2

    @property
    def chunks(self) -> int:
        return self.embeds.shape[1] // (CHUNK_LENGTH + 2)

    def padded(self, chunks: int, empty: EncodedPrompt | None) -> EncodedPrompt:
        """Lengthened to `chunks` with encoded empty chunks (see pad_to_chunks)."""
        missing = chunks - self.chunks
        if missing <= 0:
            return self
        return EncodedPrompt(torch.cat([self.embeds, empty.embeds.repeat(1, missing, 1)], dim=1), self.pooled)


@dataclass(frozen=True)
class TextEncoderSlot:
    encoder: torch.nn.Module
    pad_token: int
    vector_index: int  # which vector set of an SDXL embedding belongs to this encoder (0: CLIP-L, 1: OpenCLIP-G)
    pooled: bool  # SDXL's second encoder also gives the pooled embedding


def _final_layer_norm(encoder):
    return getattr(encoder, "final_layer_norm", None) or encoder.text_model.final_layer_norm


@contextmanager
def _vectors_in_place(encoder, replacements: list[tuple[int, int, torch.Tensor]]):
    """While encoding, put embedding vectors at (row, offset) in the token-embedding output (a forward hook,
    removed afterwards; the encoder's own weights are never touched)."""
    def hook(module, inputs, output):
        output = output.clone()
        for row, offset, vectors in replacements:
            output[row, offset:offset + vectors.shape[0]] = vectors.to(output.device, output.dtype)
        return output

    handle = encoder.get_input_embeddings().register_forward_hook(hook) if replacements else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


class PromptChunker:
    """Tokenizes prompts and packs them into 75-token chunks, with embeddings in place of their names."""

    def __init__(self, tokenizer, embeddings=(), parsed: dict[str, list] | None = None):
        """`parsed`: parse_weighted results already made for this job (text -> runs), filled in as texts come."""
        self.tokenizer = tokenizer
        self.parsed = {} if parsed is None else parsed
        self.start_token = tokenizer.bos_token_id
        self.end_token = tokenizer.eos_token_id
        self.comma_token = tokenizer.convert_tokens_to_ids(",</w>")
        self.embeddings = {}  # first token id -> [(token ids, embedding)], longest name first
        for embedding in embeddings:
            ids = tuple(self.tokenize(embedding.name))
            if ids:
                self.embeddings.setdefault(ids[0], []).append((ids, embedding))
        for candidates in self.embeddings.values():
            candidates.sort(key=lambda item: -len(item[0]))
        self.used_embeddings: dict[str, Embedding] = {}

    def tokenize(self, text: str) -> list[int]:
        # The tokenizers backend directly: the transformers wrapper warns about prompts longer than 77 tokens,
        # which are chunked here.
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            return backend.encode(text, add_special_tokens=False).ids
        return self.tokenizer.convert_tokens_to_ids(self.tokenizer.tokenize(text))

    def chunks(self, text: str) -> list[PromptChunk]:
        chunks: list[PromptChunk] = []
        chunk = PromptChunk()
        last_comma = -1

        def close_chunk():
            nonlocal chunk, last_comma
            chunks.append(chunk)
            chunk, last_comma = PromptChunk(), -1

        for fragment, weight in self.weighted(text):
            if fragment == "BREAK" and weight == -1:
                close_chunk()
                continue
            tokens, position = self.tokenize(fragment), 0
            while position < len(tokens):
                token = tokens[position]
                if token == self.comma_token:
                    last_comma = len(chunk.tokens)
                elif (len(chunk.tokens) == CHUNK_LENGTH and last_comma != -1
                      and len(chunk.tokens) - last_comma <= COMMA_BACKTRACK):
                    # Move the words after the last comma to the next chunk rather than split a phrase.
                    cut = last_comma + 1
                    moved = PromptChunk(chunk.tokens[cut:], chunk.weights[cut:],
                                        [(offset - cut, e) for offset, e in chunk.embeddings if offset >= cut])
                    chunk.tokens, chunk.weights = chunk.tokens[:cut], chunk.weights[:cut]
                    chunk.embeddings = [(offset, e) for offset, e in chunk.embeddings if offset < cut]
                    close_chunk()
                    chunk = moved
                if len(chunk.tokens) == CHUNK_LENGTH:
                    close_chunk()
                embedding, name_length = self._embedding_at(tokens, position)
                if embedding is None:
                    chunk.tokens.append(token)
                    chunk.weights.append(weight)
                    position += 1
                    continue
                if len(chunk.tokens) + embedding.length > CHUNK_LENGTH:
                    close_chunk()
                chunk.embeddings.append((len(chunk.tokens), embedding))
                chunk.tokens += [PLACEHOLDER_TOKEN] * embedding.length
                chunk.weights += [weight] * embedding.length
                self.used_embeddings[embedding.name] = embedding
                position += name_length
        if chunk.tokens or not chunks:
            chunks.append(chunk)
        return chunks

    def weighted(self, text: str) -> list[tuple[str, float]]:
        """parse_weighted(text), once per text: alternation makes one prompt per step, most of them alike."""
        if text not in self.parsed:
            self.parsed[text] = parse_weighted(text)
        return self.parsed[text]

    def _embedding_at(self, tokens: list[int], position: int) -> tuple[Embedding | None, int]:
        for ids, embedding in self.embeddings.get(tokens[position], ()):
            if tuple(tokens[position:position + len(ids)]) == ids:
                return embedding, len(ids)
        return None, 0

    def token_count(self, text: str) -> int:
        """Tokens the prompt uses, counting every closed chunk (BREAK, overflow) as a full 75."""
        chunks = self.chunks(text)
        return CHUNK_LENGTH * (len(chunks) - 1) + len(chunks[-1].tokens)

    def lengths(self, text: str) -> tuple[int, int]:
        """(tokens used, the limit shown beside it): A1111's `used/75` counter, growing by whole chunks."""
        used = self.token_count(text)
        return used, max(CHUNK_LENGTH, -(-used // CHUNK_LENGTH) * CHUNK_LENGTH)


class PromptEncoder:
    """Encodes prompts for one loaded model with one clip skip and the embeddings usable with it."""

    def __init__(self, pipeline, family: ModelFamily, clip_skip: int = 1, embeddings: list[Embedding] = (),
                 parsed: dict[str, list] | None = None, pool_every_encoder: bool = False):
        """`pool_every_encoder`: every encoder gives a pooled vector, joined (SD3's CLIP-L + CLIP-G; Flux's CLIP-L)
        instead of SDXL's second encoder alone."""
        tokenizer = pipeline.tokenizer if getattr(pipeline, "tokenizer", None) is not None else pipeline.tokenizer_2
        self.sdxl = family.startswith("sdxl")
        self.slots = []
        if getattr(pipeline, "text_encoder", None) is not None:
            self.slots.append(TextEncoderSlot(pipeline.text_encoder, pipeline.tokenizer.pad_token_id, 0,
                                              pool_every_encoder))
        if getattr(pipeline, "text_encoder_2", None) is not None:
            self.slots.append(TextEncoderSlot(pipeline.text_encoder_2, pipeline.tokenizer_2.pad_token_id,
                                              len(self.slots), True))
        self.clip_skip = clip_skip
        widths = tuple(slot.encoder.config.hidden_size for slot in self.slots)
        self.chunker = PromptChunker(tokenizer, [e for e in embeddings if self.fits(e, widths)], parsed)

    @property
    def embeddings(self):
        return self.chunker.embeddings

    @property
    def used_embeddings(self) -> dict[str, Embedding]:
        return self.chunker.used_embeddings

    def tokenize(self, text: str) -> list[int]:
        return self.chunker.tokenize(text)

    @staticmethod
    def fits(embedding: Embedding, widths: tuple[int, ...]) -> bool:
        if len(embedding.vectors) == 2 and len(widths) == 2:
            return embedding.widths == widths
        if len(widths) == 1 and len(embedding.vectors) == 2:  # SDXL refiner: OpenCLIP-G only
            return embedding.widths[1] == widths[0]
        return len(embedding.vectors) == 1 and embedding.widths[0] == widths[0] and len(widths) == 1

    def clip_skip_usable(self) -> int:
        """The clip skip that can be honoured with the shallowest text encoder (tiny test models have 2 layers)."""
        layers = min(slot.encoder.config.num_hidden_layers for slot in self.slots)
        deepest = layers - 1 if self.sdxl else layers
        return max(1, min(self.clip_skip, deepest))

    @torch.no_grad()
    def encode(self, text: str) -> EncodedPrompt:
        chunks = self.chunker.chunks(text)
        outputs, pooled = [], []
        for slot in self.slots:
            ids = torch.tensor([self._padded_ids(chunk, slot.pad_token) for chunk in chunks])
            weights = torch.tensor([[1.0] + chunk.weights + [1.0] * (CHUNK_LENGTH + 1 - len(chunk.weights))
                                    for chunk in chunks])
            replacements = [(row, offset + 1, embedding.vectors[slot.vector_index if len(embedding.vectors) > 1 else 0])
                            for row, chunk in enumerate(chunks) for offset, embedding in chunk.embeddings]
            device = slot.encoder.device
            with _vectors_in_place(slot.encoder, replacements):
                result = slot.encoder(ids.to(device), output_hidden_states=True)
            hidden = self._hidden(slot.encoder, result)
            outputs.append(_apply_weights(hidden, weights.to(hidden.device, hidden.dtype)))
            if slot.pooled:  # the projection when the encoder has one (SDXL, SD3), else CLIP's pooler output (Flux)
                vector = getattr(result, "text_embeds", None)
                pooled.append((vector if vector is not None else result.pooler_output)[:1])
        embeds = torch.cat(outputs, dim=-1)  # SDXL: CLIP-L and OpenCLIP-G features side by side
        return EncodedPrompt(embeds.reshape(1, -1, embeds.shape[-1]), torch.cat(pooled, dim=-1) if pooled else None)

    def _padded_ids(self, chunk: PromptChunk, pad_token: int) -> list[int]:
        fill = CHUNK_LENGTH - len(chunk.tokens)
        return [self.chunker.start_token, *chunk.tokens, self.chunker.end_token] + [pad_token] * fill

    def _hidden(self, encoder, result) -> torch.Tensor:
        skip = self.clip_skip_usable()
        if self.sdxl:
            return result.hidden_states[-(1 + skip)]
        if skip == 1:
            return result.last_hidden_state
        return _final_layer_norm(encoder)(result.hidden_states[-skip])


def _apply_weights(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's original emphasis: scale each token's vector, then restore each chunk's mean."""
    if bool((weights == 1).all()):
        return hidden
    original_mean = hidden.mean(dim=(1, 2), keepdim=True)
    scaled = hidden * weights.unsqueeze(-1)
    scaled_mean = scaled.mean(dim=(1, 2), keepdim=True)
    # An encoder whose output has (almost) zero mean, like an untrained one's layer norm, has no mean to keep.
    meaningful = scaled_mean.abs() > 1e-4 * hidden.abs().mean(dim=(1, 2), keepdim=True)
    return scaled * torch.where(meaningful, original_mean / scaled_mean, torch.ones_like(scaled_mean))


def pad_to_chunks(encoded: EncodedPrompt, chunks: int, empty: EncodedPrompt | None) -> EncodedPrompt:
    """Lengthen a shorter conditioning with encoded empty chunks, so prompt and negative prompt (and every
    scheduled prompt) line up, as A1111 does."""
    return encoded.padded(chunks, empty)
