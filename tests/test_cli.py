import pytest

from segvol.cli import SUBCOMMANDS, main


def test_top_level_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_subcommand_explains_itself(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    assert "usage: segvol" in capsys.readouterr().out


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "missing"
    code = main(["normalize", "--raw", str(missing), "--out", str(tmp_path / "x.zarr")])
    assert code == 2
    err = capsys.readouterr().err
    assert "segvol normalize: error:" in err and "missing" in err
    assert not (tmp_path / "x.zarr").exists()


# ---- one set of flags, one meaning ------------------------------------------------------------

MODEL_COMMANDS = [
    ["evaluate", "cases"],
    ["evaluate", "table3"],
    ["evaluate", "fig5"],
    ["evaluate", "table6"],
    ["evaluate", "rotation"],
    ["evaluate", "mri"],
    ["pretrain"],
    ["finetune"],
    ["predict"],
]


def test_top_level_help_documents_the_shared_flags(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--quiet", "--threads N", "--jobs N", "--device", "--params JSON", "--model JSON"):
        assert flag in out, f"segvol --help does not explain {flag}"


@pytest.mark.parametrize("command", MODEL_COMMANDS, ids=" ".join)
def test_every_model_command_takes_device(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--device" in out and "cuda:N" in out


def _parsers(parser, name="segvol"):
    """Every (command name, parser) below `parser`, nested evaluations included."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield f"{name} {sub_name}", sub
                yield from _parsers(sub, f"{name} {sub_name}")


def _flag_helps(command):
    from segvol.cli import build_parser

    helps = {}
    for name, parser in _parsers(build_parser(command)):
        if name.split()[1] != command:
            continue
        for action in parser._actions:
            for flag in action.option_strings:
                helps.setdefault(flag, {})[name] = action.help
    return helps


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_shared_flags_have_one_meaning(command):
    import argparse

    from segvol.cli_options import add_common_arguments

    reference = argparse.ArgumentParser()
    add_common_arguments(reference, params="x", model=True, device=True, threads=True, jobs=True, seed="s")
    expected = {flag: action.help for action in reference._actions for flag in action.option_strings}
    helps = _flag_helps(command)
    assert "--no-progress" not in helps, f"{command}: progress is switched off with --quiet"
    for flag in ("--quiet", "--threads", "--jobs", "--device", "--model"):
        for name, text in helps.get(flag, {}).items():
            assert text == expected[flag], f"{name} {flag} means {text!r}, elsewhere {expected[flag]!r}"
    for text in helps.get("--params", {}).values():
        assert text.startswith("the `") and text.endswith("config block as JSON; missing keys get the schema defaults")


def test_quiet_and_threads_take_effect(monkeypatch):
    import argparse

    import torch

    from segvol.cli_options import apply_common_arguments

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    before = torch.get_num_threads()
    try:
        apply_common_arguments(argparse.Namespace(quiet=True, threads=1))
        assert torch.get_num_threads() == 1
        import os

        assert os.environ["TQDM_DISABLE"] == "1"
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["finetune", "--zarr", "z", "--out", "o.safetensors", "--params", '{"steps": -5, "lr": "fast"}'],
            "segvol finetune: error: --params: finetune.",
        ),
        (
            ["pretrain", "--zarr", "z", "--out", "o.safetensors", "--model", '{"preset": "huge"}'],
            "segvol pretrain: error: --model: model.preset: 'huge' is not one of ['base', 'tiny']",
        ),
        (
            ["pseudo", "--zarr", "z", "--out", "o.zarr", "--params", '{"grid": [32, 64]}'],
            "segvol pseudo: error: --params: pseudo.grid: [32, 64] is too short",
        ),
        (
            ["normalize", "--raw", "r", "--out", "o.zarr", "--params", "{chunks: [1, 2, 3]}"],
            "segvol normalize: error: --params: not valid JSON",
        ),
        (
            ["synth", "--dataset", "a", "--out", "o", "--params", '{"shape_max": [8, 64, 64]}'],
            "segvol synth: error: --params: synth.shape_max.0: 8 is less than the minimum of 16",
        ),
        (
            [
                "evaluate",
                "table2",
                "--cases",
                "c",
                "--out",
                "t.csv",
                "--per-case",
                "p",
                "--methods",
                "m",
                "--params",
                '{"prompt": "boxes"}',
            ],
            "segvol evaluate: error: --params: evaluate.prompt: 'boxes' is not one of",
        ),
    ],
)
def test_bad_params_stop_the_command_with_one_line(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err, err
    assert not list(tmp_path.iterdir())


# ---- --device reaches the model in evaluate ---------------------------------------------------


class _RecordingModel:
    """Stands in for a loaded SegVol: records where `.to()` sends it."""

    def __init__(self):
        self.moved_to = []

    def to(self, device):
        import torch

        self.moved_to.append(torch.device(device))
        return self

    def eval(self):
        return self


@pytest.mark.parametrize(
    "device, cuda, expected",
    [("cuda:1", True, "cuda:1"), ("auto", True, "cuda"), ("cpu", True, "cpu"), ("auto", False, "cpu")],
)
@pytest.mark.parametrize("evaluation", ["cases", "table3", "rotation"])
def test_evaluate_runs_the_model_on_the_chosen_device(evaluation, device, cuda, expected, tmp_path, monkeypatch):
    import torch

    import segvol.infer
    from segvol.model import checkpoint
    from tests.test_evaluate import Prompt, box_segment, write_store

    model = _RecordingModel()
    segmented_with = []

    def segment(used, volume, prompts, **kwargs):
        segmented_with.append(used)
        return box_segment(used, volume, prompts)

    monkeypatch.setattr(checkpoint, "load", lambda path: model)
    monkeypatch.setattr(segvol.infer, "segment", segment, raising=False)
    monkeypatch.setattr(segvol.infer, "Prompt", Prompt, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2 if cuda else 0)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    weights = tmp_path / "m.safetensors"
    weights.write_bytes(b"")
    store = write_store(tmp_path / "ext.zarr", n_cases=1)
    out = tmp_path / "out.csv"
    argv = {
        "cases": ["--zarr", str(store), "--out", str(out), "--segvol-only"],
        "table3": ["--zarr", str(store), "--out", str(out)],
        "rotation": [
            "--zarr",
            str(store),
            "--out",
            str(out),
            "--per-case",
            str(tmp_path / "p.parquet"),
            "--png",
            str(tmp_path / "r.png"),
        ],
    }[evaluation]
    assert main(["evaluate", evaluation, "--checkpoint", str(weights), *argv, "--device", device, "--quiet"]) == 0
    assert model.moved_to == [torch.device(expected)]
    assert segmented_with and all(used is model for used in segmented_with)


def test_evaluate_refuses_a_missing_device_before_reading_anything(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out.parquet"
    code = main(
        [
            "evaluate",
            "cases",
            "--checkpoint",
            "m",
            "--zarr",
            str(tmp_path / "none.zarr"),
            "--out",
            str(out),
            "--device",
            "cuda",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == "segvol evaluate: error: --device cuda: CUDA is not available on this machine (use --device cpu or auto)"
    )
    assert not out.exists()


def test_baselines_are_built_on_the_chosen_device(tmp_path, monkeypatch):
    """`build_baselines(..., device)` puts each baseline's network there (meta: a device this machine
    cannot compute on, so only a real move passes), and `evaluate cases --device` hands its device over."""
    import torch

    import segvol.evaluate.baselines as baselines
    from segvol.evaluate.baselines import sam
    from tests.test_sam_baselines import TINY_3D, randomized

    monkeypatch.setitem(sam.ARCHITECTURES, "sam-med3d", {**sam.ARCHITECTURES["sam-med3d"], **TINY_3D})
    torch.save({"model_state_dict": randomized(sam.build("sam-med3d")).state_dict()}, tmp_path / "sam_med3d_turbo.pth")
    runs, _ = baselines.build_baselines(
        ["SAM-Med3D"], {"SAM-Med3D": str(tmp_path / "sam_med3d_turbo.pth")}, device=torch.device("meta")
    )
    assert len(runs) == 1 and {p.device.type for p in runs[0].model.parameters()} == {"meta"}

    given = []
    monkeypatch.setattr(
        baselines, "build_baselines", lambda methods, checkpoints, device=None: given.append(device) or ([], {})
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    from tests.test_evaluate import write_store

    store = write_store(tmp_path / "ext.zarr", n_cases=1)
    params = '{"methods": ["SAM-Med3D"], "baseline_checkpoints": {"SAM-Med3D": "x.pth"}}'
    assert (
        main(
            [
                "evaluate",
                "cases",
                "--checkpoint",
                "m",
                "--zarr",
                str(store),
                "--out",
                str(tmp_path / "c.parquet"),
                "--params",
                params,
                "--device",
                "cuda:0",
                "--quiet",
            ]
        )
        == 0
    )
    assert given == [torch.device("cuda:0")]
