"""Everything a prompt can pull in besides the checkpoint: LoRAs (`<lora:name:weight>`), textual-inversion
embeddings (by name), an external VAE, and clip skip. `prepare` readies them for one job and undoes the
LoRAs afterwards; problems a user can make by typing (an unknown name, a LoRA for another model family, an
unbalanced bracket) become warnings shown with the result, as A1111 users expect, instead of failing the job."""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from backend.core.model_family import FLOW_FAMILIES
from backend.core.requests import MAX_PROMPT_CHARACTERS, STEPS_RANGE, RequestError
from backend.models.construction import ModelConstruction
from backend.models.hashes import HashCache
from backend.models.network_files import NetworkFolder
from backend.models.tokenizer import build_clip_tokenizer
from backend.models.vae_files import VaeLibrary
from backend.models.weight_files import CheckpointError
from backend.prompts.batch_conditioning import BatchConditioning
from backend.prompts.conditioning import PassConditioning
from backend.prompts.embeddings import EmbeddingLibrary
from backend.prompts.encoding import CHUNK_LENGTH, PromptChunker, PromptEncoder
from backend.prompts.flow_encoding import T5_LENGTH, FlowPromptEncoder, plain_text, t5_tokenizer
from backend.prompts.lora import LORA_EXTENSIONS, LoraUse, applied_loras
from backend.prompts.parser import (
    PromptSyntaxError,
    bracket_problems,
    extract_extra_networks,
    parse_weighted,
    prompt_schedule,
)

EXPLICIT_EMBEDDING = re.compile(r"\bembedding:([\w.\-]+)")
MAX_BRACKET_WARNINGS = 10  # per prompt; a pasted wall of brackets gets a count, not thousands of lines


@dataclass
class JobNetworks:
    """What one job uses: call `conditioning` for each sampling pass; `vae` is None for the model's own."""
    encoder: PromptEncoder
    prompt: str  # without <lora:...> tags
    negative_prompt: str
    vae: object | None = None
    vae_file: Path | None = None  # the file `vae` was loaded from
    warnings: list[str] = field(default_factory=list)
    parameters: dict[str, object] = field(default_factory=dict)  # infotext keys known before encoding
    ti_hash: Callable | None = None  # embedding -> its A1111 short hash
    written: tuple[str, str] = ("", "")  # the request's prompt and negative prompt as written (tags included)
    clean: Callable[[str, str], tuple[str, str]] | None = None  # an image's own prompts -> the texts to encode
    _passes: dict = field(default_factory=dict)
    _encoded: dict = field(default_factory=dict)  # text -> EncodedPrompt, shared by the job's passes
    _image_passes: dict = field(default_factory=dict)
    _image_encoder: object | None = None

    @property
    def infotext(self) -> dict[str, object]:
        """A1111's keys for what this job used; `TI hashes` lists the embeddings the encoded prompts contained."""
        used = self.encoder.used_embeddings
        return {**self.parameters,
                "TI hashes": ", ".join(f"{name}: {self.ti_hash(e)}" for name, e in used.items()) or None}

    def conditioning(self, steps: int, hires_steps: int | None = None) -> PassConditioning:
        """Encoded once per job and pass length, reused by every batch."""
        key = (steps, hires_steps)
        if key not in self._passes:
            self._passes[key] = PassConditioning(self.encoder, self.prompt, self.negative_prompt, steps, hires_steps,
                                                 self._encoded)
        return self._passes[key]

    def pipeline_arguments(self, steps: int, batch: int, on_step, hires_steps: int | None = None) -> dict:
        """prompt_embeds & co. and the step callback for a diffusers pipeline call of `batch` images."""
        return self.conditioning(steps, hires_steps).pipeline_arguments(batch, on_step)

    def for_images(self, prompts: list[tuple[str, str]]):
        """What a batch whose images have these (prompt, negative prompt) pairs encodes: this job's own conditioning
        when every pair is the request's, else one conditioning per image (same `pipeline_arguments`)."""
        if all(pair == self.written for pair in prompts):
            return self
        return ImagePrompts(self, [self.clean(*pair) for pair in prompts])

    def image_conditioning(self, prompt: str, negative_prompt: str, steps: int,
                           hires_steps: int | None = None) -> PassConditioning:
        if self._image_encoder is None:
            self._image_encoder = _RememberingEncoder(self.encoder)  # texts the images share are encoded once
        key = (prompt, negative_prompt, steps, hires_steps)
        if key not in self._image_passes:
            self._image_passes[key] = PassConditioning(self._image_encoder, prompt, negative_prompt, steps,
                                                       hires_steps)
        return self._image_passes[key]


