def train_launcher(stage):
    """`segvol` for one process; torchrun with one process per GPU when the stage asks for more."""
    gpus = int(config[stage]["gpu"])
    if gpus > 1:
        return f"torchrun --standalone --nproc_per_node={gpus} -m segvol"
    return "segvol"


rule pretrain:
    """SimMIM pretraining of the ViT image encoder on every labelled and unlabelled CT."""
    input:
        expand(f"{ZARR}/{{dataset}}.zarr", dataset=TRAIN + stores(UNLABELLED)),
    output:
        f"{MODELS}/pretrain/encoder.safetensors",
    params:
        launcher=train_launcher("pretrain"),
        settings=lambda wc: stage_json("pretrain"),
        model=lambda wc: stage_json("model"),
    log:
        "logs/pretrain.log",
    threads: 2
    resources:
        gpu=config["pretrain"]["gpu"],
        mem_mb=config["pretrain"]["mem_mb"],
        runtime=config["pretrain"]["runtime"],
    conda:
        "../../envs/segvol.yaml"
    shell:
        "{params.launcher} pretrain --zarr {input} --out {output} --threads {threads} --seed {config[seed]}"
        " --params {params.settings:q} --model {params.model:q} > {log} 2>&1"
