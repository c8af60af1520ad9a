"""Training input pipeline throughput: the harness's DeiT loader against timm's create_loader (a benchmark, not a test).

    python tests/benchmarks/train_loader_vs_timm.py                       # generated folder, 2 workers, batch 64
    python tests/benchmarks/train_loader_vs_timm.py --folder DIR --workers 8 --batch-size 128 --batches 30 --rounds 7

What is measured: images/s delivered by the training DataLoader, with the full DeiT augmentation stack
(RandomResizedCrop bicubic, flip, RandAugment rand-m9-mstd0.5-inc1, colour jitter 0.3, random erasing
0.25), on the same image folder with the same worker count and batch size, for

* the harness, built exactly as a fine-tune job builds it: ``bench.data.load_data`` (imagefolder read
  through its folder index, ``bench.data.index``: one parquet file listing every image, built once; items
  are opened by path), ``make_torch_datasets`` with the resolved ``finetune: deit`` recipe, and
  ``bench.train.loaders.train_loader`` over ``EpochBatches`` (repeated augmentation on, per-sample seeds,
  ``Runtime(workers=N)``: persistent workers, prefetch 4);
* timm: ``timm.data.create_dataset`` on DIR/train and ``timm.data.create_loader`` with the same transform
  settings, taken from the recipe (no prefetcher: the batches come out as the harness's do; timm's
  DataLoader keeps torch's default prefetch of 2).

Each round builds a fresh loader per side (the harness's for epoch = round, as successive epochs of a job),
lets it warm up (workers start, the first batches are not timed), then times a fixed number of batches;
rounds interleave the sides, alternating which goes first (H T, T H, H T, ...) to cancel drift. The figure
is the ratio of the two medians, harness / timm; images per CPU second (workers + this process, from /proc)
is printed next to it, as other load on the machine disturbs it less than wall-clock time. Mixup/CutMix run
on the whole batch in the training loop (on the device), so they are excluded from both sides.
``--profile-items`` adds a single-process breakdown (CPU ms per item, RNGs reseeded so both sides draw the
same augmentations): the index's path lookup alone, path + open + decode, and the whole ``__getitem__``.

Recent Pillow (13.0.0 checked) raises on ``ImageOps.posterize(img, 0)``, and timm's RandAugment asks for
0 bits when the sampled magnitude clips at 10 (m9, mstd0.5: ~0.15% of images), so timm's loader dies now and
then; the harness guards against it (``bench.data.transforms.guard_timm_posterize``: 0 bits -> black image,
as older Pillow did), and the script installs that guard before either side builds its transform, so both
run the same ops.

Without ``--folder`` a folder of smooth random JPEGs of ImageNet-like size and weight (400-500 x 330-400 px,
quality 90, about 100 KiB each) is generated under ``--workdir`` (a temp dir by default; each image from its
own seed, in parallel) and reused when already there. The harness's folder index is written to
``--workdir``/<folder name>.index.parquet (rebuilt when the folder changed), as the pipeline's index step does.
Prints figures; asserts nothing (timings depend on the machine).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: the main process only waits on workers

import argparse
import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CLAIM = 0.95  # the harness should deliver at least this fraction of timm's throughput


def guard_posterize() -> str | None:
    """The harness's guard (bench.data.transforms.guard_timm_posterize) installed before either side builds
    its transform, so both run the same ops."""
    import PIL

    from bench.data.transforms import guard_timm_posterize

    if not guard_timm_posterize():
        return None
    return (
        f"posterize guard ON (both sides): Pillow {PIL.__version__} rejects posterize(bits=0), which timm's "
        f"PosterizeIncreasing asks for at magnitude 10 (~0.15% of images); done as older Pillow did it (black)"
    )


#: the octaves of smooth content (cells across the width, amplitude), then luma noise: JPEGs of about 100 KiB
OCTAVES = ((4, 90.0), (16, 45.0), (64, 20.0))
LUMA_NOISE = 30.0


def make_image(seed: tuple[int, ...]) -> Image.Image:
    """One smooth random image of ImageNet-like size: upsampled noise at a few octaves (shapes + mid-frequency
    texture) and a little luma noise, so the JPEG is neither trivially compressible nor pure noise."""
    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(400, 501)), int(rng.integers(330, 401))
    acc = np.full((h, w, 3), 128.0 - sum(a for _, a in OCTAVES), np.float32)
    for cells, amp in OCTAVES:
        small = rng.integers(0, 256, (max(2, cells * h // w), cells, 3), dtype=np.uint8)
        acc += np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC)) * np.float32(amp / 127.5)
    acc += rng.standard_normal((h, w, 1), dtype=np.float32) * np.float32(LUMA_NOISE)  # chroma is subsampled anyway
    return Image.fromarray(np.clip(acc, 0, 255, out=acc).astype(np.uint8))


def _write_image(job: tuple[str, tuple[int, ...]]) -> None:
    make_image(job[1]).save(job[0], quality=90)


def generate_folder(
    root: Path,
    n_classes: int,
    n_train: int,
    n_val: int,
    seed: int,
    val_split: str = "validation",
    processes: int | None = None,
) -> Path:
    """FOLDER/train/<class>/*.jpg and FOLDER/<val_split>/<class>/*.jpg; image i of a split is drawn from the seed
    (seed, split, i), so the folder is the same whatever the number of ``processes`` (default: all CPUs)."""
    import multiprocessing

    folder = root / f"jpeg-c{n_classes}-train{n_train}-{val_split}{n_val}-s{seed}"
    done = folder / ".complete"
    if done.exists():
        return folder
    jobs = []
    for k, (split, n) in enumerate((("train", n_train), (val_split, n_val))):
        for c in range(min(n, n_classes)):
            (folder / split / f"class{c:03d}").mkdir(parents=True, exist_ok=True)
        jobs += [
            (str(folder / split / f"class{i % n_classes:03d}" / f"{split}_{i:06d}.jpg"), (seed, k, i)) for i in range(n)
        ]
    with multiprocessing.get_context("fork").Pool(processes or os.cpu_count()) as pool:
        for _ in pool.imap_unordered(_write_image, jobs, chunksize=64):
            pass
    done.write_text("ok\n")
    return folder


def harness_side(folder: Path, image_size: int, index_path: Path) -> tuple[Any, dict[str, Any], Callable[..., Any]]:
    """The training dataset and loader factory as a fine-tune job builds them (bench.train.loop.train_model),
    the folder read through its index at ``index_path`` (built there when missing or stale)."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from bench.config import resolve_recipe
    from bench.data import load_data
    from bench.data.transforms import make_torch_datasets
    from bench.runtime import Runtime
    from bench.train.loaders import EpochBatches, random_transform, train_loader

    recipe, _ = resolve_recipe(("finetune", "deit"))
    bundle = load_data({"source": "imagefolder", "path": str(folder)}, index_path)
    train_ds, _val = make_torch_datasets(
        bundle, image_size=image_size, in_chans=3, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, recipe=recipe
    )

    def make(batch_size: int, workers: int, epoch: int = 0) -> Any:
        # epoch e of a job (seed 0): round r times epoch r, so rounds draw different batches, as timm's do
        sampler = EpochBatches(
            len(train_ds), batch_size, 0, 0, 1, int(recipe["repeated_aug"]), sample_seeds=random_transform(train_ds)
        )
        sampler.set_epoch(epoch)
        return train_loader(train_ds, sampler, Runtime(workers=workers))

    return train_ds, recipe, make


def timm_side(folder: Path, image_size: int, recipe: dict[str, Any]) -> tuple[Any, Callable[..., Any], str]:
    import inspect

    import torch
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_dataset, create_loader

    dataset = create_dataset("", root=str(folder / "train"), split="train", is_training=True)
    repeats = int(recipe["repeated_aug"])
    # timm asserts num_aug_repeats == 0 outside distributed mode (its RepeatAugSampler needs a process group)
    src = inspect.getsource(create_loader)
    supported = "RepeatAugment not currently supported in non-distributed" not in src
    kwargs: dict[str, Any] = dict(
        input_size=(3, image_size, image_size),
        is_training=True,
        use_prefetcher=False,
        no_aug=False,
        re_prob=float(recipe["re_prob"]),
        re_mode=recipe["re_mode"],
        re_count=int(recipe["re_count"]),
        scale=tuple(recipe["scale"]) if recipe["scale"] else None,
        ratio=tuple(recipe["ratio"]) if recipe["ratio"] else None,
        hflip=recipe["hflip"] if recipe["hflip"] is not None else 0.5,
        color_jitter=recipe["color_jitter"],
        auto_augment=recipe["auto_augment"],
        interpolation=recipe["interpolation"],
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        distributed=False,
        pin_memory=torch.cuda.is_available(),  # as the harness's train_loader: False on CPU
    )
    if supported and repeats > 1:
        kwargs["num_aug_repeats"] = repeats
        note = f"timm: num_aug_repeats={repeats}"
    else:
        note = (
            f"timm: no repeated augmentation (create_loader supports num_aug_repeats only when distributed); "
            f"the harness samples with repeats={repeats}, which does not change the per-image decode+augment cost"
        )

    def make(batch_size: int, workers: int, epoch: int = 0) -> Any:
        return create_loader(dataset, batch_size=batch_size, num_workers=workers, **kwargs)

    return dataset, make, note


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (Linux /proc; nan where unreadable)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def time_loader(loader: Any, warmup: int, batches: int) -> tuple[float, float, float]:
    """(images per wall second, images per CPU second of the workers and this process, images per CPU second of
    the workers alone (nan without workers)) over ``batches`` batches after ``warmup`` untimed ones (worker
    start-up falls there). The CPU figures are what other load on the machine disturbs least."""
    it = iter(loader)
    try:
        for _ in range(warmup):
            next(it)
        pids = [w.pid for w in getattr(it, "_workers", [])]
        n = 0
        c0, p0, t0 = _cpu_s(pids), time.process_time(), time.perf_counter()
        for _ in range(batches):
            x, _y = next(it)
            n += x.shape[0]
        dt = time.perf_counter() - t0
        workers_cpu = _cpu_s(pids) - c0
        cpu = workers_cpu + time.process_time() - p0
    finally:
        del it
        gc.collect()
    return n / dt, n / cpu, (n / workers_cpu if pids and workers_cpu > 0 else float("nan"))


def profile_items(fns: dict[str, Callable[[int], Any]], idx: list[int], reps: int = 3) -> dict[str, float]:
    """Per-item CPU ms in this process for each fn over the same indices, best of ``reps`` interleaved passes.
    The RNGs (python, numpy, torch) are reseeded before each pass, so both sides draw the same augmentations."""
    import random

    import torch

    n = len(idx)
    best = {k: float("inf") for k in fns}
    for fn in fns.values():
        fn(idx[0])  # warm caches
    for _ in range(reps):
        for k, fn in fns.items():
            random.seed(0)
            np.random.seed(0)
            torch.manual_seed(0)
            t0 = time.process_time()
            for i in idx:
                fn(i)
            best[k] = min(best[k], (time.process_time() - t0) / n * 1e3)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, default=None, help="DIR/train/<class>/*, DIR/validation (or val)/<class>/*")
    ap.add_argument("--workdir", type=Path, default=None, help="where to generate the folder (default: a temp dir)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--train-images", type=int, default=1000)
    ap.add_argument("--val-images", type=int, default=100)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=3, help="untimed batches per round")
    ap.add_argument("--batches", type=int, default=10, help="timed batches per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile-items", type=int, default=100, help="items for the __getitem__ breakdown (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    workdir = args.workdir or Path(tempfile.gettempdir()) / "tokenbench-loader-bench"
    workdir.mkdir(parents=True, exist_ok=True)

    import timm
    import torch

    torch.set_num_threads(1)
    guard = guard_posterize()
    if args.folder is None:
        t0 = time.perf_counter()
        folder = generate_folder(workdir, args.classes, args.train_images, args.val_images, args.seed)
        print(f"folder: {folder} (ready in {time.perf_counter() - t0:.1f}s)", flush=True)
    else:
        folder = args.folder
        print(f"folder: {folder}", flush=True)
    files = sorted((folder / "train").glob("*/*"))
    sizes = [Image.open(f).size for f in files[:200]]
    print(
        f"train images: {len(files)}, mean file {np.mean([f.stat().st_size for f in files]) / 1024:.0f} KiB, "
        f"mean size {np.mean([s[0] for s in sizes]):.0f}x{np.mean([s[1] for s in sizes]):.0f} px",
        flush=True,
    )

    h_ds, recipe, h_make = harness_side(folder, args.image_size, workdir / f"{folder.name}.index.parquet")
    t_ds, t_make, note = timm_side(folder, args.image_size, recipe)
    t_make(args.batch_size, 0)  # create_loader installs the transform on the dataset
    h_tf = [repr(t) for t in h_ds.transform.transforms[1:]]  # [0] is the harness's ConvertMode("RGB")
    t_tf = [repr(t) for t in t_ds.transform.transforms]
    n_batches = len(h_make(args.batch_size, 0))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"torch {torch.__version__}, timm {timm.__version__}, cpus {os.cpu_count()} (load average {load}), "
        f"workers {args.workers}, batch {args.batch_size}, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, "
        f"warm-up {args.warmup} + timed {args.batches} batches per round ({n_batches} in an epoch)"
    )
    print(
        f"recipe finetune/deit: auto_augment={recipe['auto_augment']} color_jitter={recipe['color_jitter']} "
        f"re_prob={recipe['re_prob']} re_mode={recipe['re_mode']} interpolation={recipe['interpolation']} "
        f"scale={recipe['scale']} ratio={recipe['ratio']} hflip={recipe['hflip']} "
        f"repeated_aug={recipe['repeated_aug']}"
    )
    print(f"transforms identical (after the harness's ConvertMode): {'yes' if h_tf == t_tf else 'NO'}")
    if h_tf != t_tf:
        print("  harness:", h_tf, "\n  timm:   ", t_tf)
    print(note)
    if guard:
        print(guard)
    print("excluded from both sides: Mixup/CutMix (applied on the batch in the training loop, on the device)")
    if args.warmup + args.batches > n_batches:
        raise SystemExit(
            f"--warmup + --batches ({args.warmup + args.batches}) exceeds one epoch ({n_batches} "
            f"batches); generate more images or time fewer batches"
        )

    if args.profile_items:
        n = min(args.profile_items, len(h_ds))
        ms = profile_items(
            {
                "harness: index path, no open": lambda i: os.path.join(h_ds.image_root, h_ds.paths[i].as_py()),
                "harness: path + open + decode": h_ds._image,
                "timm: reader + open + convert": lambda i: Image.open(t_ds.reader[i][0]).convert("RGB"),
                "harness: __getitem__": lambda i: h_ds[i],
                "timm: __getitem__": lambda i: t_ds[i],
            },
            np.random.default_rng(args.seed).permutation(len(h_ds))[:n].tolist(),
        )
        print(f"__getitem__ in one process, {n} items, same augmentation draws, best of 3 (CPU ms/item):")
        for k, v in ms.items():
            print(f"  {k:<31} {v:7.3f}")
        fetch = ms["harness: path + open + decode"] / ms["timm: reader + open + convert"]
        item = ms["harness: __getitem__"] / ms["timm: __getitem__"]
        print(f"  harness / timm: fetch+decode {fetch:.3f}, __getitem__ {item:.3f}", flush=True)

    rates: dict[str, list[float]] = {"harness": [], "timm": []}
    per_cpu: dict[str, list[float]] = {"harness": [], "timm": []}
    for r in range(args.rounds):
        order = (("harness", h_make), ("timm", t_make))
        for side, make in order if r % 2 == 0 else order[::-1]:  # H T, T H, H T, ...: cancels drift
            loader = make(args.batch_size, args.workers, r)
            rate, rate_cpu, _ = time_loader(loader, args.warmup, args.batches)
            del loader
            gc.collect()
            rates[side].append(rate)
            per_cpu[side].append(rate_cpu)
            print(f"round {r + 1}: {side:<8} {rate:7.1f} img/s   ({rate_cpu:6.1f} img per CPU-s)", flush=True)
    busy = os.getloadavg()[0] > (os.cpu_count() or 1)
    print(
        f"load average now: {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
        + (" (above the cpu count: other work shares the machine, the wall-clock figures are noisy)" if busy else "")
    )
    h, t = statistics.median(rates["harness"]), statistics.median(rates["timm"])
    hc, tc = statistics.median(per_cpu["harness"]), statistics.median(per_cpu["timm"])
    print(f"median: harness {h:.1f} img/s, timm {t:.1f} img/s; per CPU-s: harness {hc:.1f}, timm {tc:.1f}")
    verdict = "holds" if h / t >= CLAIM else "does NOT hold"
    print(f"ratio harness / timm = {h / t:.3f} (claim: >= {CLAIM}) -> {verdict}; per CPU-s {hc / tc:.3f}")


if __name__ == "__main__":
    main()
