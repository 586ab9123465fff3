"""Rules hand each model-running job the device and the CPU threads it was given."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.test_workflow import REPO, assert_ok, snakemake

MODEL_RULES = [
    "pretrain",
    "finetune",
    "evaluate_cases",
    "table3",
    "scaling_cases",
    "prompt_cases",
    "figure5",
    "table6",
    "rotation",
    "mri",
]


def shell_commands(output: str) -> dict[str, list[str]]:
    """rule -> the shell commands a `-n -p` dry run printed for it."""
    commands: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=\[[^\n]*\]\n(?:local)?rule )", output):
        rule = re.search(r"^(?:local)?rule (\w+):", block, flags=re.M)
        command = re.search(r"^Shell command: (.*)$", block, flags=re.M)
        if rule and command:
            commands.setdefault(rule.group(1), []).append(command.group(1))
    return commands


# Training takes its CPU threads from its own setting (`<stage>.threads`), not from the cores a job is
# given, because the trained weights depend on the thread count bit for bit.
TRAINING_RULES = ["pretrain", "finetune"]


def test_every_model_rule_passes_device_and_threads():
    text = "\n".join(
        (REPO / "workflow" / "rules" / f"{name}.smk").read_text(encoding="utf-8")
        for name in ("pretrain", "finetune", "evaluate")
    )
    # evaluation rules get both through common.smk: `params: **model_params()` and `evaluate_command(...)`,
    # whose default flags are MODEL_FLAGS
    common = (REPO / "workflow" / "rules" / "common.smk").read_text(encoding="utf-8")
    model_flags = common.split("MODEL_FLAGS = (", 1)[1].split(")", 1)[0]
    assert "--device {params.device}" in model_flags and "--threads {threads}" in model_flags
    assert "device=job_device" in common.split("def model_params(", 1)[1].split("\ndef ", 1)[0]
    for rule in MODEL_RULES:
        body = text.split(f"rule {rule}:", 1)[1].split("\nrule ", 1)[0]
        if "evaluate_command(" in body:
            assert "**model_params()" in body and "FLAGS" not in body, rule  # the default: MODEL_FLAGS
            continue
        assert "--device {params.device}" in body and "device=job_device" in body, rule
        if rule in TRAINING_RULES:
            assert "--threads" not in body and f'threads: config["{rule}"]["threads"]' in body, rule
        else:
            assert "--threads {threads}" in body, rule


def test_demo_jobs_run_on_the_cpu_unless_given_a_gpu():
    output = assert_ok(snakemake("-n", "-p", "results/table3.csv", "--set-resources", "table3:gpu=1"))
    commands = shell_commands(output)
    for rule in ("pretrain", "finetune"):
        assert all("--device cpu" in command for command in commands[rule]), commands[rule]
    assert all("--device cuda" in command for command in commands["table3"]), commands["table3"]


def test_the_dry_runs_ignore_what_readme_command_1_made_in_the_clone(tmp_path):
    """README command 1 then command 2 in one clone: the dry-run tests must not plan against the
    clone's outputs (before, the demo DAG was "Nothing to be done" there: KeyError 'pretrain').
    A stand-in clone whose outputs of `results/table3.csv` are all up to date (created, then
    `snakemake --touch`) runs the device test, and is left exactly as it was."""
    import subprocess
    import sys

    from tests.conftest import run_outputs_state
    from tests.test_workflow import copy_sources

    clone = copy_sources(tmp_path / "clone")
    summary = assert_ok(snakemake("--summary", "--cores", "1", "results/table3.csv", cwd=clone))
    for line in summary.splitlines()[1:]:
        output = line.split("\t")[0]
        if "\t" not in line or not output:
            continue
        path = clone / output
        if path.suffix:  # a file; the rules' directory outputs (datasets, Zarr stores) have no suffix or .zarr
            path.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir() if path.suffix == ".zarr" else path.touch()
        else:
            path.mkdir(parents=True, exist_ok=True)
    assert_ok(snakemake("--touch", "--cores", "1", "results/table3.csv", cwd=clone))
    assert "Nothing to be done" in assert_ok(snakemake("-n", "results/table3.csv", cwd=clone))
    before = run_outputs_state(clone)
    test = "tests/test_rule_devices.py::test_demo_jobs_run_on_the_cpu_unless_given_a_gpu"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert run_outputs_state(clone) == before


def test_slurm_gpu_jobs_get_cuda_and_the_threads_of_their_cpus():
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text(encoding="utf-8"))
    gpu_rules = {rule for rule, values in profile["set-resources"].items() if "cpus_per_gpu" in values}
    assert gpu_rules >= {"pretrain", "finetune", "evaluate_cases", "table3"}
    for rule in gpu_rules:
        assert profile["set-threads"][rule] == profile["set-resources"][rule]["cpus_per_gpu"], rule
    # --cores: a dry run caps threads at the local cores; a Slurm job is capped by its allocation only
    output = assert_ok(
        snakemake(
            "-n",
            "-p",
            "--profile",
            "profiles/slurm",
            "--configfile",
            "config/paper.yaml",
            "--cores",
            "64",
            "results/table2.csv",
            "results/table3.csv",
        )
    )
    commands = shell_commands(output)
    for rule in ("pretrain", "finetune", "evaluate_cases", "table3"):
        assert commands.get(rule), f"{rule} missing from the dry run"
        for command in commands[rule]:
            threads = '"threads": 8' if rule in TRAINING_RULES else "--threads 8"
            assert "--device cuda" in command and threads in command, command


@pytest.mark.parametrize(
    "options",
    [[], ["--profile", "profiles/slurm", "--configfile", "config/paper.yaml", "--cores", "64"]],
    ids=["demo", "paper-slurm"],
)
def test_every_rule_command_line_parses_with_segvol(options):
    """Each shell command of the whole DAG is accepted by `segvol`'s own parser, so a renamed flag
    (e.g. pseudo's --threads -> --jobs) cannot leave a rule behind."""
    import shlex

    from segvol.cli import build_parser

    commands = shell_commands(assert_ok(snakemake("-n", "-p", *options)))
    assert set(MODEL_RULES) <= set(commands)
    checked = 0
    for rule, lines in commands.items():
        for line in lines[:2]:
            if line == "None":  # `rule all` runs nothing
                continue
            words = shlex.split(line.split(" > ", 1)[0])
            if words[0] == "torchrun":
                words = ["segvol", *words[words.index("segvol") + 1 :]]
            assert words[0] == "segvol", f"{rule}: {line}"
            args = build_parser(words[1]).parse_args(words[1:])
            assert args.command == words[1]
            checked += 1
    assert checked >= len(MODEL_RULES)


def test_readme_local_gpu_line_gives_evaluation_the_gpu():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    lines = [line for line in re.findall(r"`(snakemake [^`]*)`", readme) if "--set-resources" in line]
    assert lines, "README.md lost its local-GPU example"
    import shlex

    for line in lines:
        commands = shell_commands(assert_ok(snakemake(*shlex.split(line)[1:], "-n", "-p")))
        for rule in ("evaluate_cases", "table3"):
            assert commands[rule] and all("--device cuda" in command for command in commands[rule]), rule
        assert all("--device cpu" in command for command in commands["table6"])


def test_the_clone_guard_sees_created_changed_and_removed_outputs(tmp_path):
    """tests/conftest.py fails a test module that changes the clone's run outputs; its snapshot must see
    every kind of change (a rewritten file of the same size included)."""
    import os

    from tests.conftest import describe_changes, run_outputs_state

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "table2.csv").write_text("a,b\n")
    (tmp_path / "models").mkdir()
    (tmp_path / "src.py").write_text("not guarded")
    before = run_outputs_state(tmp_path)
    assert set(before) == {"results", "results/table2.csv", "models"}
    (tmp_path / "src.py").write_text("changed, but not a run output")
    assert run_outputs_state(tmp_path) == before
    (tmp_path / "results" / "table2.csv").write_text("c,d\n")
    os.utime(tmp_path / "results" / "table2.csv", ns=(1, 1))
    (tmp_path / ".snakemake" / "log").mkdir(parents=True)
    (tmp_path / "models").rmdir()
    change = describe_changes(before, run_outputs_state(tmp_path))
    assert change == "created: .snakemake, .snakemake/log; removed: models; changed: results/table2.csv", change


