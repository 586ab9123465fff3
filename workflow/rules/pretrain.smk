rule pretrain:
    """SimMIM pretraining of the ViT image encoder on every labelled and unlabelled CT."""
    input:
        expand(f"{ZARR}/{{dataset}}.zarr", dataset=TRAIN + stores(UNLABELLED)),
    output:
        f"{MODELS}/pretrain/encoder.safetensors",
    log:
        "logs/pretrain.log",
    benchmark:
        benchmark_file("pretrain")
    # The critical path: run before the task-specific baselines that compete for the same cores.
    priority: 10
    conda:
        "../../envs/segvol.yaml"
    threads: config["pretrain"]["threads"]
    resources:
        gpu=config["pretrain"]["gpu"],
        mem_mb=config["pretrain"]["mem_mb"],
        runtime=config["pretrain"]["runtime"],
    params:
        launcher=launcher,
        seed=config["seed"],
        device=job_device,
        settings=lambda wc: stage_json("pretrain"),
        model=lambda wc: stage_json("model"),
    shell:
        "{params.launcher} pretrain --zarr {input} --out {output} --device {params.device} --seed {params.seed}"
        " --params {params.settings:q} --model {params.model:q} > {log} 2>&1"
