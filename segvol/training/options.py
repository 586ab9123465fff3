"""Command-line options shared by the training commands (`segvol pretrain`, `segvol finetune`)."""

from __future__ import annotations

from segvol.device import add_device_argument


def add_runtime_arguments(parser, stage: str) -> None:
    """Options every training stage shares (pretrain, finetune)."""
    parser.add_argument("--threads", type=int, default=None, help="intra-op CPU threads of the training math (default: the stage's `threads` setting; "
                             "results are bitwise reproducible for one thread count)")
    parser.add_argument("--seed", type=int, default=2023, help="seed of batches, masks, views, prompts and initialisation")
    parser.add_argument("--params", default="{}", metavar="JSON", help=f"the `{stage}:` settings block as JSON")
    parser.add_argument("--model", default="{}", metavar="JSON", help="the `model:` settings block as JSON")
    add_device_argument(parser)
