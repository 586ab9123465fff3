"""Not implemented yet."""


def add_arguments(parser):
    parser.add_argument("rest", nargs="*")


def run(args):
    raise RuntimeError("segvol synth: not implemented yet")
