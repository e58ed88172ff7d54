"""mobilekd.compat: transformations, ensemble/uncertainty/rejection math, the CLI end to end, bad inputs."""

import json

import numpy as np
import pytest

from mobilekd import compat
from mobilekd.compat import EmbeddingSet, FitConfig
from mobilekd.errors import MobileKDError


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models and matrices: one thread is fastest, and far faster on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------ fitting


def test_fit_recovers_a_known_linear_map():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(24, 12)).astype(np.float32)
    g_train, g_test = unit(rng.normal(size=(600, 24))), unit(rng.normal(size=(200, 24)))
    q_train, q_test = unit(g_train @ w), unit(g_test @ w)
    transform, stats = compat.fit_transform(g_train, q_train, FitConfig(epochs=40))
    assert stats["train_mean_cosine"] > 0.999
    held_out = compat.apply_transform(transform, g_test)
    assert (held_out * q_test).sum(axis=1).min() > 0.995
    fitted = transform.net[0].weight.detach().numpy().T  # [24, 12], equal to w up to a positive scale
    cosine = (fitted * w).sum() / np.linalg.norm(fitted) / np.linalg.norm(w)
    assert cosine > 0.99
    assert np.abs(transform.net[0].bias.detach().numpy()).max() < 0.05 * np.abs(fitted).max()


def test_mlp_head_and_kl_term_fit_too():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(16, 8)).astype(np.float32)
    g = unit(rng.normal(size=(300, 16)))
    q = unit(np.tanh(g @ w))
    transform, stats = compat.fit_transform(g, q, FitConfig(head="mlp", hidden=64, epochs=60, lr=3e-3,
                                                            kl_weight=0.5, batch_size=64))
    assert stats["train_mean_cosine"] > 0.95
    assert stats["history"][-1]["kl"] < stats["history"][0]["kl"]


def test_transform_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(2)
    g, q = unit(rng.normal(size=(50, 10))), unit(rng.normal(size=(50, 6)))
    transform, _ = compat.fit_transform(g, q, FitConfig(epochs=2))
    compat.save_transform(transform, tmp_path / "t", {"gallery": "g"})
    loaded, meta = compat.load_transform(tmp_path / "t")
    assert meta["in_dim"] == 10 and meta["out_dim"] == 6 and meta["gallery"] == "g"
    np.testing.assert_allclose(compat.apply_transform(loaded, g), compat.apply_transform(transform, g), atol=1e-6)
    with pytest.raises(MobileKDError, match="fitted on 10-d"):
        compat.apply_transform(loaded, unit(rng.normal(size=(5, 7))))


# ------------------------------------------------------------------------------------------ ensemble math


def test_ensemble_and_uncertainty_by_hand():
    t1 = np.array([[1, 0], [0, 1]], np.float32)
    t2 = np.array([[1, 0], [1, 0]], np.float32)
    np.testing.assert_allclose(compat.ensemble([t1, t2]), [[1, 0], [np.sqrt(0.5), np.sqrt(0.5)]], atol=1e-6)
    u = compat.uncertainty([t1, t2])
    np.testing.assert_allclose(u, [0.0, 0.5], atol=1e-6)
    # variance of unit vectors == 1 - |mean|^2 == half the mean squared pairwise distance
    rng = np.random.default_rng(3)
    ts = [unit(rng.normal(size=(7, 5))) for _ in range(4)]
    mean = np.mean(ts, axis=0)
    pairwise = np.mean([((a - b) ** 2).sum(axis=1) for a in ts for b in ts], axis=0) / 2
    np.testing.assert_allclose(compat.uncertainty(ts), 1 - (mean ** 2).sum(axis=1), atol=1e-5)
    np.testing.assert_allclose(compat.uncertainty(ts), pairwise, atol=1e-5)


def test_rejection_order_rounds_and_breaks_ties_stably():
    keep = compat.rejection_order(np.array([0.1, 0.9, 0.5, 0.9]), 0.5)
    assert keep.tolist() == [True, False, True, False]
    assert compat.rejection_order(np.array([0.3, 0.3, 0.3]), 0.34).tolist() == [True, True, False]
    assert compat.rejection_order(np.arange(10.0), 0.0).all()
    with pytest.raises(MobileKDError, match="fraction"):
        compat.rejection_order(np.arange(3.0), 1.0)


def angles(degrees):
    r = np.radians(degrees)
    return np.stack([np.cos(r), np.sin(r)], axis=1).astype(np.float32)


