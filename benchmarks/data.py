"""CIFAR-shaped augmentation (crop with padding 4, flip, normalize): batched tensor ops against
torchvision's per-sample transforms through a DataLoader.

python -m benchmarks.data [--images 10000] [--batch 256] [--workers 2]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.common import print_table
from isnm.data import augmented, normalized
from isnm.datafiles import CIFAR


def batched(images_uint8: torch.Tensor, batch: int) -> float:
    spec = CIFAR["cifar10"]
    mean, std = torch.tensor(spec["mean"]), torch.tensor(spec["std"])
    data = normalized(images_uint8.float() / 255.0, mean, std)  # normalized once, as isnm.data holds it
    generator = torch.Generator().manual_seed(0)
    began = time.perf_counter()
    for start in range(0, len(data), batch):
        augmented(data[start:start + batch], generator)
    return time.perf_counter() - began


def per_sample(images_uint8: torch.Tensor, batch: int, workers: int) -> float:
    import torchvision.transforms as T
    from PIL import Image

    spec = CIFAR["cifar10"]
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(spec["mean"], spec["std"])])
    arrays = images_uint8.permute(0, 2, 3, 1).numpy()

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(arrays)

        def __getitem__(self, i):
            return transform(Image.fromarray(arrays[i]))

    loader = torch.utils.data.DataLoader(Images(), batch_size=batch, num_workers=workers)
    began = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (args.images, 3, 32, 32), dtype=np.uint8))
    ours, theirs = [], []
    for _ in range(3):  # alternate, keep the best of three of each
        ours.append(batched(images, args.batch))
        theirs.append(per_sample(images, args.batch, args.workers))
    fast, slow = args.images / min(ours), args.images / min(theirs)
    print_table(f"Augmenting {args.images} CIFAR-shaped images, batch {args.batch} (best of 3, alternating)",
                ["method", "images/s", "speed-up"],
                [["batched tensor ops (isnm.data)", f"{fast:,.0f}", f"{fast / slow:.1f}x"],
                 [f"torchvision per-sample, DataLoader({args.workers} workers)", f"{slow:,.0f}", "1.0x"]])


if __name__ == "__main__":
    main()
