"""Project layout: the import graph of `segvol` (no cycles, stages import only earlier stages or shared
libraries), test helpers outside the package, no dangling references, docs links, catalog files,
licence and version, workflow formatting. Static analysis (ast) only: nothing here imports a stage."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Data-flow order of the stage packages (docs/architecture.md); equal ranks are siblings.
STAGE_RANK = {
    "synth": 0,
    "download": 0,
    "normalize": 1,
    "pseudo": 2,
    "pretrain": 3,
    "finetune": 4,
    "taskspecific": 4,
    "evaluate": 5,
    "own_data": 6,
}


def module_files(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package (a package is its __init__)."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package's own modules it imports anywhere in the file (function bodies included).

    `from a.b import c` counts as an import of `a.b.c` when that is a module, else of `a.b`.
    """
    modules = module_files(package_dir)
    root = package_dir.name
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
                ]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # `import a.b.c` where c is a function
                    target = target.rpartition(".")[0]
                if target.split(".")[0] == root and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [m0, m1, ..., m0], or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGE_RANK else None


def stage_violations(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs where a stage imports a later or sibling stage."""
    bad = []
    for importer, targets in graph.items():
        source = stage_of(importer)
        for target in targets:
            destination = stage_of(target)
            if source and destination and destination != source and STAGE_RANK[destination] >= STAGE_RANK[source]:
                bad.append((importer, target))
    return sorted(bad)


def write_package(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "segvol"


# ---- the checks themselves can fail ------------------------------------------------------------


def test_graph_helpers_find_a_cycle_through_lazy_and_relative_imports(tmp_path):
    package = write_package(
        tmp_path,
        {
            "segvol/__init__.py": "",
            "segvol/model/__init__.py": "from .config import Config\n",
            "segvol/model/config.py": "def build():\n    from segvol.model.net import Net\n    return Net\n",
            "segvol/model/net.py": "from segvol.model import config\n",
        },
    )
    graph = import_graph(package)
    assert graph["segvol.model"] == {"segvol.model.config"}
    assert graph["segvol.model.net"] == {"segvol.model.config"}
    assert find_cycle(graph) == ["segvol.model.config", "segvol.model.net", "segvol.model.config"]
    (package / "model" / "net.py").write_text("import torch\n")
    assert find_cycle(import_graph(package)) is None


def test_graph_helpers_flag_later_and_sibling_stages_only(tmp_path):
    package = write_package(
        tmp_path,
        {
            "segvol/__init__.py": "",
            "segvol/infer/__init__.py": "",
            "segvol/synth/__init__.py": "from segvol.download import fetch\n",  # sibling
            "segvol/download/__init__.py": "",
            "segvol/download/fetch.py": "",
            "segvol/pseudo/__init__.py": "",
            "segvol/pseudo/sampling.py": "",
            "segvol/finetune/__init__.py": "from segvol.pseudo.sampling import pick\nfrom segvol import infer\n",
            "segvol/pretrain/__init__.py": "import segvol.finetune\n",  # later
        },
    )
    assert stage_violations(import_graph(package)) == [
        ("segvol.pretrain", "segvol.finetune"),
        ("segvol.synth", "segvol.download.fetch"),
    ]


# ---- the real package -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(REPO / "segvol")


def test_segvol_has_no_import_cycle(graph):
    assert len(graph) > 50  # the walk really saw the package
    assert find_cycle(graph) is None


def test_model_components_do_not_import_their_builders(graph):
    assert graph["segvol.model.config"] == set()
    assert "segvol.model.build" not in graph["segvol.model.segvol"] | graph["segvol.model.text_encoder"]


def test_stages_import_only_earlier_stages_or_shared_libraries(graph):
    assert {stage_of(module) for module in graph} >= set(STAGE_RANK)
    assert stage_violations(graph) == []


def test_shared_libraries_import_no_stage(graph):
    """Shared libraries (model, io, infer, training, ...) sit below every stage."""
    edges = {(m, t) for m, targets in graph.items() if not stage_of(m) for t in targets if stage_of(t)}
    assert edges == set(), sorted(edges)


TRAINING_STAGES = ("segvol.pretrain.train", "segvol.finetune.train", "segvol.finetune.equivariant")
# what only the one training loop does: the schedule, the resume checkpoint, the metrics CSV
LOOP_INTERNALS = {"LambdaLR", "load_training_state", "save_training_state", "remove_training_state", "MetricsLog"}


def test_one_training_loop(graph):
    """Pretraining, fine-tuning and the equivariant adapter train through `segvol.training.loop`; nothing else
    writes its own schedule, resume checkpoint or metrics log."""
    for stage in TRAINING_STAGES:
        assert "segvol.training.loop" in graph[stage], f"{stage} does not use segvol.training.loop"
    for name, path in module_files(REPO / "segvol").items():
        if name.startswith("segvol.training"):
            continue
        nodes = list(ast.walk(ast.parse(path.read_text())))
        used = {n.attr for n in nodes if isinstance(n, ast.Attribute)}
        used |= {n.id for n in nodes if isinstance(n, ast.Name)}
        assert not used & LOOP_INTERNALS, f"{path} runs its own training loop ({sorted(used & LOOP_INTERNALS)})"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports (`from a import b` counts as `a` and `a.b`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_predict_command_line_is_only_argparse_to_the_library():
    """`segvol predict`'s box, point and text prompts go through segvol.infer.predict/prompts/outputs and never
    come back to the command line: segvol/infer/cli.py defines only add_arguments and run, and nothing else
    (package, tests, benchmarks) imports it; `segvol predict` reaches it through segvol/cli.py's table."""
    cli = REPO / "segvol" / "infer" / "cli.py"
    tree = ast.parse(cli.read_text())
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert defined == {"add_arguments", "run"}, f"{cli}: more than the command line: {sorted(defined)}"
    users = []
    for folder in ("segvol", "tests", "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path != cli and "segvol.infer.cli" in imported_modules(path):
                users.append(str(path.relative_to(REPO)))
    assert users == [], f"import the library (segvol.infer.predict) instead: {users}"


def test_each_evaluation_is_one_module_listed_in_one_table():
    """`segvol evaluate <name>` is `segvol/evaluate/<module>.py` with add_arguments and run, listed in EVALUATIONS."""
    cli = REPO / "segvol" / "evaluate" / "cli.py"
    table = next(
        node.value
        for node in ast.parse(cli.read_text()).body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "EVALUATIONS"
    )
    evaluations = ast.literal_eval(table)
    assert {"cases", "table2", "table3", "table6", "fig3a", "fig9", "table7"} <= set(evaluations)
    modules = [module for module, _ in evaluations.values()]
    assert len(set(modules)) == len(modules), "one module per evaluation"
    for name, (module, summary) in evaluations.items():
        path = REPO / (module.replace(".", "/") + ".py")
        assert path.is_file(), f"{name}: {path} is missing"
        defined = {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}
        assert {"add_arguments", "run"} <= defined, f"{path}: needs add_arguments and run"
        assert summary, name


def test_task_specific_baselines_have_one_spelling():
    """`taskspecific` names the task-specific baselines in every path and identifier: stage, modules, rules,
    config keys, tests (`task_specific` was a second spelling of the same thing)."""
    other = re.compile(r"task_specific")
    files = [
        p
        for folder in ("segvol", "workflow", "tests", "benchmarks", "config")
        for p in (REPO / folder).rglob("*")
        if p.is_file() and p.suffix in {".py", ".smk", ".yaml"} and p != Path(__file__).resolve()
    ]
    named = [str(p.relative_to(REPO)) for p in files if other.search(p.name)]
    used = [str(p.relative_to(REPO)) for p in files if other.search(p.read_text())]
    assert named == [] and used == [], f"spell it `taskspecific`: files {named}, text in {used}"


# Names of a drawer, not of a thing: a module so named collects whatever had no home.
CATEGORY_NAMES = {"ablations", "utils", "util", "common", "misc", "helpers", "tools", "stuff"}


def test_no_module_is_named_after_a_category_of_unrelated_things():
    named = [
        str(path.relative_to(REPO))
        for name, path in module_files(REPO / "segvol").items()
        if name.rpartition(".")[2] in CATEGORY_NAMES
    ]
    assert named == [], f"name a module after what it holds: {named}"


def test_snakemake_benchmark_tsvs_land_in_an_ignored_folder():
    """Every rule's `benchmark:` goes through common.smk's benchmark_file (benchmarks/runs/), which git ignores;
    no generated TSV is tracked beside the benchmark scripts."""
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if line.strip() == "benchmark:":
                where = f"{path.name}:{number + 2}: {lines[number + 1].strip()}"
                assert lines[number + 1].strip().startswith("benchmark_file("), where
    assert 'BENCHMARKS = "benchmarks/runs"' in (REPO / "workflow" / "rules" / "common.smk").read_text()
    if not (REPO / ".git").exists() or not shutil.which("git"):
        pytest.skip("not a git checkout")
    tracked = subprocess.run(
        ["git", "ls-files", "benchmarks"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert [name for name in tracked if not name.endswith(".py")] == [], "generated files tracked under benchmarks/"
    ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", "benchmarks/runs/table2.tsv"], cwd=REPO)
    assert ignored.returncode == 0, ".gitignore does not ignore benchmarks/runs/"


def test_test_helpers_live_under_tests():
    for name, path in module_files(REPO / "segvol").items():
        leaf = name.rpartition(".")[2]
        is_test_helper = leaf in {"testing", "conftest"} or leaf.startswith("test_")
        assert not is_test_helper, f"{path}: test helper in the package"
        tree = ast.parse(path.read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not imported & {"pytest", "tests"}, f"{path} imports test code"


# ---- references and docs ----------------------------------------------------------------------

# A private fact sheet and internal issue numbers mean nothing to a reader of the repository.
DANGLING = re.compile(r"facts\s*§|\bissues?\s*#\d", re.IGNORECASE)
TEXT_SUFFIXES = {".py", ".smk", ".yaml", ".yml", ".md", ".rst", ".sh", ".toml", ""}


def project_text_files():
    folders = ["segvol", "workflow", "benchmarks", "tests", "config", "docs", "profiles", "envs"]
    files = [REPO / name for name in ("README.md", "CONTRIBUTING.md", "pyproject.toml", "setup.sh")]
    for folder in folders:
        files += [p for p in (REPO / folder).rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES]
    return [p for p in files if p.is_file() and "__pycache__" not in p.parts]


def test_no_reference_to_the_private_fact_sheet_or_issue_numbers():
    hits = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in project_text_files()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if DANGLING.search(line)
    ]
    assert not hits, "\n".join(hits)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    headings = re.findall(r"^#+\s+(.+?)\s*$", markdown.read_text(), flags=re.M)
    return {github_anchor(heading) for heading in headings}


DOC_REFERENCE = re.compile(r"(?<![\w/.])(docs/[\w\-]+\.md)(?:#([\w\-]+))?")
MARKDOWN_LINK = re.compile(r"\]\((?!https?://|mailto:)([^)#\s]+)?(?:#([\w\-]+))?\)")


def test_every_docs_reference_and_markdown_link_resolves():
    checked, broken = 0, []
    for path in project_text_files():
        text = path.read_text(errors="replace")
        references = [(REPO / target, anchor) for target, anchor in DOC_REFERENCE.findall(text)]
        if path.suffix == ".md":
            references += [
                ((path.parent / target) if target else path, anchor) for target, anchor in MARKDOWN_LINK.findall(text)
            ]
        for target, anchor in references:
            checked += 1
            target = target.resolve()
            if not target.exists():
                broken.append(f"{path.relative_to(REPO)} -> {target}")
            elif anchor and target.suffix == ".md" and anchor not in anchors(target):
                broken.append(f"{path.relative_to(REPO)} -> {target.name}#{anchor}")
    assert checked > 30
    assert not broken, "\n".join(broken)


def test_docs_pages_exist_and_contributing_links_them():
    contributing = (REPO / "CONTRIBUTING.md").read_text()
    for page in ("architecture", "model", "extending"):
        assert (REPO / "docs" / f"{page}.md").is_file()
        assert f"docs/{page}.md" in contributing


def test_github_anchor_matches_githubs_rule():
    assert github_anchor("Zarr store contract: `data/zarr/<dataset>.zarr`") == "zarr-store-contract-datazarrdatasetzarr"
    assert github_anchor("Paper → rule → module") == "paper--rule--module"


# ---- packaging and workflow catalog -----------------------------------------------------------


def test_version_has_a_single_source():
    from setuptools.config.pyprojecttoml import read_configuration

    import segvol

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert read_configuration(REPO / "pyproject.toml", expand=True)["project"]["version"] == segvol.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]|rc|\.dev|\.post)?\d*", segvol.__version__)


def test_license_is_the_mit_text_pyproject_declares():
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "segvol-workflow contributors" in text
    assert "Permission is hereby granted, free of charge" in text
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]


def test_catalog_layout():
    import yaml

    # One entry point, at the root (found first by `snakemake`, accepted there by the catalog): a second
    # one under workflow/ would be a second, diverging way into the same rules.
    assert (REPO / "Snakefile").is_file() and (REPO / "config" / "README.md").is_file()
    assert not any((REPO / place).exists() for place in ("workflow/Snakefile", "workflow/snakefile"))
    snakefile = (REPO / "Snakefile").read_text(encoding="utf-8")
    assert "default_target: True" in snakefile
    # Every rule file is included (from the root, so with its workflow/ prefix); nothing else is.
    included = re.findall(r'^include: "([^"]+)"$', snakefile, flags=re.M)
    rule_files = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    assert sorted(included) == rule_files and included[0] == "workflow/rules/common.smk"
    assert re.search(r'^report: "workflow/report/workflow.rst"$', snakefile, flags=re.M)
    usage = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    assert set(usage["software-stack-deployment"]) == {"conda", "apptainer", "apptainer+conda"}
    assert isinstance(usage["report"], bool) and usage["mandatory-flags"]["desc"]


def test_workflow_is_snakefmt_formatted():
    """`snakefmt --check Snakefile workflow/` (the catalog's formatting gate)."""
    snakefmt = shutil.which("snakefmt", path=str(Path(sys.executable).parent)) or shutil.which("snakefmt")
    assert snakefmt, "snakefmt is missing: pip install -e '.[test]'"
    result = subprocess.run(
        [snakefmt, "--check", "Snakefile", "workflow/"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_python_code_is_ruff_clean(command):
    """`ruff check` and `ruff format --check` under the `[tool.ruff]` settings of pyproject.toml."""
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is missing: pip install -e '.[test]'"
    result = subprocess.run([ruff, *command, "--no-cache", "."], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
