"""What an adapter folder remembers of its training: RoPE scaling, training length and attention.

An adapter is only right under the RoPE it was trained with: read under another scaling it reads
worse than no training at all. fine-tune.py and supervised-fine-tune.py write `longctx_training.json`
into the output folder and every checkpoint; the reading scripts, the merge and
get_trainable_weights.py read it back (`apply_record`), so `eval.py --peft_model DIR` needs no RoPE
flag. Folders without the file (LongLoRA's own, older longctx runs) keep the old rule: the context
size gives a linear factor.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from longctx.io import write_json_atomic

RECORD_FILE = "longctx_training.json"


@dataclass
class TrainingRecord:
    """The settings an adapter cannot be read correctly without, as training wrote them into the config."""

    rope_method: str  # longctx.rope's method name ("none" when the base model was read unscaled)
    rope_parameters: dict  # config.rope_parameters after scaling (transformers 5's flat format)
    max_position_embeddings: int
    model_max_length: int  # the training length
    attention: str  # "s2_attn" or "full"
    original_max_position_embeddings: int | None = None  # linear RoPE keeps the pretraining window here
    base_model: str | None = None
    extra: dict = field(default_factory=dict)  # e.g. S²-Attn group size, stage of a progressive run

    @property
    def rope_factor(self) -> float | None:
        return self.rope_parameters.get("factor")

    @property
    def rope_theta(self) -> float | None:
        return self.rope_parameters.get("rope_theta")

    def describe(self) -> str:
        """'yarn x2.0 (theta 100000)' for messages."""
        factor = f" x{self.rope_factor:g}" if self.rope_factor else ""
        return f"{self.rope_method}{factor} (theta {self.rope_theta:g}), trained at {self.model_max_length} tokens"


def record_from_model(
    config, rope_method: str, model_max_length: int, attention: str, base_model: str | None = None, **extra
) -> TrainingRecord:
    """The record of a model whose config already carries the training's RoPE scaling."""
    return TrainingRecord(
        rope_method=rope_method,
        rope_parameters=dict(config.rope_parameters or {}),
        max_position_embeddings=int(config.max_position_embeddings),
        model_max_length=int(model_max_length),
        attention=attention,
        original_max_position_embeddings=getattr(config, "original_max_position_embeddings", None),
        base_model=base_model,
        extra=extra,
    )


def write_record(folder: str | Path, record: TrainingRecord) -> Path:
    return write_json_atomic(Path(folder) / RECORD_FILE, asdict(record))


def read_record(folder: str | Path | None) -> TrainingRecord | None:
    """The record in `folder`, or None when the folder has none (LongLoRA's folders, older runs)."""
    if folder is None:
        return None
    path = Path(folder).expanduser() / RECORD_FILE
    if not path.is_file():
        return None
    try:
        return TrainingRecord(**json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a longctx training record ({error}); delete it to load without it") from None


def apply_record(config, record: TrainingRecord):
    """Write the record's RoPE scaling into a base model's config, in place (before the model is built)."""
    config.rope_parameters = dict(record.rope_parameters)
    config.max_position_embeddings = record.max_position_embeddings
    if record.original_max_position_embeddings is not None:
        config.original_max_position_embeddings = record.original_max_position_embeddings
    config.validate_rope()
    return config
