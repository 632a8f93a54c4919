"""What a shard build tells its user: the closing summary (samples, skips, enlarged images) and why --strict
stopped. manifest.json's "upscaled" entry is made here from the per-shard counts."""
from pipeline import manifest as mf

SPLITS = ("train", "val")
SKIPS_SHOWN = 10


def strict_stop(name, reason, out, shards_done, split):
    """The message of a --strict stop: the input and why, on its own line, then what is kept and what to do."""
    kept = (f"the {shards_done} finished {split} shard(s) and manifest.json are kept, and --resume continues from "
            "there" if shards_done else "--resume continues from the start of this split")
    return (f"{name}: {reason}\n--strict: stopped at the first unusable input. Replace the file with a readable "
            f"copy and run the same command with --resume ({kept}; {out}), or build without --strict to skip such "
            "inputs and list them in manifest.json.")


def upscale_summary(man, size):
    """{"size": --size, split: {"images", "max_factor"}} of the images enlarged to reach --size, summed from the
    shard entries (a shard from before the count says 0)."""
    out = {"size": size}
    for split, entry in man["splits"].items():
        counts = [s.get("upscaled", {"images": 0, "max_factor": 1.0}) for s in entry["shards"]]
        out[split] = {"images": sum(c["images"] for c in counts),
                      "max_factor": max((c["max_factor"] for c in counts), default=1.0)}
    return out


def print_summary(man, *, made, secs, size, out):
    splits = man["splits"]
    print(f"done in {secs:.1f}s ({made / max(secs, 1e-9):.0f} img/s): "
          + ", ".join(f"{s} {splits[s]['num_samples']} samples in {len(splits[s]['shards'])} shards" for s in SPLITS)
          + f"; {len(man['skipped'])} inputs skipped")
    up = man["upscaled"]
    enlarged = sum(up[s]["images"] for s in SPLITS)
    if enlarged:  # small photos enlarged up to several times are blurry samples: the user should know how many
        print(f"  {enlarged:,} of {sum(splits[s]['num_samples'] for s in SPLITS):,} images were smaller than {size} "
              f"px on the shorter side and were enlarged to it (up to {max(up[s]['max_factor'] for s in SPLITS):.1f}x; "
              + ", ".join(f"{s} {up[s]['images']:,}" for s in SPLITS)
              + "); --max-upscale FACTOR skips those enlarged more than FACTOR times")
    for s in man["skipped"][:SKIPS_SHOWN]:
        print(f"  skipped {s['path']}: {s['reason']}")
    if len(man["skipped"]) > SKIPS_SHOWN:
        print(f"  ... and {len(man['skipped']) - SKIPS_SHOWN} more, listed in {mf.manifest_path(out)}")