def test_rejection_by_hand():
    # class 0 at 0 and 40 degrees, class 1 at 20 (the confuser) and 90 degrees
    x, labels = angles([0, 40, 20, 90]), np.array([0, 0, 1, 1])
    none = compat.metrics_with_gallery_subset(x, labels, x, np.ones(4, bool))
    assert none["R@1"] == 0.0 and none["queries"] == 4
    # the confuser leaves the gallery: items 0 and 1 find each other; it still queries (its class-mate at 90
    # degrees is kept, but 0 and 1 are nearer: a miss); the item at 90 degrees has no class-mate left: not scored
    one = compat.metrics_with_gallery_subset(x, labels, x, np.array([True, True, False, True]))
    assert one["R@1"] == pytest.approx(200 / 3) and one["queries"] == 3
    # class 1 wholly rejected: its queries have nothing relevant left and leave the mean
    two = compat.metrics_with_gallery_subset(x, labels, x, np.array([True, True, False, False]))
    assert two["R@1"] == 100.0 and two["queries"] == 2
    curve = compat.rejection_curve(x, labels, x, np.array([0.0, 0.1, 0.9, 0.5]), [0.0, 0.25, 0.5], random_seeds=2)
    assert [r["R@1"] for r in curve] == pytest.approx([0.0, 200 / 3, 100.0])
    assert [r["gallery_kept"] for r in curve] == [4, 3, 2]
    assert "random_R@1" in curve[1]


def brute_force_r1(query, labels, gallery, keep):
    hits, counted = [], 0
    for i in range(len(query)):
        candidates = [j for j in range(len(gallery)) if keep[j] and j != i]
        if not any(labels[j] == labels[i] for j in candidates):
            continue
        counted += 1
        best = max(candidates, key=lambda j: (float(query[i] @ gallery[j]), -j))
        hits.append(labels[best] == labels[i])
    return 100.0 * np.mean(hits), counted


def test_rejection_matches_brute_force_on_random_data():
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(6), 5)
    q, g = unit(rng.normal(size=(30, 8))), unit(rng.normal(size=(30, 8)))
    for fraction in (0.1, 0.3, 0.6):
        keep = compat.rejection_order(rng.random(30), fraction)
        m = compat.metrics_with_gallery_subset(q, labels, g, keep)
        r1, counted = brute_force_r1(q, labels, g, keep)
        assert m["queries"] == counted
        assert m["R@1"] == pytest.approx(r1)


# ------------------------------------------------------------------------------------------ bad inputs


