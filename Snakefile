# SegVol workflow: the one entry point (`snakemake` finds it at the repository root). Stages live in
# workflow/rules/<stage>.smk, their code in segvol/<stage>/ and their settings in the <stage>: block of
# config/config.yaml (docs/architecture.md); report captions are in workflow/report/.
# `include:` and `report:` paths are relative to this file; `configfile:` to the working directory
# (the repository root, or `--directory`).
from snakemake.utils import min_version

min_version("9.0")


# The embedded demo is the default; `--configfile config/paper.yaml` replaces it rather than layering on it.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/synth.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/normalize.smk"
include: "workflow/rules/pseudo.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/taskspecific.smk"
include: "workflow/rules/own_data.smk"
include: "workflow/rules/provenance.smk"


report: "workflow/report/workflow.rst"


rule all:
    """Every table and figure of the paper that the configuration can produce."""
    default_target: True
    input:
        f"{RESULTS}/table2.csv",
        f"{RESULTS}/table3.csv",
        EVALUATION_TARGETS,
        f"{RESULTS}/provenance.csv",
