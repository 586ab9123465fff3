rule finetune:
    """Prompt fine-tuning (text/point/box + pseudo-label loss) from the SimMIM encoder."""
    input:
        zarr=lambda wc: expand(f"{ZARR}/{{dataset}}.zarr", dataset=run_datasets(wc.run)),
        pseudo=lambda wc: expand(
            f"{PSEUDO}/{{dataset}}.zarr", dataset=run_datasets(wc.run)
        ),
        encoder=f"{MODELS}/pretrain/encoder.safetensors",
    output:
        f"{MODELS}/finetune/{{run}}/model.safetensors",
    log:
        "logs/finetune/{run}.log",
    benchmark:
        benchmark_file("finetune/{run}")
    wildcard_constraints:
        run=r"segvol|first\d+|released|corrective|corrective_mask",
    # The critical path: run before the task-specific baselines that compete for the same cores.
    priority: 10
    conda:
        "../../envs/segvol.yaml"
    threads: config["finetune"]["threads"]
    resources:
        gpu=config["finetune"]["gpu"],
        mem_mb=config["finetune"]["mem_mb"],
        runtime=config["finetune"]["runtime"],
    params:
        launcher=launcher,
        seed=config["seed"],
        device=job_device,
        settings=lambda wc: finetune_json(wc.run),
        model=lambda wc: stage_json("model"),
    shell:
        "{params.launcher} finetune --zarr {input.zarr} --pseudo {input.pseudo} --encoder {input.encoder}"
        " --out {output} --device {params.device} --seed {params.seed}"
        " --params {params.settings:q} --model {params.model:q} > {log} 2>&1"


rule finetune_equivariant:
    """Rotation-robust SegVol: train only an equivariant patch embedding + adapter beside the frozen model."""
    input:
        model=f"{MODELS}/finetune/segvol/model.safetensors",
        zarr=expand(f"{ZARR}/{{dataset}}.zarr", dataset=TRAIN),
        pseudo=expand(f"{PSEUDO}/{{dataset}}.zarr", dataset=TRAIN),
    output:
        f"{MODELS}/finetune/equivariant/adapter.safetensors",
    log:
        "logs/finetune/equivariant.log",
    benchmark:
        benchmark_file("finetune_equivariant")
    conda:
        "../../envs/segvol.yaml"
    threads: 2
    resources:
        gpu=config["finetune_equivariant"]["gpu"],
        mem_mb=config["finetune_equivariant"]["mem_mb"],
        runtime=config["finetune_equivariant"]["runtime"],
    params:
        seed=config["seed"],
        settings=lambda wc: stage_json("finetune_equivariant"),
    shell:
        "segvol finetune-equivariant --checkpoint {input.model} --zarr {input.zarr} --pseudo {input.pseudo}"
        " --out {output} --threads {threads} --seed {params.seed} --params {params.settings:q} > {log} 2>&1"