def test_the_work_tree_guard_sees_new_changed_and_removed_files_but_not_ignored_ones(tmp_path):
    """tests/conftest.py fails the session when the tests leave any file git sees changed in the clone."""
    import os
    import subprocess

    from tests.conftest import work_tree_status

    assert work_tree_status(tmp_path) is None  # not a git checkout: nothing to compare
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / ".gitignore").write_text("__pycache__/\n")
    (tmp_path / "kept.py").write_text("a = 1\n")
    (tmp_path / "gone.py").write_text("b = 2\n")
    subprocess.run([*git, "add", "."], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "start"], cwd=tmp_path, check=True)
    assert work_tree_status(tmp_path) == {}
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "kept.pyc").write_bytes(b"ignored")
    assert work_tree_status(tmp_path) == {}
    (tmp_path / "kept.py").write_text("a = 3\n")
    (tmp_path / "gone.py").unlink()
    (tmp_path / "new" / "deep").mkdir(parents=True)
    (tmp_path / "new" / "deep" / "file.txt").write_text("x")
    state = work_tree_status(tmp_path)
    assert {path: value[0] for path, value in state.items()} == {
        "kept.py": " M",
        "gone.py": " D",
        "new/deep/file.txt": "??",
    }
    changed = state["kept.py"][2] + 10**9
    (tmp_path / "kept.py").write_text("a = 4\n")  # rewritten again, same size: the time tells
    os.utime(tmp_path / "kept.py", ns=(changed, changed))
    assert work_tree_status(tmp_path) != state
