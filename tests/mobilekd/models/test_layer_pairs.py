"""mobilekd.models.embedding_net.parse_layer_pairs: the --feature-layers spec "S=T,S=T" -> stage indices of each model."""

import pytest

from mobilekd.errors import MobileKDError
from mobilekd.models.embedding_net import parse_layer_pairs

STUDENT = [{"module": f"blocks.{i}", "num_chs": 8 * (i + 1), "reduction": 2 ** (i + 1)} for i in range(5)]
TEACHER = [{"module": name, "num_chs": 16} for name in ("stem", "stages.0", "stages.1")]


@pytest.mark.parametrize("spec, expected", [
    ("0=0", ([0], [0])),
    ("blocks.3=stages.1", ([3], [2])),                 # module names
    ("-1=-1,-2=1", ([4, 3], [2, 1])),                  # negatives count from the end, returned non-negative
    (" blocks.1 = stem , 4=-3 ,", ([1, 4], [0, 0])),   # spaces and a trailing comma are ignored
    ("3=0,1=2", ([3, 1], [0, 2])),                     # pairs stay in the order given
])
def test_pairs_resolve_to_stage_indices(spec, expected):
    assert parse_layer_pairs(spec, STUDENT, TEACHER) == expected


def test_the_two_sides_resolve_against_their_own_model():
    # "stem" exists only in the teacher, "blocks.4" only in the student: each side looks up its own names
    assert parse_layer_pairs("blocks.4=stem", STUDENT, TEACHER) == ([4], [0])
    with pytest.raises(MobileKDError, match=r"the student has no feature stage 'stem'"):
        parse_layer_pairs("stem=blocks.4", STUDENT, TEACHER)


def test_a_real_student_s_stage_names_are_accepted():
    from mobilekd.models import create_model

    info = create_model("mobilenetv1_025", embed_dim=8, size=32).feature_info
    last = len(info) - 1
    assert parse_layer_pairs(f"{info[1]['module']}=-1", info, TEACHER) == ([1], [2])
    assert parse_layer_pairs(f"-1={last}", info, info) == ([last], [last])


@pytest.mark.parametrize("spec, message", [
    ("3", r"expected STUDENT=TEACHER pairs, got '3'"),
    ("1=2=0", r"expected STUDENT=TEACHER pairs, got '1=2=0'"),
    ("5=0", r"the student has no feature stage '5'; valid stages: 0=blocks\.0, 1=blocks\.1, .*4=blocks\.4$"),
    ("-6=0", r"the student has no feature stage '-6'"),
    ("0=3", r"the teacher has no feature stage '3'; valid stages: 0=stem, 1=stages\.0, 2=stages\.1$"),
    ("0=stages.9", r"the teacher has no feature stage 'stages\.9'"),
    ("0=", r"the teacher has no feature stage ''"),
    ("0=1.5", r"the teacher has no feature stage '1\.5'"),
    ("", r"--feature-layers names no stage pair"),
    (" , ,", r"--feature-layers names no stage pair"),
])
def test_bad_specs_are_one_clear_error(spec, message):
    with pytest.raises(MobileKDError, match=message):
        parse_layer_pairs(spec, STUDENT, TEACHER)
