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
