"""benchmarks.html_report: the self-contained page (sections, data: URIs only, changed top-1 count, worst classes,
intervals) from a tiny synthetic data set, and benchmarks.recall --save-embeddings / ci95 on a tiny checkpoint."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from conftest import make_image

CLASSES, PER_CLASS = 4, 4


@pytest.fixture
def tiny_set(tmp_path):
    """ROOT/c<k>/<i>.png: 4 classes x 4 images of 32x32, and the image set (all of it) as the report loads it."""
    from mobilekd.data import load_image_set

    root = tmp_path / "images"
    for c in range(CLASSES):
        for i in range(PER_CLASS):
            make_image(str(root / f"c{c}" / f"{i}.png"), seed=10 * c + i, size=(32, 32))
    return root, load_image_set(root, "all")


def brute_top1(embeddings: np.ndarray) -> np.ndarray:
    """The nearest other image by cosine, by plain numpy: the reference the report's numbers must match."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(axis=1)


@pytest.fixture
def inputs(tmp_path, tiny_set):
    """Consistent embeddings (float = class direction + noise; int8 = float + more noise; teacher = cleaner),
    the recall / latency dicts naming them, and the npz folder."""
    from benchmarks.recall import save_embeddings_npz, symmetric_metrics

    root, images = tiny_set
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(CLASSES, 8))
    noisy = lambda scale: (centres[images.labels] + rng.normal(scale=scale, size=(len(images), 8))).astype(np.float32)  # noqa: E731
    student = noisy(1.2)
    models = {"teacher": noisy(0.3), "student": student,
              "student int8": (student + rng.normal(scale=0.5, size=student.shape)).astype(np.float32)}
    folder = tmp_path / "embeddings"
    rows = []
    for i, (label, emb) in enumerate(models.items()):
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        models[label] = emb
        save_embeddings_npz(folder / f"m{i}.npz", emb, images.labels, images.keys)
        rows.append({"model": label, "runtime": "torch-eager", "embeddings": f"m{i}.npz",
                     "symmetric": symmetric_metrics(emb, images.labels)})
    recall = {"kind": "recall", "machine": {}, "data": {"path": str(root), "split": "all"}, "results": rows}
    latency = {"kind": "latency", "machine": {},
               "models": [{"label": "student", "file_bytes": 900_000, "macs": 13_300_000},
                          {"label": "student int8", "file_bytes": 360_000, "macs": 13_300_000}],
               "results": [{"model": "student", "runtime": "torch-eager", "threads": 2, "median_ms": 5.0},
                           {"model": "student", "runtime": "torch-eager", "threads": 1, "median_ms": 6.6},
                           {"model": "student int8", "runtime": "litert-xnnpack", "threads": 1, "median_ms": 0.98}]}
    return {"root": root, "images": images, "models": models, "recall": recall, "latency": latency, "folder": folder}


def write(out, inputs, **overrides):
    from benchmarks.html_report import write_html_report

    history = [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.3, "test": {"R@1": 40.0, "MAP@R": 20.0}}]
    kwargs = dict(recall=inputs["recall"], latency=inputs["latency"], embeddings_dir=inputs["folder"],
                  data=str(inputs["root"]), split="all", history=history, teacher="teacher", float_student="student",
                  quantized="student int8", queries=5, seed=1)
    kwargs.update(overrides)
    return write_html_report(out, **kwargs)


def test_page_has_every_section_and_only_embedded_images(tmp_path, inputs):
    paths = write(tmp_path / "report", inputs)
    assert paths["html"] == tmp_path / "report" / "index.html" and paths["markdown"] == tmp_path / "report" / "report.md"
    page = paths["html"].read_text()
    for heading in ("Summary", "Retrieval examples", "Top-1 changed by quantization", "retrieves worst",
                    "Recall@1 vs latency", "Training"):
        assert f"{heading}</h2>" in page, heading
    sources = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page)
    assert len(sources) == 5 and all(s.startswith("data:image/png;base64,") for s in sources)  # 5 figures
    assert "<link" not in page and "url(" not in page and "@import" not in page
    assert "imagesLoaded" in page and "imagesTotal" in page
    for stem in ("retrieval", "changed_top1", "worst_classes", "recall_vs_latency", "training"):
        assert paths[stem].read_bytes()[:4] == b"\x89PNG" and f"]({paths[stem].name})" in paths["markdown"].read_text()
    # the summary: median at the fewest threads, the file size and MACs of the latency result
    markdown = paths["markdown"].read_text()
    assert "| student | float student |" in markdown and "6.6 (1 t)" in markdown and "| 0.90 | 13.3 |" in markdown
    assert not [p for p in (tmp_path).iterdir() if p.name.startswith(".report")]  # no work folder left behind


def test_intervals_contain_the_point_estimate(inputs):
    for row in inputs["recall"]["results"]:
        for name in ("R@1", "MAP@R"):
            lo, hi = row["symmetric"]["ci95"][name]
            value = row["symmetric"][name]
            assert lo <= value <= hi and (lo < hi or value in (0.0, 100.0))  # a spread unless all queries agree


