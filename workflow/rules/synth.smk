rule synthesize:
    """Procedural abdominal CT phantoms (NIfTI + dataset.json): the embedded demo's raw data."""
    output:
        directory(f"{RAW}/{{dataset}}"),
    wildcard_constraints:
        dataset=alternation(SYNTHETIC),
    params:
        settings=lambda wc: synth_json(wc.dataset),
        seed=config["seed"],
    log:
        "logs/synthesize/{dataset}.log",
    benchmark:
        "benchmarks/synthesize/{dataset}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/segvol.yaml"
    shell:
        "segvol synth --dataset {wildcards.dataset} --out {output} --seed {params.seed}"
        " --params {params.settings:q} --quiet > {log} 2>&1"
