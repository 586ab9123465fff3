"""The flags `segvol` commands share, defined once so that each has one meaning everywhere.

  -q, --quiet      only warnings and errors, no progress bars
  --threads N      torch CPU threads of this process (default: torch's choice)
  --jobs N         cases processed in parallel, one worker process each (commands that fan out over cases)
  --device DEVICE  where the model runs: auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps
  --params JSON    the command's `<stage>:` config block, checked against segvol/config.schema.yaml
  --model JSON     the `model:` config block (commands that build or check a model)
  --seed N         global seed

A command adds the ones it uses with `add_common_arguments(parser, params="evaluate", device=True,
threads=True, ...)`; `segvol.cli.main` applies `--quiet` and `--threads` before the command runs.
"""

from __future__ import annotations

import argparse
import os

from segvol.device import add_device_argument

COMMON_FLAGS = __doc__.split("\n\n")[1]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


QUIET_HELP = "only warnings and errors, no progress bars"
# segvol.model.image_encoder.PRECISIONS, repeated here so that --help does not import torch.
PRECISIONS = ("fp32", "bf16")
PRECISION_HELP = (
    "image-encoder arithmetic: fp32 (default; the released network's numbers) or bf16 (bfloat16 "
    "matmuls: ~2x faster encoder on CPUs with AMX/AVX512-BF16 and on GPUs, slower on other CPUs; "
    "embeddings differ by ~1e-2, label maps agree to Dice >= 0.99; docs/performance.md)"
)
THREADS_HELP = "torch CPU threads (default: torch's choice)"


def add_common_arguments(
    parser: argparse.ArgumentParser,
    *,
    params: str | None = None,
    model: bool = False,
    device: bool = False,
    threads: bool = False,
    jobs: bool = False,
    seed: str | None = None,
    quiet: bool = True,
) -> None:
    """Add the shared flags a command uses.

    params: the stage whose config block `--params` carries (None: no `--params`).
    seed: what the seed drives, for the help text (None: no `--seed`).
    """
    if params is not None:
        parser.add_argument(
            "--params",
            default="{}",
            metavar="JSON",
            help=f"the `{params}:` config block as JSON; missing keys get the schema defaults",
        )
    if model:
        parser.add_argument("--model", default="{}", metavar="JSON", help="the `model:` config block as JSON")
    if device:
        add_device_argument(parser)
    if threads:
        parser.add_argument("--threads", type=_positive, default=None, metavar="N", help=THREADS_HELP)
    if jobs:
        parser.add_argument(
            "--jobs",
            type=_positive,
            default=1,
            metavar="N",
            help="cases processed in parallel, one worker process each (default 1)",
        )
    if seed is not None:
        parser.add_argument("--seed", type=int, default=2023, metavar="N", help=f"{seed} (default 2023)")
    if quiet:
        parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)


def apply_common_arguments(args: argparse.Namespace) -> None:
    """Process-wide effects of the shared flags, applied once before a command runs."""
    if getattr(args, "quiet", False):
        # tqdm reads this for every bar, including those of library code that takes no switch
        os.environ["TQDM_DISABLE"] = "1"
        import logging

        logging.getLogger("segvol").setLevel(logging.WARNING)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