def test_bad_inputs_give_clear_errors(tmp_path):
    e = unit(np.eye(3))
    a = EmbeddingSet("a", ["x", "y", "z"], e)
    with pytest.raises(MobileKDError, match="different order"):
        compat.check_aligned(a, [EmbeddingSet("b", ["y", "x", "z"], e)])
    with pytest.raises(MobileKDError, match="has 2 embeddings but a has 3"):
        compat.check_aligned(a, [EmbeddingSet("b", ["x", "y"], e[:2])])
    with pytest.raises(MobileKDError, match="different images"):
        compat.check_aligned(a, [EmbeddingSet("b", ["x", "y", "w"], e)])
    with pytest.raises(MobileKDError, match="more than once"):
        EmbeddingSet("b", ["x", "x", "z"], e)
    with pytest.raises(MobileKDError, match="NaN"):
        EmbeddingSet("b", ["x", "y", "z"], np.array([[1, 0], [np.nan, 1], [0, 1]]))
    with pytest.raises(MobileKDError, match="at least 2 gallery models, got 1"):
        compat.ensemble([e])
    with pytest.raises(MobileKDError, match="at least 2 gallery models, got 1"):
        compat.uncertainty([e])
    with pytest.raises(MobileKDError, match="differ in shape"):
        compat.ensemble([e, e[:, :2]])
    with pytest.raises(MobileKDError, match="3 gallery embeddings but 2 query"):
        compat.fit_transform(e, e[:2])
    nan_file = tmp_path / "nan.npz"
    np.savez(nan_file, keys=np.array(["x", "y"]), embeddings=np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(MobileKDError, match="NaN"):
        compat.read_embedding_file(nan_file)
    short = tmp_path / "short.npz"
    np.savez(short, keys=np.array(["x", "y", "z"]), embeddings=np.eye(2))
    with pytest.raises(MobileKDError, match="2 embeddings but 3 keys"):
        compat.read_embedding_file(short)
    with pytest.raises(MobileKDError, match="no embedding for 1 of the 2 images"):
        compat.select_images(a, ["x", "q"])


# ------------------------------------------------------------------------------------------ CLI


@pytest.fixture
def tiny_models(tmp_path):
    import torch

    from mobilekd.models import create_model, save_model

    paths = {}
    for name, dim, seed in (("student", 16, 0), ("student_v2", 16, 1), ("student_wide", 24, 2),
                            ("g1", 32, 3), ("g2", 20, 4)):
        torch.manual_seed(seed)
        paths[name] = str(save_model(create_model("mobilenetv1_025", embed_dim=dim, size=32), tmp_path / name))
    return paths


def test_cli_end_to_end(tmp_path, folder_dataset, tiny_models, capsys):
    data = str(folder_dataset)
    g2_file = str(tmp_path / "g2.npz")
    assert compat.main(["embed", tiny_models["g2"], "--data", data, "--split", "all", "--out", g2_file]) == 0
    with np.load(g2_file) as f:
        assert f["embeddings"].shape == (48, 20) and len(f["keys"]) == 48

    out = tmp_path / "fit"
    assert compat.main(["fit", "--query", tiny_models["student"], "--gallery", tiny_models["g1"], g2_file,
                        "--data", data, "--epochs", "5", "--out", str(out)]) == 0
    manifest = json.loads((out / "compat.json").read_text())
    assert [t["in_dim"] for t in manifest["transforms"]] == [32, 20]
    for t in manifest["transforms"]:
        assert (out / f"{t['transform']}.safetensors").is_file() and (out / f"{t['transform']}.json").is_file()
    assert (out / "fit.md").is_file()

    ev = tmp_path / "eval"
    assert compat.main(["evaluate", "--transforms", str(out), "--data", data, "--reject", "0,10,25",
                        "--random-seeds", "2", "--out", str(ev)]) == 0
    result = json.loads((ev / "evaluate.json").read_text())
    kinds = [r["kind"] for r in result["rows"]]
    assert kinds.count("asymmetric-single") == 2 and kinds.count("asymmetric-ensemble") == 1
    assert [r["gallery_kept"] for r in result["rejection"]] == [24, 22, 18]
    assert "best single gallery model" in result["verdict"]
    md = (ev / "evaluate.md").read_text()
    assert "ensemble of 2" in md and "| 25 % |" in md

    up = tmp_path / "up"
    assert compat.main(["upgrade", "--old", tiny_models["student"], "--new", tiny_models["student"],
                        "--data", data, "--out", str(up)]) == 0
    assert json.loads((up / "upgrade.json").read_text())["compatible"] is True
    assert "compatible: no re-index needed" in capsys.readouterr().out
    assert compat.main(["upgrade", "--old", tiny_models["student"], "--new", tiny_models["student_wide"],
                        "--data", data]) == 0
    assert "re-index required" in capsys.readouterr().out
    assert compat.main(["upgrade", "--old", tiny_models["student"], "--new", tiny_models["student_v2"],
                        "--data", data, "--tolerance", "100"]) == 0
    assert "compatible: no re-index needed" in capsys.readouterr().out
    # one checkpoint at two sizes: small queries against a gallery it embedded larger
    sizes = tmp_path / "sizes"
    assert compat.main(["upgrade", "--old", tiny_models["student"], "--old-size", "48", "--new", tiny_models["student"],
                        "--new-size", "32", "--data", data, "--out", str(sizes)]) == 0
    two_sizes = json.loads((sizes / "upgrade.json").read_text())
    assert (two_sizes["old_size"], two_sizes["new_size"]) == (48, 32) and two_sizes["new->old"] is not None
    assert "at 48 px" in (sizes / "upgrade.md").read_text()
    assert compat.main(["upgrade", "--old", tiny_models["student"], "--old-size", "32", "--new", tiny_models["student"],
                        "--new-size", "32", "--data", data, "--out", str(sizes)]) == 0
    assert json.loads((sizes / "upgrade.json").read_text())["old->old"] == two_sizes["new->new"]
    capsys.readouterr()

    assert compat.main(["teacher", "--student", tiny_models["student"], tiny_models["student_wide"],
                        "--teacher", tiny_models["student_v2"], "--data", data, "--out", str(up)]) == 0
    rows = json.loads((up / "teacher.json").read_text())["students"]
    assert rows[0]["student->teacher"] is not None and rows[1]["student->teacher"] is None


def test_cli_bad_inputs(tmp_path, folder_dataset, tiny_models, capsys):
    data = str(folder_dataset)
    code = compat.main(["fit", "--query", tiny_models["student"], "--gallery", tiny_models["g1"], "--data", data,
                        "--out", str(tmp_path / "x")])
    assert code == 2 and "at least 2 gallery models, got 1" in capsys.readouterr().err
    code = compat.main(["fit", "--query", tiny_models["student"], "--gallery", tiny_models["g1"], tiny_models["g1"],
                        "--data", data, "--out", str(tmp_path / "x")])
    assert code == 2 and "listed twice" in capsys.readouterr().err
    # an embedding file from other images
    other = tmp_path / "other.npz"
    np.savez(other, keys=np.array(["a.png", "b.png"]), embeddings=np.eye(2, dtype=np.float32))
    code = compat.main(["fit", "--query", tiny_models["student"], "--gallery", tiny_models["g1"], str(other),
                        "--data", data, "--out", str(tmp_path / "x")])
    assert code == 2 and "no embedding for 24 of the 24 images" in capsys.readouterr().err
    # a gallery file whose dims do not fit the fitted transformation
    out = tmp_path / "fit"
    assert compat.main(["fit", "--query", tiny_models["student"], "--gallery", tiny_models["g1"], tiny_models["g2"],
                        "--data", data, "--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    code = compat.main(["evaluate", "--transforms", str(out), "--data", data,
                        "--gallery", tiny_models["g2"], tiny_models["g1"]])
    assert code == 2 and "fitted on 32-d" in capsys.readouterr().err
    code = compat.main(["evaluate", "--transforms", str(tmp_path), "--data", data])
    assert code == 2 and "compat.json" in capsys.readouterr().err
