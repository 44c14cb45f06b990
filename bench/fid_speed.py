"""FID feature extraction speed: our Inception extractor against pytorch-fid's own loop, same
images.

Renders procedural frames, writes them as PNG files, then times (after a warm-up) pytorch-fid's
``get_activations`` (PIL decoding in its DataLoader, with ``num_workers`` as its command line picks
and with none) and our extractor on the same files (OpenCV decoding, batched tensors). The ratio is
taken against the faster of the two pytorch-fid runs. Both load the same seeded random
Inception weights from a temporary ``$TORCH_HOME``; random weights cost the same as real ones. The
features are checked to agree. The last line printed is a JSON object; ``ours_over_pytorch_fid``
(images/s ratio, goal >= 1.0) is the figure the QA issue asks for.

    python bench/fid_speed.py [--images 240] [--size 128] [--batch-size 50] [--device cpu]
        [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

# the seeded random Inception weights are a test fixture (tests/qa_weights.py), not shipped code
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _render(n: int, size: int) -> np.ndarray:
    from scenes.procedural.drive import DriveSpec, ProceduralScene

    scene = ProceduralScene(DriveSpec(1, 3, "clear_noon", n // 3 + 1, (size, size)))
    return np.stack([scene.images(i)[v] for i in range(len(scene)) for v in scene.views][:n])


def _pytorch_fid_workers() -> int:
    """pytorch-fid's default: min(8, CPUs available)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return min(cpus, 8)


def _best(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=240)
    p.add_argument("--size", type=int, default=128)
    p.add_argument(
        "--batch-size", type=int, default=50, help="both loops (pytorch-fid's default is 50)"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3, help="timed runs each; the best counts")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="lmgd-bench-qa-") as tmp:
        root = Path(tmp)
        os.environ["TORCH_HOME"] = str(root / "torch")
        from pytorch_fid.fid_score import get_activations
        from pytorch_fid.inception import InceptionV3
        from qa_weights import write_inception_weights

        from qa.inception import load_inception

        write_inception_weights(root / "torch" / "hub" / "checkpoints")
        images = _render(args.images, args.size)
        files = []
        for i, img in enumerate(images):
            files.append(str(root / f"{i:05d}.png"))
            cv2.imwrite(files[-1], cv2.cvtColor(img, cv2.COLOR_RGB2BGR))

        device = torch.device(args.device)
        reference = InceptionV3([3]).to(device).eval()
        ours = load_inception(None, device)
        ours.batch_size = args.batch_size
        workers = _pytorch_fid_workers()

        def run_reference(num_workers: int = workers):
            return get_activations(
                files, reference, args.batch_size, 2048, str(device), num_workers
            )

        def run_ours():
            decoded = np.stack(
                [cv2.cvtColor(cv2.imread(f, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for f in files]
            )
            return ours(decoded)

        run_reference()  # warm-up: kernels, allocator, worker start-up paths
        run_ours()
        ref_s, ref_feats = _best(run_reference, args.repeats)
        ref0_s, _ = _best(lambda: run_reference(0), args.repeats)
        ours_s, our_feats = _best(run_ours, args.repeats)
        arrays_s, _ = _best(lambda: ours(images), args.repeats)
    diff = float(np.abs(our_feats - ref_feats).max() / np.abs(ref_feats).max())
    n = len(files)
    result = {
        "bench": "qa_inception",
        "images": n,
        "size": args.size,
        "batch_size": args.batch_size,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "pytorch_fid_num_workers": workers,
        "pytorch_fid_images_per_s": round(n / ref_s, 2),
        "pytorch_fid_no_workers_images_per_s": round(n / ref0_s, 2),
        "ours_images_per_s": round(n / ours_s, 2),
        "ours_from_decoded_arrays_images_per_s": round(n / arrays_s, 2),
        "max_relative_feature_difference": diff,
        "ours_over_pytorch_fid": round(min(ref_s, ref0_s) / ours_s, 3),
        "machine": f"{platform.machine()} cpus={os.cpu_count()}"
        + (f" {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
