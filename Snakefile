# SegVol workflow. Stages live in workflow/rules/<stage>.smk, their code in segvol/<stage>/ and
# their settings in the <stage>: block of config/config.yaml.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/synth.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/normalize.smk"
include: "workflow/rules/pseudo.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    default_target: True
    input:
        f"{RESULTS}/table2.csv",
        f"{RESULTS}/table3.csv",
