# Provenance in the report: every table, figure and model file has a `<file>.provenance.json` sidecar
# (segvol.provenance: code version and commit, packages, device, inputs' sha256), and every compute rule a
# `benchmark:` TSV (wall time, peak memory). This rule gathers both into two report tables.


import os


# Reads only files on the submitting host's file system: no need for a cluster job.
localrules:
    provenance,


rule provenance:
    """What made each result (from their sidecars) and each job's runtime and peak memory (BENCHMARKS)."""
    input:
        f"{RESULTS}/table2.csv",
        f"{RESULTS}/table3.csv",
        EVALUATION_TARGETS,
    output:
        provenance=report(
            f"{RESULTS}/provenance.csv",
            caption="../report/provenance.rst",
            category="Provenance",
        ),
        runtime=report(
            f"{RESULTS}/runtime.csv",
            caption="../report/runtime.rst",
            category="Provenance",
        ),
    log:
        "logs/provenance.log",
    conda:
        "../../envs/segvol.yaml"
    params:
        results=lambda wc, output: os.path.dirname(output.provenance),
        benchmarks=BENCHMARKS,
    shell:
        "segvol provenance --results {params.results} --benchmarks {params.benchmarks}"
        " --provenance-out {output.provenance} --runtime-out {output.runtime} > {log} 2>&1"
