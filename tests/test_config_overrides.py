"""The workflow config as users change it: the README's override lines, bad values failing at once."""

from __future__ import annotations

import re
import shlex

import pytest

from tests.test_workflow import REPO, assert_ok, snakemake


def readme_snakemake_lines_with_config() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    return [line for line in re.findall(r"`(snakemake [^`]*)`", readme) if re.search(r"--config\s", line)]


def test_the_readme_shows_an_override():
    assert readme_snakemake_lines_with_config(), "README.md lost its `snakemake ... --config ...` example"


@pytest.mark.parametrize("line", readme_snakemake_lines_with_config())
def test_readme_override_line_works_as_printed(line):
    """The line exactly as printed, as a dry run (`-n`) printing its shell commands (`-p`)."""
    words = shlex.split(line)
    assert words[0] == "snakemake"
    output = assert_ok(snakemake(*words[1:], "-n", "-p"))
    numbers = re.findall(r"(\w+)=\{(\w+): (\d+)\}", line)
    assert numbers, f"no numeric override to check in {line!r}"
    for stage, key, value in numbers:
        # the rule hands the value to `segvol <stage> --params` as a number, not the string "50"
        assert f'"{key}": {value}' in output, f"{stage}.{key} = {value} did not reach segvol {stage}"


def readme_override_fragments() -> list[str]:
    """`--config '<value>'` examples of the README that are not part of a full command line."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    full = " ".join(readme_snakemake_lines_with_config())
    return [value for value in re.findall(r"--config '([^']*)'", readme) if value not in full]


@pytest.mark.parametrize("value", readme_override_fragments())
def test_readme_override_fragments_are_valid(value):
    assert_ok(snakemake("-n", "--config", value))


@pytest.mark.parametrize(
    "override, message",
    [
        ("model={preset: huge}", "model.preset: 'huge' is not one of ['base', 'tiny']"),
        ("finetune={lr: fast}", "finetune.lr: 'fast' is not of type 'number'"),
        ("pseudo={grid: [32, 64]}", "pseudo.grid: [32, 64] is too short"),
        ("paths={rwa: data/raw}", "paths: unknown key(s) 'rwa'"),
    ],
)
def test_bad_config_stops_before_any_job_with_one_line(override, message):
    result = snakemake("-n", "--config", override)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert any(line.startswith(message) for line in output.splitlines()), output[-3000:]
    assert "Job stats" not in output
