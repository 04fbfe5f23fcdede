"""The reading scripts' groups (inference.py, demo.py) and pdf2txt."""

from __future__ import annotations

from dataclasses import dataclass, field

from longctx.args.fields import help_field
from longctx.args.loading import InferenceModelArguments
from longctx.chat import ChatSettings
from longctx.errors import check_choice
from longctx.material import PromptLayout


@dataclass
class ReadingArguments(InferenceModelArguments):
    """How inference.py and demo.py read a material and answer (LongLoRA's generation flags, StreamingLLM's)."""

    context_size: int | None = help_field(
        "context length the model was fine-tuned for; RoPE is scaled to reach it (default: the model's own window)",
        default=None,
    )
    max_gen_len: int = help_field("most tokens generated per answer", default=512)
    temperature: float = help_field("sampling temperature; 0 decodes greedily", default=0.6)
    top_p: float = help_field("nucleus sampling: keep the smallest token set with this probability", default=0.9)
    prompt_template: str = help_field(
        "chat: the tokenizer's chat template; llama2: LongLoRA's [INST] format; vicuna: LongQLoRA's", default="chat"
    )
    material_type: str | None = help_field(
        "material, book or paper: the instruction before the material (LongLoRA's demo); none: the material as is, "
        "then the question (LongLoRA's inference.py; the default with --prompt_template llama2, else material)",
        default=None,
    )
    material_title: str | None = help_field("title named in the instruction of a book (LongLoRA's demo)", default=None)
    truncate: str = help_field(
        "material over the window: none refuses it with its token count; middle cuts its middle", default="none"
    )
    ocr: bool = help_field("read scanned PDF pages by OCR (optional extra: pytesseract + tesseract-ocr)", default=False)
    enable_streaming: bool = help_field(
        "StreamingLLM cache: keep --start_size sink tokens + --recent_size recent ones", default=False
    )
    start_size: int = help_field("attention-sink tokens kept at the start of the cache (with --enable_streaming)", default=4)
    recent_size: int = help_field("most recent tokens kept in the cache (with --enable_streaming)", default=2000)
    seed: int = help_field("random seed of sampling", default=0)

    def __post_init__(self):
        from longctx.material import MATERIAL_TYPES, TRUNCATIONS
        from longctx.prompts import check_template

        super().__post_init__()
        check_template(self.prompt_template)
        check_choice("--truncate", self.truncate, TRUNCATIONS)
        if self.material_type is not None:
            check_choice("--material_type", self.material_type, MATERIAL_TYPES)
        if self.max_gen_len <= 0:
            raise ValueError(f"--max_gen_len must be positive (got {self.max_gen_len})")
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0 (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top_p must be in (0, 1] (got {self.top_p})")
        if self.start_size < 0 or self.recent_size <= 0:
            raise ValueError(
                f"--start_size must be >= 0 and --recent_size > 0 (got {self.start_size}, {self.recent_size})"
            )

    def window(self, model) -> int:
        """The context window read in: --context_size, else the model's own (RoPE is not rescaled unless asked)."""
        return self.context_size or model.config.max_position_embeddings

    def prompt_layout(self) -> PromptLayout:
        """The first turn's layout (longctx.material.first_turn); llama2's default material type is none."""
        material_type = self.material_type or ("none" if self.prompt_template == "llama2" else "material")
        return PromptLayout(
            self.prompt_template, material_type, self.material_title, self.truncate, self.max_gen_len, self.streaming()
        )

    def streaming(self) -> tuple[int, int] | None:
        return (self.start_size, self.recent_size) if self.enable_streaming else None

    def chat_settings(self) -> ChatSettings:
        return ChatSettings(self.max_gen_len, self.temperature, self.top_p, self.prompt_template, self.streaming())


@dataclass
class InferenceArguments(ReadingArguments):
    """inference.py: one question about a material, then optionally more (--chat)."""

    material: str | None = help_field("the document: a .txt, .md or .pdf file", default=None)
    question: str | None = help_field("the question asked after the material", default=None)
    chat: bool = help_field("after the first answer, keep asking questions typed on stdin (same KV cache)", default=False)

    def __post_init__(self):
        super().__post_init__()
        if not self.material:
            raise ValueError("--material is required (a .txt, .md or .pdf file)")
        if not (self.question or "").strip() and not self.chat:
            raise ValueError("--question is required (or --chat to type questions)")


@dataclass
class DemoArguments(ReadingArguments):
    """demo.py: the gradio app; local only unless --share."""

    host: str = help_field("address to serve on (0.0.0.0 opens it to the network)", default="127.0.0.1")
    port: int = help_field("port to serve on", default=8898)
    share: bool = help_field("also open a public gradio.live link (off by default)", default=False)
    cached_conversations: int = help_field(
        "conversations that keep their KV cache in memory; the least recently asked re-read theirs when asked again",
        default=4,
    )
    session_timeout: float = help_field("seconds an idle session's document and conversation are kept", default=3600)

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.port < 65536:
            raise ValueError(f"--port must be in 1-65535 (got {self.port})")
        if self.cached_conversations <= 0:
            raise ValueError(f"--cached_conversations must be positive (got {self.cached_conversations})")
        if self.session_timeout <= 0:
            raise ValueError(f"--session_timeout must be positive (got {self.session_timeout})")


@dataclass
class Pdf2TxtArguments:
    """pdf2txt/pdf2txt.py: PDFs (files or folders, searched recursively) to clean text."""

    input: list[str] = field(
        default_factory=list, metadata={"help": "PDF files and/or folders of PDFs (searched recursively)"}
    )
    output_dir: str | None = help_field("write one .txt per PDF here, keeping the folders' layout", default=None)
    output_jsonl: str | None = help_field(
        "also (or instead) write one {'text', 'source'} line per PDF: pretraining data", default=None
    )
    ocr: bool = help_field("OCR pages without a text layer (optional extra: pytesseract + tesseract-ocr)", default=False)
    overwrite: bool = help_field("replace .txt files and --output_jsonl when they already exist (default: skip / refuse)", default=False)

    def __post_init__(self):
        if not self.input:
            raise ValueError("--input is required: PDF files and/or folders")
        if not self.output_dir and not self.output_jsonl:
            raise ValueError("pass --output_dir (one .txt per PDF) and/or --output_jsonl (one JSON line per PDF)")
