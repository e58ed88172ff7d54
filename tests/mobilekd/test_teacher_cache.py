import json

import numpy as np
import pytest
import torch

from mobilekd.config import Config
from mobilekd.data import ViewDataset, load_image_set
from mobilekd.data.training import view_sampler
from mobilekd.embed import main as embed_main
from mobilekd.engine import Trainer
from mobilekd.errors import MobileKDError
from mobilekd.models.resolve import resolve_teacher
from mobilekd.teacher_cache import TeacherCache, expected_manifest


def _cache_args(data, cache, *extra):
    return ["--data", str(data), "--teacher", "efficientnet_lite0", "--teacher-size", "32", "--views", "3",
            "--teacher-cache", str(cache), "--no-progress", "--threads", "1", *extra]


def test_embed_cli_builds_a_memory_mapped_cache_that_distill_reuses(folder_dataset, tmp_path):
    cache_dir = tmp_path / "cache"
    assert embed_main(_cache_args(folder_dataset, cache_dir)) == 0
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["views"] == 3 and manifest["shape"] == [24, 3, 1280] and manifest["complete"]
    assert len(manifest["teacher_sha256"]) == 64
    cache = TeacherCache.open(cache_dir)
    assert isinstance(cache.embeddings, np.memmap)
    norms = np.linalg.norm(np.asarray(cache.embeddings), axis=2)
    assert np.allclose(norms, 1.0, atol=1e-5)

    config = Config(data=str(folder_dataset), out=str(tmp_path / "run"), student_size=32, embed_dim=16,
                    teacher="efficientnet_lite0", teacher_size=32, views=3, teacher_cache=str(cache_dir), absolute_weight=1.0,
                    epochs=1, batch_classes=4, images_per_class=2, steps_per_epoch=1, progress=False)
    trainer = Trainer(config)
    assert trainer.targets.path == cache_dir
    assert not (tmp_path / "run" / "teacher_cache").exists()  # nothing recomputed


def test_stale_cache_is_refused_with_the_differing_fields(folder_dataset, tmp_path):
    cache_dir = tmp_path / "cache"
    assert embed_main(_cache_args(folder_dataset, cache_dir)) == 0
    base = dict(data=str(folder_dataset), out=str(tmp_path / "run"), student_size=32, embed_dim=16,
                teacher="efficientnet_lite0", teacher_size=32, teacher_cache=str(cache_dir), epochs=1, absolute_weight=1.0,
                batch_classes=4, images_per_class=2,
                progress=False)
    with pytest.raises(MobileKDError, match="different transform, views"):
        Trainer(Config(**base, views=4, crop_scale=0.5))
    with pytest.raises(MobileKDError, match="different teacher_sha256"):
        Trainer(Config(**{**base, "teacher": "efficientnet_lite1"}, views=3))
    (folder_dataset / "class_0" / "0.png").write_bytes((folder_dataset / "class_1" / "0.png").read_bytes() + b"x")
    with pytest.raises(MobileKDError, match="different data_fingerprint"):
        Trainer(Config(**base, views=3))


def test_killed_build_resumes_and_matches_a_fresh_build(folder_dataset, tmp_path, monkeypatch):
    images = load_image_set(folder_dataset, "train")
    teacher = resolve_teacher("efficientnet_lite0", size=32)
    dataset = ViewDataset(images, {"teacher": teacher.preprocess}, view_sampler(Config()), progress=False)
    data = {"path": str(folder_dataset)}
    fresh = TeacherCache.build(tmp_path / "fresh", teacher, dataset, 2, data, chunk=5, progress=False)

    import mobilekd.teacher_cache as cache_module

    calls = {"n": 0}
    real = cache_module.embed_views

    def dies_on_third_chunk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_module, "embed_views", dies_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        TeacherCache.build(tmp_path / "killed", teacher, dataset, 2, data, chunk=5, progress=False)
    assert sorted(p.name for p in (tmp_path / "killed" / "chunks").iterdir()) == ["0", "5"]
    with pytest.raises(MobileKDError, match="incomplete"):
        TeacherCache.open(tmp_path / "killed")
    monkeypatch.setattr(cache_module, "embed_views", real)
    resumed = TeacherCache.build(tmp_path / "killed", teacher, dataset, 2, data, chunk=5, progress=False)
    assert np.array_equal(np.asarray(resumed.embeddings), np.asarray(fresh.embeddings))
    expected = expected_manifest(teacher, dataset, 2, data)
    assert TeacherCache.open(tmp_path / "killed", expected).num_views == 2
    index, view = torch.tensor([3, 0]), torch.tensor([1, 0])
    assert torch.equal(resumed(index, view), torch.from_numpy(np.asarray(fresh.embeddings)[[3, 0], [1, 0]]))


def test_embed_cli_bad_input(tmp_path, capsys, folder_dataset):
    assert embed_main(["--data", str(folder_dataset), "--teacher", "efficientnet_lite0"]) == 2
    assert "--teacher-cache DIR" in capsys.readouterr().err
