"""The model card's licence lines come from the files and package metadata the weights came with."""

import importlib.metadata

import pytest

from ship.model_card import TEACHER_WHEELS, licences_section, wheel_licence


def test_an_imagenet_student_and_an_efficientnet_teacher_name_their_licences():
    meta = {"spec": {"arch": "tf_mobilenetv1_025", "pretrained": True},
            "config": {"teacher": "efficientnet_lite2", "teacher_size": 192}}
    text = "\n".join(licences_section(meta))
    assert "MobileNetV1-0.25, Apache License 2.0" in text and "Copyright 2020 The TensorFlow Authors" in text
    assert f"`{TEACHER_WHEELS['efficientnet_lite2']}` wheel" in text


def test_the_teacher_wheels_licence_is_read_from_its_metadata():
    package = TEACHER_WHEELS["efficientnet_lite0"]
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{package} is not installed")
    first = next(line.strip() for line in (dist.read_text("LICENSE") or dist.metadata["License"]).splitlines()
                 if line.strip())
    assert wheel_licence(package).startswith(first)
    assert "not installed" in wheel_licence("no-such-wheel-mobilekd")


def test_a_random_init_student_without_teacher_claims_no_weights_licence():
    text = "\n".join(licences_section({"spec": {"arch": "mobilenetv1_025", "pretrained": False}, "config": {}}))
    assert "Apache" not in text and "Your data's licence" in text


def test_the_card_says_what_training_changed():
    from ship.model_card import starting_point_section

    meta = {"untrained_metrics": {"R@1": 54.49, "MAP@R": 13.30}, "metrics": {"R@1": 67.52, "MAP@R": 22.62},
            "below_untrained": False}
    text = "\n".join(starting_point_section(meta))
    assert "54.49 / 13.30" in text and "67.52 / 22.62" in text and "above its starting point" in text
    worse = "\n".join(starting_point_section({**meta, "metrics": {"R@1": 50.0, "MAP@R": 12.0}, "below_untrained": True}))
    assert "**below** its starting point" in worse
    assert starting_point_section({"metrics": {"R@1": 1.0, "MAP@R": 1.0}}) == []  # a student trained from scratch
