"""Planner batches from cached vision tokens instead of pixels.

Stages 2-3 freeze the vision encoder (eval mode, no gradients), so a frame's encoder output never
changes during them. A planner window reads 3 views x context frames; on the demo the encoder is
~90 % of a window's cost (`bench/planner.py`: 934 vs 90 ms per 48 windows, forward + backward), and
most frames fall in several windows. :class:`VisionTokenCache` encodes every frame once;
:class:`PlannerWindows` serves the windows with those tokens, so the planner sees many more windows
in the same time. For a model whose action head reads the readers (``llm.action_reads_readers``)
the cache also holds each frame's :meth:`LMGenDrive.planner_readers`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

from storage.atomic import atomic_path

if TYPE_CHECKING:
    from lmgendrive.model import LMGenDrive
    from lmgendrive.train.data import DriveDataset

log = logging.getLogger(__name__)

ENCODE_BATCH = 64  # frames (x views) per encoder call while filling the cache


class _AllFrames(Dataset):
    """Every frame of ``dataset``'s scenes, in (scene, frame) order: (views, H, W, 3) uint8."""

    def __init__(self, dataset: DriveDataset):
        self.dataset = dataset
        self.index = [(s, i) for s, scene in enumerate(dataset.scenes) for i in range(len(scene))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> np.ndarray:
        return self.dataset.frames(*self.index[k])


class VisionTokenCache:
    """:meth:`LMGenDrive.vision_tokens` of every frame of some scenes as one (frames, N, D) tensor,
    and where the model's action head reads them its readers' values (frames, 7); ``offsets[s]`` is
    scene s's first row. Build it with :meth:`build`."""

    def __init__(
        self, tokens: torch.Tensor, offsets: np.ndarray, readers: torch.Tensor | None = None
    ):
        self.tokens, self.offsets, self.readers = tokens, offsets, readers

    @classmethod
    def build(
        cls, model: LMGenDrive, dataset: DriveDataset, workers: int = 0, path: Path | None = None
    ) -> VisionTokenCache:
        """Encode every frame of ``dataset``'s scenes in eval mode (the frozen encoder's mode in
        stages 2-3). With ``path``: reuse the file there if it was made by the same encoder weights
        from the same scenes (stages 2 and 3 share one), else write it (atomically)."""
        offsets = np.cumsum([0] + [len(scene) for scene in dataset.scenes])
        key = _cache_key(model, dataset)
        if path is not None and path.is_file():
            with safe_open(path, "pt") as f:
                if (f.metadata() or {}).get("key") == key:
                    log.info("vision tokens from %s", path)
                    names = f.keys()
                    readers = f.get_tensor("readers") if "readers" in names else None
                    return cls(f.get_tensor("tokens"), offsets, readers)
        tokens, readers = _encode_all(model, dataset, workers)
        cache = cls(tokens, offsets, readers)
        if path is not None:
            tensors = {"tokens": cache.tokens}
            if cache.readers is not None:
                tensors["readers"] = cache.readers
            with atomic_path(path) as partial:
                save_file(tensors, partial, metadata={"key": key})
        return cache

    def frames(self, scene: int, frames: list[int]) -> torch.Tensor:
        """Tokens (len(frames), N, D) of frames ``frames`` of scene ``scene``."""
        return self.tokens[self._rows(scene, frames)]

    def frame_readers(self, scene: int, frame: int) -> torch.Tensor | None:
        """The readers' values (7,) of frame ``frame`` of scene ``scene``, None if not cached."""
        return None if self.readers is None else self.readers[self._rows(scene, [frame])[0]]

    def _rows(self, scene: int, frames: list[int]) -> torch.Tensor:
        return int(self.offsets[scene]) + torch.as_tensor(frames)


def _cache_key(model: LMGenDrive, dataset: DriveDataset) -> str:
    """sha256 of the encoder's weights, whether the readers' values are cached, the image size and
    the scenes' names and lengths."""
    digest = hashlib.sha256()
    for name, value in sorted(model.vision.state_dict().items()):
        digest.update(name.encode())
        digest.update(
            value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        )
    layout = [
        model.llm.reader_branch is not None,
        list(model.config.image_size),
        list(model.config.vision_views),
        [[s.name, len(s)] for s in dataset.scenes],
    ]
    digest.update(json.dumps(layout).encode())
    return digest.hexdigest()


@torch.no_grad()
def _encode_all(
    model: LMGenDrive, dataset: DriveDataset, workers: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    from lmgendrive.frames import to_pixels
    from storage.progress import progress

    frames = _AllFrames(dataset)
    loader = DataLoader(
        frames, batch_size=ENCODE_BATCH, num_workers=workers, prefetch_factor=2 if workers else None
    )
    started, parts, readers, mode = time.perf_counter(), [], [], model.vision.training
    model.vision.eval()
    try:
        with progress(len(frames), "vision tokens", "frame") as bar:
            for batch in loader:
                pixels = to_pixels(batch[:, None], model.config.image_size, model.device, "frames")
                tokens, light, lane = model.encode_frames(pixels)
                parts.append(tokens[:, 0].cpu())
                read = model.planner_readers(light[:, 0], None if lane is None else lane[:, 0])
                readers.append(None if read is None else read.cpu())
                bar.update(len(batch))
    finally:
        model.vision.train(mode)
    tokens = torch.cat(parts)
    log.info(
        "vision tokens of %d frames (%.0f MB) in %.0f s",
        len(frames),
        tokens.numel() * tokens.element_size() / 2**20,
        time.perf_counter() - started,
    )
    return tokens, None if readers[0] is None else torch.cat(readers)


class PlannerWindows(Dataset):
    """``dataset``'s windows (same indices) as planner batches read them: the context frames'
    cached tokens in place of pixels (and the readers' values at the current frame where cached),
    the first step's targets, no future video."""

    def __init__(self, dataset: DriveDataset, cache: VisionTokenCache):
        self.dataset, self.cache = dataset, cache

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, k: int) -> dict:
        s, t = self.dataset.index[k]
        frames = self.dataset.context_frames(t)
        window = {"tokens": self.cache.frames(s, frames), **self.dataset.targets(s, t, steps=1)}
        readers = self.cache.frame_readers(s, frames[-1])
        return window if readers is None else {**window, "readers": readers}
