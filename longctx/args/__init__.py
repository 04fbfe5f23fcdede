"""Argument groups of the scripts, typed dataclasses parsed with transformers' HfArgumentParser.

Each field has a one-line help; `__post_init__` rejects bad values with a ValueError naming the flag.
Booleans parse as booleans (`--low_rank_training False` is False, unlike LongLoRA's `type=bool`).
Each group lives next to the scripts it configures; all of them import from here.
"""

from longctx.args.evaluation import NeedleArguments, PerplexityArguments, RetrievalArguments, RulerArguments
from longctx.args.loading import InferenceModelArguments, LoadingArguments
from longctx.args.reading import DemoArguments, InferenceArguments, Pdf2TxtArguments, ReadingArguments
from longctx.args.sft import QAAccuracyArguments, QACheckArguments, QADataArguments, SFTDataArguments
from longctx.args.training import (
    DataArguments,
    LongContextTrainingArguments,
    ModelArguments,
    PerplexityCheckArguments,
    SFTTrainingArguments,
)

__all__ = [
    "DataArguments",
    "DemoArguments",
    "InferenceArguments",
    "InferenceModelArguments",
    "LoadingArguments",
    "LongContextTrainingArguments",
    "ModelArguments",
    "NeedleArguments",
    "Pdf2TxtArguments",
    "PerplexityArguments",
    "PerplexityCheckArguments",
    "QAAccuracyArguments",
    "QACheckArguments",
    "QADataArguments",
    "ReadingArguments",
    "RetrievalArguments",
    "RulerArguments",
    "SFTDataArguments",
    "SFTTrainingArguments",
]
