"""Supervised fine-tuning's groups (supervised-fine-tune.py) and its data tools (build_qa_data, qa_accuracy)."""

from __future__ import annotations

from dataclasses import dataclass

from longctx.args.fields import help_field
from longctx.args.loading import InferenceModelArguments


@dataclass
class SFTDataArguments:
    """supervised-fine-tune.py's data: LongAlpaca JSON or chat JSONL, its prompt format and batching (LongAlign)."""

    data_path: str | None = help_field(
        "LongAlpaca .json ({instruction, output[, input]} records), LongQLoRA .jsonl ({input, output}) or chat .jsonl "
        "({messages: [...]} per line)",
        default=None,
    )
    prompt_template: str = help_field(
        "chat (the tokenizer's chat template), llama2 (LongLoRA's [INST] format) or vicuna (LongQLoRA's)", default="chat"
    )
    batch_method: str = help_field(
        "naive (random order, padded), pack (greedy packing up to --model_max_length) or sort (length-sorted batches)",
        default="naive",
    )
    pack_loss: bool = help_field("LongAlign's loss weighting: every sequence counts the same however it is packed", default=False)
    max_train_samples: int | None = help_field("use at most the first N records (default: all)", default=None)

    def __post_init__(self):
        from longctx.prompts import check_template
        from longctx.sft_batching import BATCH_METHODS

        if not self.data_path:
            raise ValueError("--data_path is required: a LongAlpaca .json or chat .jsonl file")
        check_template(self.prompt_template)
        if self.batch_method not in BATCH_METHODS:
            raise ValueError(f"--batch_method {self.batch_method!r}: choose one of {', '.join(BATCH_METHODS)}")
        if self.max_train_samples is not None and self.max_train_samples <= 0:
            raise ValueError(f"--max_train_samples must be positive (got {self.max_train_samples})")


@dataclass
class QACheckArguments:
    """Accuracy on held-out questions (greedy answers, full attention) before and after SFT."""

    eval_data_path: str | None = help_field(
        "held-out questions in LongAlpaca .json (from python -m longctx.build_qa_data); none: no accuracy check",
        default=None,
    )
    eval_samples: int | None = help_field("ask only the first N held-out questions (default: all)", default=None)
    eval_max_new_tokens: int = help_field("tokens generated per answer", default=32)

    def __post_init__(self):
        if self.eval_samples is not None and self.eval_samples <= 0:
            raise ValueError(f"--eval_samples must be positive (got {self.eval_samples})")
        if self.eval_max_new_tokens <= 0:
            raise ValueError(f"--eval_max_new_tokens must be positive (got {self.eval_max_new_tokens})")


@dataclass
class QADataArguments:
    """python -m longctx.build_qa_data: long-document QA records (facts hidden in book sections)."""

    output: str = help_field("LongAlpaca .json file to write", default=None)
    books: str = help_field(
        "books to cut sections from: .txt files or folders, comma-separated (default: the training books data/pg19)",
        default=None,
    )
    num_samples: int = help_field("number of records", default=64)
    min_tokens: int = help_field("shortest section in approximate tokens (4 characters each)", default=256)
    max_tokens: int = help_field("longest section in approximate tokens; lengths are long-tailed in between", default=15000)
    seed: int = help_field("seed of sections, facts and depths", default=0)
    overwrite: bool = help_field("replace --output when it already exists", default=False)

    def __post_init__(self):
        if not self.output:
            raise ValueError("--output is required: the .json file to write")
        if self.num_samples <= 0:
            raise ValueError(f"--num_samples must be positive (got {self.num_samples})")
        if not 16 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"need 16 <= --min_tokens <= --max_tokens (got {self.min_tokens} and {self.max_tokens})")


@dataclass
class QAAccuracyArguments(InferenceModelArguments):
    """python -m longctx.qa_accuracy: a base model (plus a supervised-fine-tune.py adapter) on held-out questions."""

    prompt_template: str = help_field("chat, llama2 or vicuna: the format the adapter was tuned in", default="chat")
    output_json: str | None = help_field("write the accuracy and every answer to this JSON file", default=None)
    overwrite: bool = help_field("replace --output_json when it already exists", default=False)

    def __post_init__(self):
        from longctx.prompts import check_template

        super().__post_init__()
        check_template(self.prompt_template)
