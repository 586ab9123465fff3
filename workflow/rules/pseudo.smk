rule pseudo:
    """Felzenszwalb-Huttenlocher pseudo labels for every case of one training dataset."""
    input:
        f"{ZARR}/{{dataset}}.zarr",
    output:
        directory(f"{PSEUDO}/{{dataset}}.zarr"),
    log:
        "logs/pseudo/{dataset}.log",
    benchmark:
        benchmark_file("pseudo/{dataset}")
    conda:
        "../../envs/segvol.yaml"
    threads: 2
    params:
        settings=lambda wc: stage_json("pseudo"),
    shell:
        "segvol pseudo --zarr {input} --out {output} --jobs {threads}"
        " --params {params.settings:q} > {log} 2>&1"
