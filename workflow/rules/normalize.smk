rule normalize:
    """One dataset's raw cases -> one Zarr store (canonical orientation, foreground-normalized)."""
    input:
        f"{RAW}/{{dataset}}",
    output:
        directory(f"{ZARR}/{{dataset}}.zarr"),
    log:
        "logs/normalize/{dataset}.log",
    benchmark:
        benchmark_file("normalize/{dataset}")
    conda:
        "../../envs/segvol.yaml"
    threads: 2
    params:
        seed=config["seed"],
        settings=lambda wc: stage_json("normalize"),
    shell:
        "segvol normalize --raw {input} --out {output} --seed {params.seed}"
        " --params {params.settings:q} > {log} 2>&1"
