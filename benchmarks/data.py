"""Claim: the RecordIO loader delivers at least 0.9x the images/s of bare Pillow decoding.

On the same generated JPEGs (``--images`` aligned-face-sized images, ``--size`` px, written once
as an image folder and packed to ``train.rec`` by ``marginkit.data.recordio.pack_folder``):

* ``floor``: the encoded bytes already in memory, decoded with Pillow to RGB and the pixels
  materialised as a uint8 array, by W processes (a ``multiprocessing`` pool, each
  process its contiguous share): what no loader that decodes JPEGs can beat;
* ``recordio``: :class:`marginkit.data.InsightFaceDataModule`'s training loader with W workers
  (read by offset, decode, random flip, collate, hand the uint8 batch to the main process:
  what is copied to the GPU, which normalises it there);
* ``image_folder``: :class:`marginkit.data.ImageFolderDataModule`'s training loader with W
  workers on the same images as files (float32 batches, normalised in the workers);
* ``step`` (with ``--step``): images/s of one training step of IResNet-50 + ArcFace at batch
  ``--step-batch`` on ``--device`` (forward + backward + SGD), what the loader must keep up with.

W = 0 runs the loaders in the main process (no worker hand-over) against one decoding
process. Loader rates count the images after the first batch (the workers' start-up is not timed).
Each variant runs in a fresh process, ``--repeats`` times; the best rate is kept and the
ratios to the floor are printed from one run.

Usage::

    python benchmarks/data.py                           # W = 1, 2 on 4096 images of 112x112
    python benchmarks/data.py --workers 1 2 4 8 --step --device cuda
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import _harness as harness
import numpy as np

LOADERS = ("recordio", "image_folder")


def _make_data(folder: Path, n_images: int, size: int, per_identity: int = 16) -> None:
    from PIL import Image

    from marginkit.data.recordio import pack_folder

    rng = np.random.default_rng(0)
    images = folder / "images"
    for index in range(n_images):
        identity = images / f"id_{index // per_identity:05d}"
        identity.mkdir(parents=True, exist_ok=True)
        # smooth random faces-like content: a low-resolution pattern upsampled (JPEG-typical size)
        small = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        picture = Image.fromarray(small).resize((size, size), Image.BILINEAR)
        picture.save(identity / f"{index:06d}.jpg", quality=90)
    pack_folder(images, folder / "rec" / "train")


def _decode_share(paths: list[str]) -> int:
    import io

    from PIL import Image

    encoded = [Path(path).read_bytes() for path in paths]  # in memory before the clock starts
    barrier.wait()
    for data in encoded:
        with Image.open(io.BytesIO(data)) as image:
            np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
    return len(encoded)


def _init(shared_barrier) -> None:
    global barrier
    barrier = shared_barrier


def _floor(folder: Path, workers: int) -> float:
    from marginkit.data.image_folder import scan_image_folder

    workers = max(1, workers)  # W = 0 (the loaders decode in the main process): one process

    paths = [p for ps in scan_image_folder(folder / "images").values() for p in ps]
    shares = [
        paths[len(paths) * w // workers : len(paths) * (w + 1) // workers] for w in range(workers)
    ]
    context = multiprocessing.get_context("fork")
    start_barrier = context.Barrier(workers + 1)
    with context.Pool(workers, initializer=_init, initargs=(start_barrier,)) as pool:
        pending = pool.map_async(_decode_share, shares)
        start_barrier.wait()  # every process has read its bytes
        started = time.perf_counter()
        count = sum(pending.get())
        elapsed = time.perf_counter() - started
    return count / elapsed


def _loader(variant: str, folder: Path, workers: int, batch_size: int) -> float:
    import torch

    torch.set_num_threads(1)
    common = {
        "image_size": None,
        "batch_size": batch_size,
        "num_workers": workers,
        "horizontal_flip": True,
    }
    if variant == "recordio":
        from marginkit.data import InsightFaceDataModule

        datamodule = InsightFaceDataModule(str(folder / "rec"), **common)
    else:
        from marginkit.data import ImageFolderDataModule

        datamodule = ImageFolderDataModule(
            str(folder / "images"),
            val_ratio=0.0,
            test_ratio=0.0,
            baseline_size=None,
            val_root=str(folder / "images"),
            test_root=str(folder / "images"),
            **common,
        )
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    count, started = 0, None
    for inputs, _ in loader:
        if started is None:
            started = time.perf_counter()
            continue
        count += inputs.shape[0]
    return count / (time.perf_counter() - started)


def _step(device: str, batch_size: int, iters: int) -> float:
    import torch

    from marginkit.losses import ArcFaceLoss
    from marginkit.models.backbones import IResNet

    backbone = IResNet(layers=[3, 4, 14, 3], embedding_dim=512).to(device)
    head = ArcFaceLoss(in_features=512, num_classes=10_000, s=64.0, m=0.5).to(device)
    params = [*backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    images = torch.randn(batch_size, 3, 112, 112, device=device)
    labels = torch.randint(0, 10_000, (batch_size,), device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def step() -> None:
        with autocast:
            loss = head(backbone(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    result = harness.measure_step(step, iters=iters, warmup=2, device=device)
    return batch_size / (result["median_ms"] / 1000.0)


def _child(args: argparse.Namespace) -> None:
    folder = Path(args.folder)
    if args.variant == "floor":
        rate = _floor(folder, args.workers[0])
    elif args.variant == "step":
        rate = _step(args.device, args.step_batch, args.iters)
    else:
        rate = _loader(args.variant, folder, args.workers[0], args.batch_size)
    print(json.dumps({"images_per_s": rate}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step", action="store_true", help="also time a training step")
    parser.add_argument("--step-batch", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        _child(args)
        return
    harness.print_header(
        f"data loading: {args.images} JPEGs of {args.size}x{args.size}, batch {args.batch_size}, "
        f"best of {args.repeats} fresh processes, {os.cpu_count()} CPUs"
    )
    script = os.path.abspath(__file__)
    with tempfile.TemporaryDirectory() as folder:
        _make_data(Path(folder), args.images, args.size)
        rows = []
        for workers in args.workers:
            rates = {}
            for variant in ("floor", *LOADERS):
                runs = [
                    harness.run_variant_or_exit(
                        script,
                        [
                            "--variant",
                            variant,
                            "--folder",
                            folder,
                            "--workers",
                            str(workers),
                            "--batch-size",
                            str(args.batch_size),
                        ],
                        name=f"{variant} W={workers}",
                    )["images_per_s"]
                    for _ in range(args.repeats)
                ]
                rates[variant] = max(runs)
            rows.append((workers, rates))
            print(
                f"W={workers}: floor {rates['floor']:8.0f} img/s | recordio {rates['recordio']:8.0f}"
                f" ({rates['recordio'] / rates['floor']:.2f}x) | image_folder "
                f"{rates['image_folder']:8.0f} ({rates['image_folder'] / rates['floor']:.2f}x)"
            )
            sys.stdout.flush()
        if args.step:
            step = harness.run_variant_or_exit(
                script,
                [
                    "--variant",
                    "step",
                    "--device",
                    args.device,
                    "--step-batch",
                    str(args.step_batch),
                    "--iters",
                    str(args.iters),
                    "--folder",
                    folder,
                ],
                name="step",
            )["images_per_s"]
            print(
                f"IResNet-50 + ArcFace step at batch {args.step_batch} on {args.device}: "
                f"{step:.0f} img/s needed from the loader"
            )
    worst = min(rates["recordio"] / rates["floor"] for _, rates in rows)
    print(f"recordio / floor, worst over W: {worst:.2f}x (target >= 0.9x)")


if __name__ == "__main__":
    main()
