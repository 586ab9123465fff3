"""Fine-tune SegVol on your own labelled CTs: nnU-Net v2 raw dataset in, a checkpoint and before/after scores out.

Actions (the workflow's own_data rules run them in this order; docs/own-data.md):
  demo      write the demo's synthetic nnU-Net v2 raw dataset (own_data.source: demo)
  prepare   check your dataset and normalize it into one store with a train/validation/test split
  finetune  fine-tune released weights (or ours) on the train split; the best validated weights are kept
  evaluate  Dice and NSD of the starting and the fine-tuned model on the held-out cases, with CIs, + figure

Input: an nnU-Net v2 raw dataset folder (dataset.json with channel_names {"0": "CT"}, labels
{"background": 0, name: id}, file_ending, numTraining; imagesTr/<case>_0000.nii.gz; labelsTr/<case>.nii.gz),
or a folder of images/ + labels/ (same file names) with a names file (own_data.names). Any problem
(missing pair, label off its image's grid, a label id that no name has, a non-CT channel, no case) stops
`prepare` with one line naming the file; nothing is written.

example:
  segvol own-data prepare --source /data/nnUNet_raw/Dataset501_Liver --out data/zarr/own.zarr
  segvol own-data finetune --zarr data/zarr/own.zarr --weights SegVol_v1.pth --out models/own/model.safetensors \\
      --model '{"preset": "base", "text_encoder": "clip"}' --params '{"steps": 300, "validate_every": 50}'
  segvol own-data evaluate --zarr data/zarr/own.zarr --weights SegVol_v1.pth \\
      --checkpoint models/own/model.safetensors --out results/own/before_after.csv \\
      --figure results/own/before_after.png --model '{"preset": "base", "text_encoder": "clip"}'
  segvol categories --checkpoint models/own/model.safetensors    # your categories are listed
  segvol predict ct.nii.gz -o liver.nii.gz --checkpoint models/own/model.safetensors --text liver
"""

from __future__ import annotations

import argparse

from segvol.cli_options import add_common_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    fmt = argparse.RawDescriptionHelpFormatter

    demo = actions.add_parser(
        "demo",
        formatter_class=fmt,
        help="write the demo's synthetic nnU-Net v2 raw dataset",
        description="Synthetic abdominal CT phantoms (own_data.demo: n_cases, labels, domain,"
        " shape_max) in nnU-Net v2's raw layout.",
    )
    demo.add_argument("--out", required=True, help="dataset folder to write (replaced atomically)")
    add_common_arguments(demo, params="own_data", seed="seed of the phantoms")

    prepare = actions.add_parser(
        "prepare",
        formatter_class=fmt,
        help="check and normalize your dataset into one store",
        description="Check an nnU-Net v2 raw dataset (or images/ + labels/ with "
        "own_data.names) and write one normalized store\nwith a seeded train/validation/test "
        "split (own_data.test_fraction, own_data.validation_fraction).",
    )
    prepare.add_argument(
        "--source", required=True, help="nnU-Net v2 raw dataset folder, or a folder of images/ + labels/"
    )
    prepare.add_argument("--out", required=True, help="store to write, e.g. data/zarr/own.zarr")
    prepare.add_argument(
        "--normalize", default="{}", metavar="JSON", help="the `normalize:` config block (chunks, shards, compression)"
    )
    add_common_arguments(prepare, params="own_data", seed="seed of the split")

    train = actions.add_parser(
        "finetune",
        formatter_class=fmt,
        help="fine-tune released weights on the train split",
        description="Fine-tune --weights on the train split of the store (the finetune "
        "stage's step:\n"
        "text/box/point prompts, optional pseudo labels). own_data.freeze_encoder: true, false"
        " or auto\n(= frozen on a CPU); a trained encoder learns at lr x encoder_lr_scale. "
        "Every validate_every steps the\nmean Dice on the validation split is measured "
        "(<out stem>.validation.csv) and the best weights are kept.",
    )
    train.add_argument("--zarr", required=True, help="the store of `prepare`")
    train.add_argument("--pseudo", default=None, help="its pseudo-label store (own_data.pseudo_weight > 0)")
    train.add_argument(
        "--weights",
        required=True,
        help="starting weights: SegVol_v1.pth, pytorch_model.bin, hf://BAAI/SegVol or ours (.safetensors)",
    )
    train.add_argument("--out", required=True, metavar="MODEL", help="output model .safetensors")
    add_common_arguments(
        train, params="own_data", model=True, device=True, threads=True, seed="seed of batches, views and prompts"
    )

    evaluate = actions.add_parser(
        "evaluate",
        formatter_class=fmt,
        help="before vs after on the held-out cases",
        description="Dice/NSD of --weights (before) and --checkpoint (after) on the test "
        "split, per category and prompt kind\n(own_data.prompts) with bootstrap CIs; writes "
        "--out, <out stem>_cases.csv and --figure.",
    )
    evaluate.add_argument("--zarr", required=True, help="the store of `prepare`")
    evaluate.add_argument("--weights", required=True, help="the starting weights (as given to finetune)")
    evaluate.add_argument("--checkpoint", required=True, help="the fine-tuned model")
    evaluate.add_argument("--out", required=True, help="summary CSV, e.g. results/own/before_after.csv")
    evaluate.add_argument("--figure", required=True, help="figure PNG")
    add_common_arguments(
        evaluate, params="own_data", model=True, device=True, threads=True, seed="seed of the point prompts"
    )


def run(args) -> int:
    from segvol.settings import stage_settings

    settings = stage_settings("own_data", args.params)
    if args.action == "demo":
        from segvol.own_data.demo import write_demo

        print(write_demo(args.out, args.seed, settings["demo"], progress=not args.quiet))
    elif args.action == "prepare":
        from segvol.own_data.prepare import prepare

        normalize = stage_settings("normalize", args.normalize, flag="--normalize")
        print(prepare(args.source, args.out, args.seed, settings, normalize, progress=not args.quiet))
    elif args.action == "finetune":
        from segvol.own_data.train import finetune_own

        model = stage_settings("model", args.model, flag="--model")
        finetune_own(
            args.zarr,
            args.pseudo,
            args.out,
            settings,
            model,
            args.weights,
            seed=args.seed,
            threads=args.threads,
            device=args.device,
        )
    else:
        from segvol.own_data.evaluation import before_after

        model = stage_settings("model", args.model, flag="--model")
        before_after(
            args.zarr,
            args.weights,
            args.checkpoint,
            args.out,
            args.figure,
            settings,
            model,
            seed=args.seed,
            device=args.device,
        )
    return 0
