"""Pick matching intermediate stages of student and teacher for hint and attention losses.

A pair spec is ``"S=T,S=T"``: each side a stage index into the model's ``feature_info`` (negative counts from
the end) or its module name (e.g. ``blocks.3``). Spatial sizes need not match: the losses interpolate.
"""

from __future__ import annotations

from mobilekd.errors import MobileKDError


def _resolve(token: str, info: list[dict], side: str) -> int:
    names = [entry["module"] for entry in info]
    token = token.strip()
    if token in names:
        return names.index(token)
    try:
        index = int(token)
    except ValueError:
        index = None
    if index is None or not -len(info) <= index < len(info):
        valid = ", ".join(f"{i}={name}" for i, name in enumerate(names))
        raise MobileKDError(f"{side} has no feature stage {token!r}; valid stages: {valid}")
    return index % len(info)


def parse_layer_pairs(spec: str, student_info: list[dict], teacher_info: list[dict]) -> tuple[list[int], list[int]]:
    """(student stage indices, teacher stage indices) for ``spec``."""
    student, teacher = [], []
    for pair in filter(None, (p.strip() for p in spec.split(","))):
        if pair.count("=") != 1:
            raise MobileKDError(f"--feature-layers: expected STUDENT=TEACHER pairs, got {pair!r}")
        left, right = pair.split("=")
        student.append(_resolve(left, student_info, "the student"))
        teacher.append(_resolve(right, teacher_info, "the teacher"))
    if not student:
        raise MobileKDError("--feature-layers names no stage pair")
    return student, teacher
