"""SimMIM pretraining of the 3D ViT image encoder on labelled and unlabelled CT stores.

Random crops/resizes of every case (train split of labelled stores, all of unlabelled ones)
are masked (60 % of mask patches by default) and reconstructed; the L1 loss is taken on the
masked voxels. The encoder is written as safetensors with `image_encoder.*` keys, which
`segvol finetune --encoder` loads. A killed run resumes from `<out>.ckpt/` automatically.

example:
  segvol pretrain --zarr data/zarr/abdomen_a.zarr data/zarr/unlabelled_ct.zarr \\
      --out models/pretrain/encoder.safetensors --threads 2 --seed 2023 \\
      --params '{"steps": 150, "batch_size": 4}' --model '{"preset": "tiny", "text_encoder": "minilm"}'
  (DDP: torchrun --standalone --nproc_per_node=8 -m segvol pretrain ...)
"""

from __future__ import annotations

from segvol.cli_options import add_common_arguments


def add_arguments(parser) -> None:
    parser.add_argument(
        "--zarr", nargs="+", required=True, metavar="STORE", help="normalized Zarr stores (data/zarr/<ds>.zarr)"
    )
    parser.add_argument("--out", required=True, metavar="ENCODER", help="output encoder .safetensors")
    add_common_arguments(
        parser,
        params="pretrain",
        model=True,
        device=True,
        threads=True,
        seed="seed of batches, masks, views and initialisation",
    )


def run(args) -> int:
    from segvol.pretrain.train import pretrain
    from segvol.settings import stage_settings

    settings = stage_settings("pretrain", args.params)
    model_settings = stage_settings("model", args.model, flag="--model")
    pretrain(
        args.zarr,
        args.out,
        settings,
        model_settings,
        seed=args.seed,
        threads=args.threads,
        device=args.device,
        workers=settings["workers"],
    )
    return 0
