rule pseudo:
    """Felzenszwalb-Huttenlocher pseudo labels for every case of one training dataset."""
    input:
        f"{ZARR}/{{dataset}}.zarr",
    output:
        directory(f"{PSEUDO}/{{dataset}}.zarr"),
    params:
        settings=lambda wc: stage_json("pseudo"),
    log:
        "logs/pseudo/{dataset}.log",
    benchmark:
        "benchmarks/pseudo/{dataset}.tsv"
    threads: 2
    conda:
        "../../envs/segvol.yaml"
    shell:
        "segvol pseudo --zarr {input} --out {output} --jobs {threads}"
        " --params {params.settings:q} > {log} 2>&1"
