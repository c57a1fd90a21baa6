"""Match a segmentation's segment names to a model's label classes by name, without Slicer.

Segment names in Slicer come from users, terminologies and other tools ("Grey_Matter", "gray matter",
"CSF"), a model card names its classes ("grey matter"): names are compared after folding case,
separators and the US/UK spellings that anatomy names differ by. A segment whose name matches no class
is left for the user to assign (or ignore) in the module's table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

SPELLINGS = {"gray": "grey", "tumor": "tumour", "edema": "oedema", "hemorrhage": "haemorrhage",
             "esophagus": "oesophagus", "centre": "center"}
IGNORE = -1  # a segment that is left out of the label map


def normalize_name(name: str) -> str:
    """A name folded for comparison: lower case, words split on any separator, one spelling."""
    words = re.split(r"[\s_\-./,;:()]+", str(name).strip().lower())
    return " ".join(SPELLINGS.get(word, word) for word in words if word)


def match_class(segment_name: str, classes: Sequence[tuple[int, str]]) -> int | None:
    """The index of the class whose name matches `segment_name`, or None."""
    wanted = normalize_name(segment_name)
    if not wanted:
        return None
    for index, name in classes:
        if normalize_name(name) == wanted:
            return index
    return None


def match_segments(segment_names: Iterable[str], classes: Sequence[tuple[int, str]]) -> tuple[dict[str, int], list[str]]:
    """{segment name: class index} for the segments whose names match a class, and the others' names."""
    matched: dict[str, int] = {}
    unmatched: list[str] = []
    for segment_name in segment_names:
        index = match_class(segment_name, classes)
        if index is None:
            unmatched.append(segment_name)
        else:
            matched[segment_name] = index
    return matched, unmatched


def paint_order(assignment: dict[str, int]) -> list[tuple[str, int]]:
    """(segment, class index) pairs in the order to paint them into one label map: lower indices first,
    so where segments overlap the higher class (usually the smaller structure) wins; ignored ones left out."""
    return sorted(((name, index) for name, index in assignment.items() if index != IGNORE), key=lambda item: item[1])


def default_assignment(segment_names: Iterable[str], classes: Sequence[tuple[int, str]]) -> dict[str, int]:
    """{segment name: class index} for every segment, as the module's table presets it: the class the name
    matches, else IGNORE (left out until the user picks a class)."""
    names = list(segment_names)
    matched, _ = match_segments(names, classes)
    return {name: matched.get(name, IGNORE) for name in names}


def mapping_problem(assignment: dict[str, int], classes: Sequence[tuple[int, str]],
                    segment_names: Iterable[str] | None = None) -> str | None:
    """Why an assignment cannot make a label map (None when it can). Given the anatomy's `segment_names`,
    each segment must be in the assignment (a class, or left out: what the user confirmed in the table)
    and each assigned segment must exist; every assigned index must be a class of the model."""
    known = {index for index, _ in classes}
    class_names = ", ".join(name for _, name in classes) or "none"
    if segment_names is not None:
        names = list(segment_names)
        unconfirmed = [name for name in names if name not in assignment]
        if unconfirmed:
            return (f"segment {unconfirmed[0]!r} has no class in the segment table: pick one of the model's classes "
                    f"({class_names}) or leave it out")
        missing = [name for name, index in assignment.items() if index != IGNORE and name not in names]
        if missing:
            return f"the anatomy has no segment {missing[0]!r} (any more): list its segments again"
    used = [index for index in assignment.values() if index != IGNORE]
    if not used:
        return ("no segment is assigned to a class of the model; name the segments after the model's classes "
                f"({class_names}) or pick a class for each in the table")
    unknown = [(name, index) for name, index in assignment.items() if index != IGNORE and index not in known]
    if unknown:
        name, index = unknown[0]
        return (f"segment {name!r} is assigned label {index}, which is not a class of the model ({class_names}): "
                "pick one of its classes or leave the segment out")
    return None


__all__ = ["IGNORE", "default_assignment", "mapping_problem", "match_class", "match_segments", "normalize_name",
           "paint_order"]
