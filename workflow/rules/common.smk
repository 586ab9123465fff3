import json
import re

from snakemake.utils import update_config

from segvol.settings import typed_command_line, validated_config

# `--config 'finetune={steps: 50}'` reaches us as {"steps": "50"} (Snakemake parses --config values
# with YAML's BaseLoader): give the values their YAML types back before validating.
update_config(config, typed_command_line(workflow.config_settings.config))
# segvol/config.schema.yaml also checks every `segvol <stage> --params`; a bad key or value stops
# here with one line naming its key path, before any job runs. Fills in the defaults.
config.update(validated_config(config))

RAW = config["paths"]["raw"]
DOWNLOADS = config["paths"]["downloads"]
ZARR = config["paths"]["zarr"]
PSEUDO = config["paths"]["pseudo"]
MODELS = config["paths"]["models"]
RESULTS = config["paths"]["results"]

TRAIN = config["datasets"]["train"]
EXTERNAL = config["datasets"]["external"]
UNLABELLED = config["datasets"]["unlabelled"]
MRI = (
    [config["evaluate"]["mri_dataset"]] if config["evaluate"].get("mri_dataset") else []
)
SYNTHETIC = sorted(config["synth"]["datasets"])
REGISTERED = sorted(set(TRAIN + EXTERNAL + UNLABELLED + MRI) - set(SYNTHETIC))


def _registry():
    """Registry entries of the real datasets in use (validated; read offline at DAG-build time)."""
    if not REGISTERED:
        return {}
    from segvol.download.registry import load_registry

    registry = load_registry(config["download"]["registry"])
    unknown = sorted(set(REGISTERED) - set(registry))
    if unknown:
        raise ValueError(
            f"datasets {unknown} are neither synth.datasets entries nor in {config['download']['registry']}"
        )
    return registry


REGISTRY = _registry()


def stores(names):
    """Raw/Zarr store names of `names`: an unlabelled manifest dataset becomes its shards.

    `M3D-Cap` -> `M3D-Cap.shard0000` ... (ceil(n_cases / download.unlabelled_shard_size) of them),
    so `snakemake -n` lists every shard job; any other name is kept as is.
    """
    from segvol.download.registry import expand_stores

    return expand_stores(names, REGISTRY, config["download"]["unlabelled_shard_size"])


def alternation(names):
    """Regex matching exactly one of `names` (a never-matching one for an empty list)."""
    return "|".join(map(re.escape, names)) or "(?!)"


wildcard_constraints:
    dataset=r"[A-Za-z0-9_.\-]+",


def stage_json(stage):
    """The `<stage>:` config block as a JSON string for `segvol <stage> --params`."""
    return json.dumps(config[stage], sort_keys=True)


def own_json(*keys):
    """Some keys of the `own_data:` block as JSON (editing another key does not rerun the job)."""
    return json.dumps({key: config["own_data"][key] for key in keys}, sort_keys=True)


def own_weights(wildcards, input):
    """`--weights` of the own-data jobs: their local weights input, else the hf:// reference."""
    return input.weights[0] if input.weights else config["own_data"]["weights"]


def synth_json(dataset):
    """The `synth:` block reduced to one dataset, so editing another dataset's entry does not
    re-run this one (Snakemake's params rerun trigger compares this string)."""
    block = dict(config["synth"])
    block["datasets"] = {dataset: config["synth"]["datasets"][dataset]}
    return json.dumps(block, sort_keys=True)


# Fine-tuning runs of the interactive_training ablation: the finetune block with these changes.
CORRECTIVE_RUNS = {
    "released": {"corrective_clicks": 0, "mask_prompt": False},
    "corrective": {
        "corrective_clicks": config["evaluate"]["corrective_clicks"],
        "mask_prompt": False,
    },
    "corrective_mask": {
        "corrective_clicks": config["evaluate"]["corrective_clicks"],
        "mask_prompt": True,
    },
}


def run_datasets(run):
    """Training datasets of a fine-tuning run: `segvol` and the interactive_training runs = all, `first<N>` =
    the first N (Fig 3a)."""
    if run == "segvol" or run in CORRECTIVE_RUNS:
        return TRAIN
    return TRAIN[: int(run.removeprefix("first"))]


def finetune_json(run):
    """`--params` of a fine-tuning run: the finetune block (with an interactive_training run's changes)."""
    return json.dumps(
        {**config["finetune"], **CORRECTIVE_RUNS.get(run, {})}, sort_keys=True
    )


def corrective_run_model(run):
    """Model file of an interactive_training run; `released` is the main model when that is released-style."""
    released_style = not config["finetune"].get("corrective_clicks")
    if (
        run == "released"
        and released_style
        and not config["finetune"].get("mask_prompt")
    ):
        run = "segvol"
    return f"{MODELS}/finetune/{run}/model.safetensors"


def job_device(wildcards, resources):
    """`--device` of a model-running job: `config["gpu_device"]` (`cuda`) when the job was given GPUs
    (`resources: gpu=` of the rule, the config's `<stage>.gpu`, or a profile's set-resources), else
    `cpu`. Not `auto`: a job that did not ask for a GPU must not take one the scheduler counts as free.
    """
    return config["gpu_device"] if int(resources.get("gpu", 0) or 0) > 0 else "cpu"


def launcher(wildcards, resources):
    """`segvol`, or one process per GPU through torchrun when a training job asks for several."""
    gpus = int(resources.gpu)
    return (
        f"torchrun --standalone --nproc_per_node={gpus} -m segvol"
        if gpus > 1
        else "segvol"
    )


localrules:
    all,


# Snakemake's benchmark TSVs (wall time, peak memory of each job), away from the scripts in benchmarks/ and
# git-ignored; the `provenance` rule tabulates them.
BENCHMARKS = "benchmarks/runs"


def benchmark_file(name):
    """Where Snakemake writes the benchmark TSV of the job `name` (a rule, with its wildcards)."""
    return f"{BENCHMARKS}/{name}.tsv"


def table_report(name, caption):
    """`results/<name>`, shown under Tables in `--report` with `workflow/report/<caption>.rst`."""
    return report(
        f"{RESULTS}/{name}", caption=f"../report/{caption}.rst", category="Tables"
    )


def figure_report(name, caption):
    """`results/figures/<name>`, shown under Figures in `--report` with its caption."""
    return report(
        f"{RESULTS}/figures/{name}",
        caption=f"../report/{caption}.rst",
        category="Figures",
    )


def model_params(stage="evaluate"):
    """`params:` of a job that runs a model: the stage's settings, the `model:` block, seed and device."""
    return dict(
        settings=lambda wc: stage_json(stage),
        model=lambda wc: stage_json("model"),
        seed=config["seed"],
        device=job_device,
    )


# The flags of `segvol evaluate` jobs that run a model (params from `model_params()`), and of those that do not.
MODEL_FLAGS = (
    "--threads {threads} --device {params.device} --seed {params.seed}"
    " --params {params.settings:q} --model {params.model:q}"
)
SETTINGS_FLAGS = "--params {params.settings:q}"


def evaluate_command(evaluation, arguments, flags=MODEL_FLAGS):
    """Shell command of a rule that runs `segvol evaluate <evaluation> <arguments> <flags>`, into its log."""
    return f"segvol evaluate {evaluation} {arguments} {flags} > {{log}} 2>&1"