@dataclass
class ImagePrompts:
    """The conditioning of one batch whose images have prompts of their own (texts already cleaned of tags)."""
    job: JobNetworks
    texts: list[tuple[str, str]]

    def pipeline_arguments(self, steps: int, batch: int, on_step, hires_steps: int | None = None) -> dict:
        passes = [self.job.image_conditioning(prompt, negative, steps, hires_steps) for prompt, negative in self.texts]
        return BatchConditioning(passes, lambda: self.job.encoder.encode("")).pipeline_arguments(batch, on_step)


class _RememberingEncoder:
    """The job's PromptEncoder with each text's encoding kept for the job."""

    def __init__(self, encoder: PromptEncoder):
        self._encoder = encoder
        self._encoded: dict = {}
        self.sdxl = encoder.sdxl
        self.pooled = getattr(encoder, "pooled", encoder.sdxl)
        self.separate_negative = getattr(encoder, "separate_negative", False)

    def encode(self, text: str):
        if text not in self._encoded:
            self._encoded[text] = self._encoder.encode(text)
        return self._encoded[text]


@dataclass
class _ReadPrompts:
    prompt: str
    negative_prompt: str
    tags: list  # the extra-network tags of the prompt
    parsed: dict[str, list]  # text -> its parse, for the encoder
    warnings: list[str]


@dataclass
class _ChosenVae:
    module: object
    path: Path
    infotext: dict[str, str]


