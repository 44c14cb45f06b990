"""LMDrive instruction records -> contract instructions: ids to categories, templates to text,
records to spans."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from scenes.lmdrive.files import PathLike, read_json_object
from schemas.errors import SceneFormatError
from schemas.scene import INSTRUCTION_CATEGORIES, Instruction, InstructionSpan

ARG_NAMES = ("x", "direction", "y")  # instruction_args fill "[x]", "left/right", "[y]"
_PLACEHOLDERS = (("[x]", "x"), ("left/right", "direction"), ("[y]", "y"))
_CATEGORY_LAST_ID = ((33, "turn"), (49, "follow"), (59, "notice"), (64, "other"))
NO_INSTRUCTION = Instruction(text="", instruction_id=-1, category="other")


def load_templates(path: PathLike) -> dict[int, list[str]]:
    """LMDrive's ``instruction_dict.json``: instruction id -> paraphrase templates."""
    path = Path(path)
    data = read_json_object(path)
    try:
        return {int(k): [str(t) for t in v] for k, v in data.items()}
    except (TypeError, ValueError) as e:
        raise SceneFormatError(f"{path}: expected {{id: [template, ...]}} ({e})") from e


def _category(instruction_id: int, rule: str) -> str:
    """Category from LMDrive's id ranges, else from the rule name ("Turn-01-L" -> turn)."""
    for last, name in _CATEGORY_LAST_ID:
        if 0 <= instruction_id <= last:
            return name
    prefix = rule.split("-")[0].lower()
    return prefix if prefix in INSTRUCTION_CATEGORIES else "other"


def _text(rec: dict, args: dict, templates: Mapping[int, list[str]] | None) -> str:
    """Our ``text`` key, else LMDrive's first template with its placeholders filled, else the
    rule."""
    if "text" in rec:
        return str(rec["text"])
    options = (templates or {}).get(int(rec["instruction_id"]))
    if not options:
        return str(rec.get("instruction", ""))
    text = options[0]
    for placeholder, key in _PLACEHOLDERS:
        if key in args:
            text = text.replace(placeholder, str(args[key]))
    return text


def _truthy(value: object) -> bool:
    return str(value).strip().lower() in ("true", "1")


def _instruction(rec: dict, templates: Mapping[int, list[str]] | None) -> Instruction:
    iid = int(rec["instruction_id"])
    if isinstance(rec.get("args"), dict):
        args = dict(rec["args"])
    else:
        args = dict(zip(ARG_NAMES, rec.get("instruction_args") or [], strict=False))
    return Instruction(
        text=_text(rec, args, templates),
        instruction_id=iid,
        category=str(rec.get("category") or _category(iid, str(rec.get("instruction", "")))),
        args=args,
        misleading=_truthy(rec.get("bad_case", False)),
    )


def record_span(
    where: str, rec: dict, templates: Mapping[int, list[str]] | None, n: int, notice: bool
) -> InstructionSpan:
    """An instruction record as a span; notices (``frame_id``) last one frame unless stated."""
    start_key = "frame_id" if notice and "start_frame" not in rec else "start_frame"
    try:
        start = int(rec[start_key])
        end = int(rec.get("end_frame", start))
        ins = _instruction(rec, templates)
    except (KeyError, TypeError, ValueError) as e:
        raise SceneFormatError(f"{where}: bad instruction record ({e!r})") from e
    if not 0 <= start <= end < n:
        raise SceneFormatError(f"{where}: frames {start}..{end} outside the route's 0..{n - 1}")
    return InstructionSpan(ins, start, end)


def span_key(span: InstructionSpan) -> tuple:
    """The order of spans: (start, end, id, text)."""
    return span.start_frame, span.end_frame, span.instruction.instruction_id, span.instruction.text
