rule synthesize:
    """Procedural abdominal CT phantoms (NIfTI + dataset.json): the embedded demo's raw data."""
    output:
        directory(f"{RAW}/{{dataset}}"),
    wildcard_constraints:
        dataset=alternation(SYNTHETIC),
    params:
        seed=config["seed"],
        settings=lambda wc: stage_json("synth"),
    log:
        "logs/synthesize/{dataset}.log",
    conda:
        "../../envs/segvol.yaml"
    shell:
        "segvol synth --dataset {wildcards.dataset} --out {output} --seed {params.seed}"
        " --params {params.settings:q} > {log} 2>&1"
