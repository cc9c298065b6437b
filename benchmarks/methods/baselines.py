"""Published baselines: a cached baseline copied into the repository, with its sha256.

    python -m benchmarks.methods.baselines benchmarks/methods/configs/decide.yaml

copies every seed's cached baseline of the config (its own model and the claim rows' models)
to ``<baselines_dir>/<model>-seed<k>.pt`` and records in ``<baselines_dir>/manifest.json`` its
sha256, the config key it was trained under (``BenchConfig.baseline_key``), its epochs and
final test accuracy. A run whose config names ``baselines_dir`` then reads the baseline from
there when the key matches (another setting trains its own, in the cache), after checking the
sha256: a file that changed since it was published is refused, naming the file and the fix.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from regprune.io import atomic_write_text, read_weights_only

from .config import BenchConfig, load_config

MANIFEST = "manifest.json"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_name(config: BenchConfig, seed: int) -> str:
    width = "".join(f"-{k}{v}" for k, v in sorted(config.model.kwargs.items()))
    return f"{config.model.name}{width}-seed{seed}.pt"


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def find(config: BenchConfig, seed: int) -> dict[str, Any] | None:
    """The manifest entry of this (model, seed) when it was trained under this config's key."""
    if config.baselines_dir is None:
        return None
    folder = Path(config.baselines_dir)
    entry = read_manifest(folder).get(file_name(config, seed))
    if entry is None or entry["key"] != config.baseline_key(seed):
        return None
    return entry | {"path": str(folder / file_name(config, seed))}


def load(config: BenchConfig, entry: dict[str, Any]) -> dict[str, Any]:
    """``{'model', 'meta'}`` of a published baseline, its sha256 checked against the manifest.

    Raises:
        ValueError: the file's sha256 is not the manifest's (naming both, and the fix).
    """
    path = Path(entry["path"])
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is listed in {path.parent / MANIFEST} but missing: restore it "
            f"(git checkout -- {path}) or drop its entry from the manifest"
        )
    actual = sha256(path)
    if actual != entry["sha256"]:
        raise ValueError(
            f"{path}: sha256 {actual} is not the one in {path.parent / MANIFEST} "
            f"({entry['sha256']}): the file changed since it was published. Restore it "
            f"(git checkout -- {path}), or republish it on purpose with "
            "python -m benchmarks.methods.baselines CONFIG"
        )
    return read_weights_only(path, "a published benchmark baseline ({'model', 'meta'})")


def publish(config: BenchConfig, seed: int, cached_file: Path) -> dict[str, Any]:
    """Copy ``cached_file`` (this config's baseline of ``seed``) into ``baselines_dir``."""
    if config.baselines_dir is None:
        raise ValueError(f"config {config.name}: set baselines_dir to publish baselines")
    folder = Path(config.baselines_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / file_name(config, seed)
    shutil.copyfile(cached_file, target)
    meta = read_weights_only(target, "a cached benchmark baseline")["meta"]
    entry = {
        "sha256": sha256(target),
        "key": config.baseline_key(seed),
        "config": config.name,
        "model": config.model.name,
        "model_kwargs": config.model.kwargs,
        "dataset": config.data.name,
        "train_subset": config.data.subset,
        "seed": seed,
        "epochs": meta.get("epochs"),
        "test_acc": meta.get("test_acc"),
    }
    manifest = read_manifest(folder) | {target.name: entry}
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return entry


def main(argv: list[str] | None = None) -> None:
    from .phases import baseline_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--seeds", type=int, nargs="*")
    parser.add_argument("--dir", help="publish there instead of the config's baselines_dir")
    parser.add_argument("--cache-dir", help="the cache the baselines were trained in")
    args = parser.parse_args(argv)
    config = load_config(args.config, cache_dir=args.cache_dir)
    if args.dir is not None:
        config = replace(config, baselines_dir=args.dir)
    models = [config.model] + [r.model for r in config.runs if r.model is not None]
    for model in {json.dumps([m.name, m.kwargs], sort_keys=True): m for m in models}.values():
        own = config.for_model(model)
        for seed in args.seeds if args.seeds is not None else config.seeds:
            cached_file = baseline_path(own, seed)
            if not cached_file.is_file():
                print(f"{file_name(own, seed)}: not trained yet ({cached_file})")
                continue
            entry = publish(own, seed, cached_file)
            print(f"{file_name(own, seed)}: {entry['sha256'][:12]} acc {entry['test_acc']}")


if __name__ == "__main__":
    main()
