# Task-specific baselines of the paper's Appendix C: nnU-Net, SwinUNETR and 3D UX-Net trained per
# dataset on its train split, scored next to SegVol on its test split (Fig 9, Table 7).

import os

TASKSPECIFIC = config["taskspecific"]
TASKSPECIFIC_METHODS = TASKSPECIFIC["methods"]
TASKSPECIFIC_DATASETS = TASKSPECIFIC.get("datasets") or TRAIN
if set(TASKSPECIFIC_DATASETS) - set(TRAIN):
    raise ValueError(
        f"taskspecific.datasets {sorted(set(TASKSPECIFIC_DATASETS) - set(TRAIN))} are not in datasets.train:"
        " task-specific models train and test on a training dataset's own split"
    )
# nnU-Net's raw and preprocessed copies of a store (nnUNet_raw / nnUNet_preprocessed) live next to it.
TASKSPECIFIC_WORK = os.path.join(
    os.path.dirname(os.path.normpath(ZARR)), "taskspecific"
)


rule taskspecific_train:
    """One task-specific model on one dataset's train split (nnU-Net through nnunetv2; SwinUNETR, 3D UX-Net)."""
    input:
        zarr=f"{ZARR}/{{dataset}}.zarr",
    output:
        directory(f"{MODELS}/taskspecific/{{method}}/{{dataset}}"),
    log:
        "logs/taskspecific/{method}/{dataset}.log",
    benchmark:
        benchmark_file("taskspecific_train/{method}/{dataset}")
    wildcard_constraints:
        method="nnunet|swinunetr|uxnet",
    conda:
        "../../envs/segvol.yaml"
    threads: 2
    resources:
        gpu=TASKSPECIFIC["gpu"],
        mem_mb=TASKSPECIFIC["mem_mb"],
        runtime=TASKSPECIFIC["runtime"],
    params:
        settings=lambda wc: stage_json("taskspecific"),
        seed=config["seed"],
        work=lambda wc: f"{TASKSPECIFIC_WORK}/{wc.method}/{wc.dataset}",
    shell:
        "segvol taskspecific --method {wildcards.method} --zarr {input.zarr} --out {output}"
        " --work {params.work} --threads {threads} --seed {params.seed} --params {params.settings:q} > {log} 2>&1"


rule taskspecific_cases:
    """Per-case Dice/NSD of SegVol and the task-specific models on one dataset's test split."""
    input:
        model=f"{MODELS}/finetune/segvol/model.safetensors",
        zarr=f"{ZARR}/{{dataset}}.zarr",
        models=expand(
            f"{MODELS}/taskspecific/{{method}}/{{{{dataset}}}}",
            method=TASKSPECIFIC_METHODS,
        ),
    output:
        f"{RESULTS}/taskspecific/{{dataset}}.parquet",
    log:
        "logs/taskspecific/cases/{dataset}.log",
    benchmark:
        benchmark_file("taskspecific_cases/{dataset}")
    conda:
        "../../envs/segvol.yaml"
    threads: 1
    params:
        settings=lambda wc: stage_json("evaluate"),
        model=lambda wc: stage_json("model"),
        seed=config["seed"],
    shell:
        # no --device: the task-specific models and SegVol run where their loaders put them (the CPU)
        evaluate_command(
            "taskspecific",
            "--checkpoint {input.model} --zarr {input.zarr} --models {input.models} --out {output}",
            "--threads {threads} --seed {params.seed} --params {params.settings:q} --model {params.model:q}",
        )


rule figure9:
    """Fig 9: violins of per-case Dice per dataset, SegVol vs each task-specific model."""
    input:
        expand(
            f"{RESULTS}/taskspecific/{{dataset}}.parquet",
            dataset=TASKSPECIFIC_DATASETS,
        ),
    output:
        table=table_report("fig9_taskspecific.csv", "fig9"),
        png=figure_report("fig9_taskspecific.png", "fig9"),
    log:
        "logs/figure9.log",
    benchmark:
        benchmark_file("figure9")
    conda:
        "../../envs/segvol.yaml"
    params:
        settings=lambda wc: stage_json("evaluate"),
    shell:
        evaluate_command(
            "fig9",
            "--cases {input} --out {output.table} --png {output.png}",
            SETTINGS_FLAGS,
        )


rule table7:
    """Table 7: SegVol vs nnU-Net on the lesion categories, with the average Dice difference."""
    input:
        expand(
            f"{RESULTS}/taskspecific/{{dataset}}.parquet",
            dataset=TASKSPECIFIC_DATASETS,
        ),
    output:
        table_report("table7.csv", "table7"),
    log:
        "logs/table7.log",
    benchmark:
        benchmark_file("table7")
    conda:
        "../../envs/segvol.yaml"
    params:
        settings=lambda wc: stage_json("evaluate"),
    shell:
        evaluate_command("table7", "--cases {input} --out {output}", SETTINGS_FLAGS)
