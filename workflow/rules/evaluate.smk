rule evaluate_cases:
    """Per-case Dice/NSD of every method on one external test set (Table 2's raw material)."""
    input:
        model=f"{MODELS}/finetune/segvol/model.safetensors",
        zarr=f"{ZARR}/{{dataset}}.zarr",
    output:
        f"{RESULTS}/cases/{{dataset}}.parquet",
    params:
        settings=lambda wc: stage_json("evaluate"),
        model=lambda wc: stage_json("model"),
    log:
        "logs/evaluate/{dataset}.log",
    threads: 1
    conda:
        "../../envs/segvol.yaml"
    shell:
        "segvol evaluate cases --checkpoint {input.model} --zarr {input.zarr} --out {output}"
        " --threads {threads} --params {params.settings:q} --model {params.model:q} > {log} 2>&1"


rule table2:
    """Median Dice per (dataset, category) and method, with an Average row per dataset."""
    input:
        expand(f"{RESULTS}/cases/{{dataset}}.parquet", dataset=EXTERNAL),
    output:
        table=report(f"{RESULTS}/table2.csv", caption="../report/table2.rst", category="Tables"),
        per_case=f"{RESULTS}/table2_per_case.parquet",
        methods=f"{RESULTS}/table2_methods.json",
    params:
        settings=lambda wc: stage_json("evaluate"),
    log:
        "logs/table2.log",
    conda:
        "../../envs/segvol.yaml"
    shell:
        "segvol evaluate table2 --cases {input} --out {output.table} --per-case {output.per_case}"
        " --methods {output.methods} --params {params.settings:q} > {log} 2>&1"


rule table3:
    """Resize vs sliding window vs zoom-out-zoom-in on the same cases: Dice and ms per case."""
    input:
        model=f"{MODELS}/finetune/segvol/model.safetensors",
        zarr=expand(f"{ZARR}/{{dataset}}.zarr", dataset=EXTERNAL),
    output:
        report(f"{RESULTS}/table3.csv", caption="../report/table3.rst", category="Tables"),
    params:
        settings=lambda wc: stage_json("evaluate"),
        model=lambda wc: stage_json("model"),
    log:
        "logs/table3.log",
    threads: 2
    conda:
        "../../envs/segvol.yaml"
    shell:
        "segvol evaluate table3 --checkpoint {input.model} --zarr {input.zarr} --out {output}"
        " --threads {threads} --params {params.settings:q} --model {params.model:q} > {log} 2>&1"