class Networks:
    def __init__(self, lora_dir: Path, embeddings_dir: Path, vae_dir: Path, checkpoints_dir: Path,
                 hashes: HashCache, construction: ModelConstruction | None = None):
        self.construction = construction or ModelConstruction()  # LoRA layers and VAEs are built inside it
        self.loras = NetworkFolder(lora_dir, LORA_EXTENSIONS)
        self.embeddings = EmbeddingLibrary(embeddings_dir, hashes)
        self.vaes = VaeLibrary(vae_dir, checkpoints_dir, hashes, construction=self.construction)
        self.hashes = hashes

    def refresh(self):
        self.loras.refresh()
        self.embeddings.refresh()
        self.vaes.refresh()

    @cached_property
    def tokenizer(self):
        return build_clip_tokenizer()

    def token_counter(self, text: str, steps: int = 20) -> tuple[int, int]:
        """A1111's `used/75` beside a prompt box: the longest of the prompt's scheduled variants, with LoRA tags
        left out and embeddings counted by their vectors. The page sends any text and any steps: both are
        bounded as a job's are (a text over the prompt limit counts its first MAX_PROMPT_CHARACTERS)."""
        text = (text or "")[:MAX_PROMPT_CHARACTERS]
        steps = min(max(int(steps), STEPS_RANGE[0]), STEPS_RANGE[1])
        try:
            text, _ = extract_extra_networks(text)
        except PromptSyntaxError:
            pass  # counted as typed; the job will say what is wrong with the tag
        chunker = PromptChunker(self.tokenizer, self.embeddings.all()[0])
        variants = {variant for _, variant in prompt_schedule(text, steps)}  # alternation repeats texts
        try:
            return max(chunker.lengths(variant) for variant in variants)
        except PromptSyntaxError:  # the job will say what is wrong; count the tokens as typed meanwhile
            used = len(chunker.tokenize(text))
            return used, max(CHUNK_LENGTH, -(-used // CHUNK_LENGTH) * CHUNK_LENGTH)

    def t5_token_counter(self, text: str, steps: int, model) -> tuple[int, int] | None:
        """Forge's T5 count for a Flux or SD3 `model` (a LoadedModel; None for other families): the tokens of the
        plain words T5 reads (the longest scheduled variant), and how many fit (its sequence less the end token;
        the rest is cut off)."""
        if model is None or model.family not in FLOW_FAMILIES:
            return None
        text = (text or "")[:MAX_PROMPT_CHARACTERS]
        steps = min(max(int(steps), STEPS_RANGE[0]), STEPS_RANGE[1])
        try:
            text, _ = extract_extra_networks(text)
        except PromptSyntaxError:
            pass
        chunker = PromptChunker(self.tokenizer, self.embeddings.all()[0])
        tokenizer = t5_tokenizer(model.pipeline, model.family)
        try:
            texts = {plain_text(chunker.weighted(variant)) for _, variant in prompt_schedule(text, steps)}
        except PromptSyntaxError:
            texts = {text}
        used = max(len(tokenizer(words, add_special_tokens=False).input_ids) for words in texts)
        return used, T5_LENGTH[model.family] - 1

    def lora_short_hash(self, path: Path) -> str:
        """A1111's `Lora hashes` value: the addnet hash (tensor data only), first 12 hex digits."""
        return self.hashes.addnet_hash(path)[:12]

    def check_vae(self, choice: str):
        """Validate a VAE choice before queueing (RequestError naming the field)."""
        if choice not in self.vaes.choices():
            raise RequestError("sd_vae", f"unknown VAE {choice!r}; choose one of {self.vaes.choices()}")

    @contextmanager
    def prepare(self, request, model, checkpoint_path: Path | None) -> Iterator[JobNetworks]:
        """The job's prompt context: its prompts read (tags out, syntax checked), its LoRAs applied to the cached
        model for the job only (removed when the context ends), its VAE chosen, and its infotext keys."""
        texts = self._read_prompts(request)
        warnings = texts.warnings
        uses = self._lora_uses(texts.tags, warnings)
        pipeline = model.pipeline
        with applied_loras(pipeline, model.family, uses, warnings, self.construction) as applied:
            embeddings, failed = self.embeddings.all()
            encoder_class = FlowPromptEncoder if model.family in FLOW_FAMILIES else PromptEncoder
            encoder = encoder_class(pipeline, model.family, request.clip_skip, embeddings, texts.parsed)
            clip_skip = encoder.clip_skip_usable()
            if clip_skip != request.clip_skip:
                warnings.append(f"clip skip {request.clip_skip} is deeper than this model's text encoder allows; "
                                f"used {clip_skip}")
            vae = self._vae(request.sd_vae, pipeline, checkpoint_path, warnings)
            self._check_embedding_names(encoder, embeddings, failed, texts.prompt, texts.negative_prompt, warnings)
            yield JobNetworks(
                encoder, texts.prompt, texts.negative_prompt, warnings=warnings, ti_hash=self.embeddings.short_hash,
                written=(request.prompt, request.negative_prompt),
                clean=lambda image_prompt, image_negative: self._image_texts(
                    image_prompt, image_negative, texts.tags, request.steps, warnings),
                vae=vae.module if vae else None, vae_file=vae.path if vae else None,
                parameters={
                    "Clip skip": clip_skip if clip_skip > 1 else None,
                    **(vae.infotext if vae else {}),
                    "Lora hashes": ", ".join(f"{use.file.name}: {self.lora_short_hash(use.file.path)}"
                                             for use in applied) or None,
                })

    def _read_prompts(self, request) -> _ReadPrompts:
        """The request's prompts without their extra-network tags, with explicit embeddings resolved and the
        syntax checked (each distinct text parsed once, kept for encoding)."""
        warnings: list[str] = []
        try:
            prompt, tags = extract_extra_networks(request.prompt)
            negative_prompt, negative_tags = extract_extra_networks(request.negative_prompt)
        except PromptSyntaxError as error:
            raise RequestError("prompt", str(error)) from None
        if negative_tags:
            warnings.append("ignored in the negative prompt (extra networks apply from the prompt only): "
                            + ", ".join(f"<{t.kind}:{t.name}>" for t in negative_tags))
        prompt = self._explicit_embeddings(prompt, warnings)
        negative_prompt = self._explicit_embeddings(negative_prompt, warnings)
        parsed: dict[str, list] = {}
        for label, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            self._check_syntax(label, text, request.steps, warnings, parsed)
        return _ReadPrompts(prompt, negative_prompt, tags, parsed, warnings)

    @staticmethod
    def _check_syntax(label: str, text: str, steps: int, warnings: list[str], parsed: dict | None = None):
        """Bracket problems become warnings (a bounded number); a prompt the parser cannot read is the user's error.
        `parsed` keeps each distinct text's parse so that encoding does not parse it again."""
        problems = bracket_problems(text)
        name = label.replace('_', ' ')
        for problem in problems[:MAX_BRACKET_WARNINGS]:
            note = f"{name}: {problem}"
            if note not in warnings:
                warnings.append(note)
        if len(problems) > MAX_BRACKET_WARNINGS:
            warnings.append(f"{name}: {len(problems) - MAX_BRACKET_WARNINGS} more unbalanced brackets")
        parsed = {} if parsed is None else parsed
        try:
            for _, variant in prompt_schedule(text, steps):
                if variant not in parsed:
                    parsed[variant] = parse_weighted(variant)
        except PromptSyntaxError as error:
            raise RequestError(label, str(error)) from None

    def _image_texts(self, prompt: str, negative_prompt: str, job_tags, steps: int,
                     warnings: list[str]) -> tuple[str, str]:
        """An image's own prompts (chosen by an extension) ready to encode, checked as the request's are. LoRAs
        apply to the whole job, from the request's prompt, so a tag that only some images' prompts bring is said."""
        try:
            prompt, tags = extract_extra_networks(prompt)
            negative_prompt, _ = extract_extra_networks(negative_prompt)
        except PromptSyntaxError as error:
            raise RequestError("prompt", str(error)) from None
        applied = {(tag.kind, tag.name, tag.weight) for tag in job_tags}
        for tag in tags:
            if (tag.kind, tag.name, tag.weight) not in applied:
                note = (f"<{tag.kind}:{tag.name}> from an image's own prompt (e.g. a wildcard) ignored: LoRAs apply to "
                        "the whole job; write the tag in the prompt outside the wildcard")
                if note not in warnings:
                    warnings.append(note)
        texts = []
        for label, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            text = self._explicit_embeddings(text, warnings)
            self._check_syntax(label, text, steps, warnings)
            texts.append(text)
        return texts[0], texts[1]

    def _lora_uses(self, tags, warnings: list[str]) -> list[LoraUse]:
        uses = []
        for tag in tags:
            if tag.kind not in ("lora", "lyco"):
                warnings.append(f"<{tag.kind}:{tag.name}> ignored: {tag.kind} networks are not supported")
                continue
            entry = self.loras.find(tag.name)
            if entry is None:
                warnings.append(f"LoRA {tag.name} ignored: no such file in {self.loras.folder}")
                continue
            uses.append(LoraUse(entry, tag.weight, tag.unet_weight if tag.unet_weight is not None else tag.weight))
        return uses

    def _vae(self, choice: str, pipeline, checkpoint_path: Path | None, warnings: list[str]) -> _ChosenVae | None:
        """The job's VAE, or None for the checkpoint's own (a file that cannot be loaded is a warning)."""
        try:
            entry = self.vaes.resolve(choice, checkpoint_path)
        except CheckpointError as error:
            raise RequestError("sd_vae", str(error)) from None
        if entry is None:
            return None
        try:
            vae = self.vaes.load(entry, pipeline.vae)
        except CheckpointError as error:
            warnings.append(f"VAE {entry.file_name} ignored, the checkpoint's own VAE was used: {error}")
            return None
        return _ChosenVae(vae, entry.path, {"VAE hash": self.vaes.short_hash(entry), "VAE": entry.file_name})

    def _check_embedding_names(self, encoder, embeddings, failed: dict[str, str], prompt: str, negative: str,
                               warnings: list[str]):
        """Embeddings named in a prompt that cannot be used with this model are said, not silently dropped."""
        usable = {e.name for candidates in encoder.embeddings.values() for _, e in candidates}
        tokens = encoder.tokenize(prompt + " , " + negative)
        for embedding in embeddings:
            if embedding.name not in usable and _contains(tokens, encoder.tokenize(embedding.name)):
                widths = "/".join(map(str, embedding.widths))
                warnings.append(f"embedding {embedding.name} ignored: its vectors ({widths} wide) are for another "
                                "model family")
        for name, reason in failed.items():
            if _contains(tokens, encoder.tokenize(name)):
                warnings.append(f"embedding {name} ignored: {reason}")

    def _explicit_embeddings(self, text: str, warnings: list[str]) -> str:
        """ComfyUI's `embedding:name` spelling: the name alone if the file exists, else a warning."""
        def replace(match: re.Match) -> str:
            name = match.group(1)
            entry = self.embeddings.files.find(name)
            if entry is None:
                note = f"embedding {name} not found in {self.embeddings.files.folder}"
                if note not in warnings:  # once, however many images' prompts name it
                    warnings.append(note)
                return ""
            return entry.name

        return EXPLICIT_EMBEDDING.sub(replace, text)


def _contains(tokens: list[int], ids: list[int]) -> bool:
    return bool(ids) and any(tokens[i:i + len(ids)] == ids for i in range(len(tokens) - len(ids) + 1))
