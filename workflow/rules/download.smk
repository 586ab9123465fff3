# Real datasets from the registry (download.registry, config/datasets.yaml): resumable HTTP
# downloads verified by size and sha256, license-gated, unpacked safely into the raw dataset
# contract. Unlabelled manifests (M3D-Cap) become one job per shard of
# download.unlabelled_shard_size volumes.
#
# Every job holds one `downloads` token. Without --resources it is not limited; to allow, e.g.,
# four parallel downloads:   snakemake --resources downloads=4 ...
# Gated datasets fail at once (before any byte is fetched) until listed in download.accept_license.

DOWNLOADED = stores(REGISTERED)


# Cluster compute nodes often have no internet access: download on the submitting host.
localrules:
    download,


rule download:
    """One registered dataset, or one shard of an unlabelled manifest -> raw folder + dataset.json."""
    output:
        directory(f"{RAW}/{{dataset}}"),
    log:
        "logs/download/{dataset}.log",
    benchmark:
        benchmark_file("download/{dataset}")
    wildcard_constraints:
        dataset=alternation(DOWNLOADED),
    conda:
        "../../envs/segvol.yaml"
    resources:
        downloads=1,
    params:
        settings=lambda wc: stage_json("download"),
        downloads=DOWNLOADS,
        # Unused by the command: a changed registry entry (URL, checksum, layout) reruns the job.
        entry=lambda wc: json.dumps(
            REGISTRY[re.sub(r"\.shard\d+$", "", wc.dataset)], sort_keys=True
        ),
    shell:
        "segvol download --dataset {wildcards.dataset} --out {output} --downloads {params.downloads}"
        " --params {params.settings:q} > {log} 2>&1"
