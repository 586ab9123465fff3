rule synthesize:
    """Procedural abdominal CT phantoms (NIfTI + dataset.json): the embedded demo's raw data."""
    output:
        directory(f"{RAW}/{{dataset}}"),
    log:
        "logs/synthesize/{dataset}.log",
    benchmark:
        benchmark_file("synthesize/{dataset}")
    wildcard_constraints:
        dataset=alternation(SYNTHETIC),
    conda:
        "../../envs/segvol.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        settings=lambda wc: synth_json(wc.dataset),
        seed=config["seed"],
    shell:
        "segvol synth --dataset {wildcards.dataset} --out {output} --seed {params.seed}"
        " --params {params.settings:q} --quiet > {log} 2>&1"
