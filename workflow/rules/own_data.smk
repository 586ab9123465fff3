# Fine-tuning on your own labelled CTs (docs/own-data.md): own_data.source (an nnU-Net v2 raw dataset,
# images/ + labels/ with own_data.names, or `demo`) -> one store with a train/validation/test split ->
# fine-tuning from own_data.weights (released SegVol or ours) -> before/after scores on the held-out cases.
#   snakemake --cores all --configfile config/config.yaml config/own.yaml results/own/before_after.csv
# None of it is part of `rule all`.

OWN = config["own_data"]
OWN_DEMO = f"{RAW}/Dataset900_OwnDemo"
OWN_SOURCE = OWN_DEMO if OWN["source"] == "demo" else OWN["source"]
OWN_WEIGHTS = OWN["weights"] or f"{MODELS}/finetune/segvol/model.safetensors"
# A local file is an input (a new file reruns what used it); an hf:// reference is downloaded by the job.
OWN_WEIGHT_FILES = [] if "://" in OWN_WEIGHTS else [OWN_WEIGHTS]
OWN_STORE = f"{ZARR}/own.zarr"
OWN_PSEUDO = [f"{PSEUDO}/own.zarr"] if OWN["pseudo_weight"] > 0 else []


OWN_TRAINING = [key for key in OWN if key not in ("source", "names", "weights", "demo")]


# The own-data store is written by own_data_prepare, never by normalize (there is no data/raw/own).
ruleorder: own_data_prepare > normalize


rule own_data_demo:
    """Synthetic CT phantoms in nnU-Net v2's raw layout: the demo's stand-in for your dataset."""
    output:
        directory(OWN_DEMO),
    log:
        "logs/own_data/demo.log",
    benchmark:
        benchmark_file("own_data/demo")
    conda:
        "../../envs/segvol.yaml"
    threads: 1
    params:
        seed=config["seed"],
        settings=lambda wc: own_json("demo"),
    shell:
        "segvol own-data demo --out {output} --seed {params.seed} --params {params.settings:q} --quiet > {log} 2>&1"


rule own_data_prepare:
    """Your dataset, checked (pairs, grids, label ids, one CT channel) -> one store with train/validation/test."""
    input:
        source=OWN_SOURCE,
        names=[OWN["names"]] if OWN["names"] else [],
    output:
        directory(OWN_STORE),
    log:
        "logs/own_data/prepare.log",
    benchmark:
        benchmark_file("own_data/prepare")
    conda:
        "../../envs/segvol.yaml"
    threads: 1
    params:
        seed=config["seed"],
        settings=lambda wc: own_json("names", "test_fraction", "validation_fraction"),
        normalize=lambda wc: stage_json("normalize"),
    shell:
        "segvol own-data prepare --source {input.source} --out {output} --seed {params.seed}"
        " --params {params.settings:q} --normalize {params.normalize:q} --quiet > {log} 2>&1"


rule own_data_finetune:
    """Fine-tuning from the starting weights on the train split; the best validated weights are kept."""
    input:
        zarr=OWN_STORE,
        pseudo=OWN_PSEUDO,
        weights=OWN_WEIGHT_FILES,
    output:
        f"{MODELS}/own/model.safetensors",
    log:
        "logs/own_data/finetune.log",
    benchmark:
        benchmark_file("own_data/finetune")
    conda:
        "../../envs/segvol.yaml"
    threads: OWN["threads"]
    resources:
        gpu=OWN["gpu"],
        mem_mb=OWN["mem_mb"],
        runtime=OWN["runtime"],
    params:
        launcher=launcher,
        seed=config["seed"],
        device=job_device,
        weights=own_weights,
        pseudo=lambda wc, input: f"--pseudo {input.pseudo}" if input.pseudo else "",
        settings=lambda wc: own_json(*OWN_TRAINING),
        model=lambda wc: stage_json("model"),
    shell:
        "{params.launcher} own-data finetune --zarr {input.zarr} {params.pseudo} --weights {params.weights}"
        " --out {output} --device {params.device} --seed {params.seed}"
        " --params {params.settings:q} --model {params.model:q} > {log} 2>&1"


rule own_data_evaluate:
    """Dice and NSD of the starting and the fine-tuned weights on the held-out cases, with CIs."""
    input:
        zarr=OWN_STORE,
        model=f"{MODELS}/own/model.safetensors",
        weights=OWN_WEIGHT_FILES,
    output:
        table=f"{RESULTS}/own/before_after.csv",
        cases=f"{RESULTS}/own/before_after_cases.csv",
        figure=report(
            f"{RESULTS}/own/before_after.png",
            caption="../report/own_data.rst",
            category="Own data",
        ),
    log:
        "logs/own_data/evaluate.log",
    benchmark:
        benchmark_file("own_data/evaluate")
    conda:
        "../../envs/segvol.yaml"
    threads: 1
    params:
        seed=config["seed"],
        device=job_device,
        weights=own_weights,
        settings=lambda wc: own_json("prompts", "nsd_tolerance_mm"),
        model=lambda wc: stage_json("model"),
    shell:
        "segvol own-data evaluate --zarr {input.zarr} --weights {params.weights} --checkpoint {input.model}"
        " --out {output.table} --figure {output.figure} --threads {threads} --device {params.device}"
        " --seed {params.seed} --params {params.settings:q} --model {params.model:q} > {log} 2>&1"
