rule normalize:
    """One dataset's raw cases -> one Zarr store (canonical orientation, foreground-normalized)."""
    input:
        f"{RAW}/{{dataset}}",
    output:
        directory(f"{ZARR}/{{dataset}}.zarr"),
    params:
        seed=config["seed"],
        settings=lambda wc: stage_json("normalize"),
    log:
        "logs/normalize/{dataset}.log",
    benchmark:
        "benchmarks/normalize/{dataset}.tsv"
    threads: 2
    conda:
        "../../envs/segvol.yaml"
    shell:
        "segvol normalize --raw {input} --out {output} --seed {params.seed}"
        " --params {params.settings:q} > {log} 2>&1"
