def synth_json(dataset):
    """The `synth:` block reduced to one dataset, so editing another dataset's entry does not
    re-run this one (Snakemake's params rerun trigger compares this string)."""
    block = dict(config["synth"])
    block["datasets"] = {dataset: config["synth"]["datasets"][dataset]}
    return json.dumps(block, sort_keys=True)


rule synthesize:
    """Procedural abdominal CT phantoms (NIfTI + dataset.json): the embedded demo's raw data."""
    output:
        directory(f"{RAW}/{{dataset}}"),
    wildcard_constraints:
        dataset=alternation(SYNTHETIC),
    params:
        settings=lambda wc: synth_json(wc.dataset),
    log:
        "logs/synthesize/{dataset}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/segvol.yaml"
    shell:
        "segvol synth --dataset {wildcards.dataset} --out {output} --seed {config[seed]}"
        " --params {params.settings:q} --quiet > {log} 2>&1"
