"""Instruction tokenizers: a small word-level one built offline (tiny/demo), or Llama's from a
directory."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from schemas.errors import CheckpointError

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"

# Instructions for presets built without a caller-supplied corpus (unit tests, benchmarks).
DEFAULT_CORPUS: tuple[str, ...] = (
    "After 30 meters, execute a left turn.",
    "After 45 meters, make a right turn at the intersection.",
    "Turn left at the next intersection.",
    "Turn right at the next junction.",
    "Go straight through the intersection.",
    "Change to the left lane.",
    "Change to the right lane.",
    "Follow the current route.",
    "Keep your current course.",
    "Enter the highway.",
    "Exit the highway at the next ramp.",
    "Be mindful of pedestrians ahead.",
    "Watch out for the traffic light.",
    "Please halt your vehicle immediately.",
    "Stop the car and wait.",
)


def build_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A lowercase word-level tokenizer over ``corpus`` with ``[PAD] [UNK] [BOS] [EOS]``.

    Digits are split one by one and always in the vocabulary, so distances such as "After 37
    meters" never become ``[UNK]``. At most ``vocab_size`` entries (the most frequent words).
    """
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK, BOS, EOS])
    tok.train_from_iterator([*corpus, " ".join("0123456789")], trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        special_tokens=[(BOS, tok.token_to_id(BOS)), (EOS, tok.token_to_id(EOS))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        padding_side="right",
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """A tokenizer saved in ``path`` (Hugging Face format), without network access."""
    path = Path(path)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer.model").is_file():
        raise CheckpointError(
            f"no tokenizer in {path}: expected tokenizer.json (or tokenizer.model)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load the tokenizer in {path}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def encode_instructions(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_tokens: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, L) and a boolean mask (B, L) of the instructions, right-padded, at most
    ``max_tokens``."""
    enc = tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_tokens, return_tensors="pt"
    )
    return enc["input_ids"].to(device), enc["attention_mask"].to(device).bool()