def test_changed_top1_count_matches_brute_force(tmp_path, inputs):
    changed = int((brute_top1(inputs["models"]["student"]) != brute_top1(inputs["models"]["student int8"])).sum())
    assert 0 < changed < len(inputs["images"])  # the fixture makes some, not all, change
    page = write(tmp_path / "report", inputs)["html"].read_text()
    assert f"Changed top-1: {changed} of {len(inputs['images'])} queries" in page

    same = write(tmp_path / "same", inputs, quantized="student")["html"].read_text()
    assert "Changed top-1: none of the 16 queries" in same


def test_worst_classes_match_brute_force(tmp_path, inputs):
    labels = inputs["images"].labels
    hit = labels[brute_top1(inputs["models"]["student"])] == labels
    per_class = [100.0 * hit[labels == c].mean() for c in range(CLASSES)]
    expected = sorted(range(CLASSES), key=lambda c: (per_class[c], c))
    markdown = write(tmp_path / "report", inputs)["markdown"].read_text()
    section = markdown.split("retrieves worst")[1].split("## ")[0]
    rows = [line.split(" | ") for line in section.splitlines() if re.match(r"\| c\d ", line)]
    assert [r[0].strip("| ") for r in rows] == [f"c{c}" for c in expected]
    assert [float(r[1]) for r in rows] == pytest.approx([round(per_class[c], 1) for c in expected])


def test_cli_bad_input_is_one_error_line_and_nothing_written(tmp_path, inputs, capsys):
    from benchmarks.html_report import main

    recall = tmp_path / "recall.json"
    recall.write_text(json.dumps(inputs["recall"]))
    base = ["--recall", str(recall), "--embeddings", str(inputs["folder"]), "--data", str(inputs["root"]),
            "--split", "all", "--float", "student"]
    for extra, says in ((["--quantized", "nope"], "'nope' is not in the recall result"),
                        (["--queries", "0"], "--queries must be >= 1"),
                        (["--history", str(tmp_path / "missing.json")], "--history file not found")):
        assert main([*base, *extra, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and says in err[0], err
        assert not (tmp_path / "out").exists()
    (inputs["folder"] / "m1.npz").write_bytes(b"not an npz")
    assert main([*base, "--out", str(tmp_path / "out")]) == 2
    assert "is not an embeddings npz" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_cli_writes_the_report(tmp_path, inputs, capsys):
    from benchmarks.html_report import main

    recall, latency = tmp_path / "recall.json", tmp_path / "latency.json"
    recall.write_text(json.dumps(inputs["recall"]))
    latency.write_text(json.dumps(inputs["latency"]))
    out = tmp_path / "out"
    assert main(["--recall", str(recall), "--latency", str(latency), "--embeddings", str(inputs["folder"]),
                 "--data", str(inputs["root"]), "--split", "all", "--float", "student", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "index.html")
    assert "No quantized model" in (out / "index.html").read_text()
    (out / "mine.txt").write_text("a user's file")  # a folder holding files it did not write is never replaced
    assert main(["--recall", str(recall), "--embeddings", str(inputs["folder"]), "--data", str(inputs["root"]),
                 "--split", "all", "--float", "student", "--out", str(out)]) == 2
    assert "mine.txt" in capsys.readouterr().err and (out / "mine.txt").exists()


def test_recall_saves_embeddings_and_intervals(tmp_path, tiny_set):
    import torch

    from benchmarks.recall import main
    from mobilekd.metrics import retrieval_metrics
    from mobilekd.models import create_model, save_model

    root, images = tiny_set
    torch.manual_seed(0)
    ckpt = save_model(create_model("mobilenetv1_025", embed_dim=16, size=32), tmp_path / "tiny")
    out, folder = tmp_path / "recall.json", tmp_path / "emb"
    assert main([str(ckpt), "--data", str(root), "--split", "all", "--labels", "tiny student/v1", "--threads", "1",
                 "--save-embeddings", str(folder), "--out", str(out), "--quiet"]) == 0
    row = json.loads(out.read_text())["results"][0]
    assert row["embeddings"] == "tiny-student-v1.npz"
    with np.load(folder / row["embeddings"]) as npz:
        assert npz["embeddings"].dtype == np.float32 and npz["embeddings"].shape == (len(images), 16)
        assert npz["labels"].tolist() == images.labels.tolist() and npz["paths"].tolist() == images.keys
        assert retrieval_metrics(npz["embeddings"], npz["labels"])["R@1"] == row["symmetric"]["R@1"]
    for name in ("R@1", "MAP@R"):
        lo, hi = row["symmetric"]["ci95"][name]
        assert lo <= row["symmetric"][name] <= hi


@pytest.mark.slow  # starts a browser
def test_page_renders_every_image_in_headless_chromium(tmp_path, inputs):
    browser = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(name)), None)
    if browser is None:
        pytest.skip("no chromium binary on PATH (apt-get install -y chromium)")
    page = write(tmp_path / "report", inputs)["html"]
    dom = subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", "--virtual-time-budget=5000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    total = re.search(r'data-images-total="(\d+)"', dom)
    assert loaded and total, dom[:500]
    assert int(loaded.group(1)) == int(total.group(1)) == 5
