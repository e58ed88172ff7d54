"""Self-check of an imported ``.tflite`` classifier: PyTorch's class probabilities vs the LiteRT interpreter's.

Both see the same real photos (the data set's images, else scikit-image's sample photos), the whole image
resized to the file's input size. A float file gets ``(pixel - 127.5) / 127.5``; a quantised file gets the raw
0..255 pixels as its uint8 input and PyTorch gets exactly the values that input stands for,
``scale * (q - zero_point)``, so the comparison measures the weights, not the normalisation. Quantised outputs
are dequantised with their own scale / zero point.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from mobilekd.data.views import center_view, render
from mobilekd.preprocess import TF_MOBILENET_MEAN, TF_MOBILENET_STD, Preprocess

SAMPLE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
FLOAT_MIN_COSINE = 0.9999


def sample_photos(data: str | None = None, count: int = 8) -> tuple[list[Image.Image], str]:
    """Real photos for the check and a line saying where they came from."""
    if data:
        from mobilekd.data.image_sets import load_image_set

        images = load_image_set(data, "all")
        chosen = np.linspace(0, len(images) - 1, min(count, len(images))).round().astype(int)
        return [images.load_image(int(i)).convert("RGB") for i in chosen], f"{len(chosen)} images of {data}"
    try:
        import skimage.data
    except ImportError:
        return [], "skipped: scikit-image (the dev extra) is not installed and no --data was given"
    photos = []
    for name in SAMPLE_PHOTOS:
        try:
            photos.append(Image.fromarray(getattr(skimage.data, name)()).convert("RGB"))
        except Exception:  # a sample that scikit-image would have to download
            continue
    if not photos:
        return [], "skipped: scikit-image has none of its sample photos here and no --data was given"
    return photos, f"scikit-image sample photos ({len(photos)})"


def pixels(image: Image.Image, size: int) -> np.ndarray:
    """The whole image resized to size x size (bilinear), 0..255 as float32, HWC."""
    identity = Preprocess(size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return render(image, center_view(*image.size), identity).numpy().transpose(1, 2, 0)


def compare(classifier, network: torch.nn.Module, photos: list[Image.Image], threads: int = 1) -> dict:
    """Per-photo cosine of the two probability vectors and top-1 agreement, plus summary numbers."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=classifier.path, num_threads=max(1, threads))
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    mean = np.float32(TF_MOBILENET_MEAN[0])
    std = np.float32(TF_MOBILENET_STD[0])
    cosines, same_top1 = [], []
    network.eval()
    for photo in photos:
        raw = pixels(photo, classifier.input_size)
        if classifier.input_quantization is not None:
            scale, zero = classifier.input_quantization
            fed = np.clip(np.round(raw), 0, 255).astype(source["dtype"])
            real = np.float32(scale) * (fed.astype(np.float32) - np.float32(zero))
        else:
            real = (raw - mean) / std
            fed = real.astype(source["dtype"])
        interpreter.set_tensor(source["index"], fed[None])
        interpreter.invoke()
        theirs = interpreter.get_tensor(target["index"])[0].astype(np.float64)
        out_scale, out_zero = target["quantization"]
        if target["dtype"] != np.float32 and out_scale:
            theirs = out_scale * (theirs - out_zero)
        with torch.no_grad():
            logits = network(torch.from_numpy(real.transpose(2, 0, 1).copy())[None])
        ours = torch.softmax(logits.double(), dim=1)[0].numpy()
        cosines.append(float(ours @ theirs / (np.linalg.norm(ours) * np.linalg.norm(theirs) + 1e-12)))
        same_top1.append(int(ours.argmax()) == int(theirs.argmax()))
    return {"images": len(photos), "mean_cosine": float(np.mean(cosines)) if cosines else None,
            "min_cosine": float(np.min(cosines)) if cosines else None,
            "top1_agreement": float(np.mean(same_top1)) if same_top1 else None}
