"""Prompt fine-tuning of SegVol with text, box and point prompts plus pseudo-label passes.

Each batch comes from one dataset; every step trains the six prompt combinations (points+text,
box+text, text, box, points, box+points) on every category present, and `pseudo_passes`
point/box passes on random Felzenszwalb segments (weight `pseudo_weight`). With
`shared_embedding: true` the image embedding is computed once per batch; `false` reproduces
the released per-category loop. A killed run resumes from `<out>.ckpt/` automatically;
metrics go to `<out stem>.metrics.csv`.

example:
  segvol finetune --zarr data/zarr/abdomen_a.zarr data/zarr/abdomen_b.zarr \\
      --pseudo data/pseudo/abdomen_a.zarr data/pseudo/abdomen_b.zarr \\
      --encoder models/pretrain/encoder.safetensors --out models/finetune/segvol/model.safetensors \\
      --threads 2 --seed 2023 --params '{"steps": 300, "batch_size": 2}' \\
      --model '{"preset": "tiny", "text_encoder": "minilm"}'
  (DDP: torchrun --standalone --nproc_per_node=8 -m segvol finetune ...)
"""

from __future__ import annotations

from segvol.cli_options import add_common_arguments


def add_arguments(parser) -> None:
    parser.add_argument(
        "--zarr", nargs="+", required=True, metavar="STORE", help="labelled Zarr stores (data/zarr/<ds>.zarr)"
    )
    parser.add_argument(
        "--pseudo",
        nargs="*",
        default=[],
        metavar="STORE",
        help="pseudo-label stores (data/pseudo/<ds>.zarr), matched to --zarr by name",
    )
    parser.add_argument("--encoder", default=None, help="SimMIM encoder .safetensors (image_encoder.* tensors)")
    parser.add_argument("--out", required=True, metavar="MODEL", help="output model .safetensors")
    add_common_arguments(
        parser,
        params="finetune",
        model=True,
        device=True,
        threads=True,
        seed="seed of batches, views, prompts and initialisation",
    )


def run(args) -> int:
    from segvol.finetune.train import finetune
    from segvol.settings import stage_settings

    settings = stage_settings("finetune", args.params)
    model_settings = stage_settings("model", args.model, flag="--model")
    finetune(
        args.zarr,
        args.pseudo,
        args.out,
        settings,
        model_settings,
        encoder=args.encoder,
        seed=args.seed,
        threads=args.threads,
        device=args.device,
    )
    return 0
