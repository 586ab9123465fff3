"""List every category name SegVol knows: canonical name, synonyms, and the datasets carrying it.

The vocabulary comes from the synonym table (segvol.vocabulary), the label maps of the
dataset registry, the demo's synthetic datasets, and any normalized stores you name. Use these
names as `segvol predict --text NAME`; predict warns about a name outside this list (refuses it
with --strict). Registry datasets whose labels come from the release itself (labels: null, e.g.
HaN-Seg, TotalSegmentator) add their names once you pass their normalized store.

examples:
  segvol categories                                   # the whole vocabulary, one line each
  segvol categories --zarr data/zarr/*.zarr --json    # plus your stores, machine-readable
  segvol categories kidney                            # only names containing 'kidney'
  segvol categories --checkpoint models/own/model.safetensors   # plus what that model was fine-tuned on
"""

from __future__ import annotations


def add_arguments(parser):
    parser.add_argument("contains", nargs="?", help="show only categories whose name or synonym contains this text")
    parser.add_argument(
        "--registry", default=None, help="dataset registry (default: the repository's config/datasets.yaml)"
    )
    parser.add_argument(
        "--config", default=None, help="workflow config with synth.datasets (default: config/config.yaml)"
    )
    parser.add_argument("--zarr", nargs="*", default=[], help="normalized stores whose categories to add")
    parser.add_argument(
        "--checkpoint",
        nargs="*",
        default=[],
        help="models whose recorded vocabulary to add (e.g. one fine-tuned on your own data)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON {name: {synonyms, datasets}}")


def run(args) -> int:
    import json

    from segvol.vocabulary import DEFAULT_CONFIG, DEFAULT_REGISTRY, known_categories, normalize_text

    vocabulary = known_categories(
        args.registry or DEFAULT_REGISTRY, args.config or DEFAULT_CONFIG, args.zarr, args.checkpoint
    )
    if args.contains:
        needle = normalize_text(args.contains)
        vocabulary = {
            name: entry
            for name, entry in vocabulary.items()
            if any(needle in spelling for spelling in (name, *entry["synonyms"]))
        }
    if args.json:
        print(json.dumps(vocabulary, indent=1))
        return 0
    width = max((len(name) for name in vocabulary), default=4)
    print(f"{'category':{width}s}  synonyms | datasets")
    for name, entry in vocabulary.items():
        synonyms = ", ".join(entry["synonyms"]) or "-"
        datasets = ", ".join(entry["datasets"]) or "-"
        print(f"{name:{width}s}  {synonyms} | {datasets}")
    print(f"{len(vocabulary)} categories")
    return 0
