# Evaluation: Table 2/3 and every paper evaluation/ablation (docs/architecture.md). Each rule calls
# one `segvol evaluate <name>` subcommand; outputs tagged report(...) go into `--report`.

EVALUATE = config["evaluate"]
SCALING_DATASET = EVALUATE.get("scaling_dataset") or (TRAIN[0] if TRAIN else None)
SCALING_RUNS = [f"first{n}" for n in EVALUATE["scaling_runs"] if n < len(TRAIN)] + [
    "segvol"
] * bool(TRAIN)
PROMPT_DATASETS = EVALUATE.get("prompt_datasets") or TRAIN
MRI_DATASET = EVALUATE.get("mri_dataset") or (EXTERNAL[0] if EXTERNAL else None)
MRI_STAND_IN = not EVALUATE.get("mri_dataset")
# Local checkpoints of the baselines that run: inputs, so that a new file reruns the tables that use
# it (an hf:// reference is downloaded by the job itself).
BASELINE_CHECKPOINTS = sorted(
    {
        path
        for path in (EVALUATE.get("baseline_checkpoints") or {}).values()
        if path and "://" not in path
    }
)

# Everything this file produces beyond Table 2/3 (the lead lists these in `rule all`).
EVALUATION_TARGETS = [
    f"{RESULTS}/figures/fig2_violin.png",
    f"{RESULTS}/fig3a_scaling.csv",
    f"{RESULTS}/fig3b_prompts.csv",
    f"{RESULTS}/fig5_identification.csv",
    f"{RESULTS}/table6.csv",
    f"{RESULTS}/rotation.csv",
    f"{RESULTS}/mri.csv",
    f"{RESULTS}/table2_statistics.csv",
    f"{RESULTS}/interactive.csv",
    f"{RESULTS}/figures/gallery.png",
    f"{RESULTS}/fig4_semantic.csv",
    f"{RESULTS}/figures/fig9_taskspecific.png",
    f"{RESULTS}/table7.csv",
    f"{RESULTS}/figures/meshes.png",
]


rule evaluate_cases:
    """Per-case Dice/NSD of every method on one external test set (Table 2's raw material)."""
    input:
        model=f"{MODELS}/finetune/segvol/model.safetensors",
        zarr=f"{ZARR}/{{dataset}}.zarr",
        baselines=BASELINE_CHECKPOINTS,
    output:
        f"{RESULTS}/cases/{{dataset}}.parquet",
    log:
        "logs/evaluate/{dataset}.log",
    benchmark:
        "benchmarks/evaluate_cases/{dataset}.tsv"
    conda:
        "../../envs/segvol.yaml"
    threads: 1
    params:
        settings=lambda wc: stage_json("evaluate"),
        model=lambda wc: stage_json("model"),
        seed=config["seed"],
        device=job_device,
    shell:
        "segvol evaluate cases --checkpoint {input.model} --zarr {input.zarr} --out {output}"
        " --threads {threads} --device {params.device} --seed {params.seed} --params {params.settings:q} --model {params.model:q}"
        " > {log} 2>&1"


rule table2:
    """Median Dice per (dataset, category) and method, with an Average row per dataset; its lesion rows
    lesion-wise (detected and missed lesions, false positives) next to it."""
    input:
        cases=expand(f"{RESULTS}/cases/{{dataset}}.parquet", dataset=EXTERNAL),
        audit=f"{RESULTS}/overlap_audit.csv",
    output:
        table=report(
            f"{RESULTS}/table2.csv", caption="../report/table2.rst", category="Tables"
        ),
        per_case=f"{RESULTS}/table2_per_case.parquet",
        methods=f"{RESULTS}/table2_methods.json",
        lesions=report(
            f"{RESULTS}/table2_lesions.csv",
            caption="../report/table2_lesions.rst",
            category="Tables",
        ),
    log:
        "logs/table2.log",
    benchmark:
        "benchmarks/table2.tsv"
    conda:
        "../../envs/segvol.yaml"
    params:
        settings=lambda wc: stage_json("evaluate"),
    shell:
        "segvol evaluate table2 --cases {input.cases} --out {output.table} --per-case {output.per_case}"
        " --methods {output.methods} --lesions {output.lesions} --params {params.settings:q} > {log} 2>&1"


rule table3:
    """Resize vs sliding window vs zoom-out-zoom-in on the same cases: Dice and ms per case."""
    input:
        model=f"{MODELS}/finetune/segvol/model.safetensors",
        zarr=expand(f"{ZARR}/{{dataset}}.zarr", dataset=EXTERNAL),
    output:
        table=report(
            f"{RESULTS}/table3.csv", caption="../report/table3.rst", category="Tables"
        ),
        per_case=f"{RESULTS}/table3_per_case.parquet",
    log:
        "logs/table3.log",
    benchmark:
        "benchmarks/table3.tsv"
    conda:
        "../../envs/segvol.yaml"
    threads: 2
    params:
        settings=lambda wc: stage_json("evaluate"),
        model=lambda wc: stage_json("model"),
        seed=config["seed"],
        device=job_device,
    shell:
        "segvol evaluate table3 --checkpoint {input.model} --zarr {input.zarr} --out {output.table}"
        " --per-case {output.per_case} --threads {threads} --device {params.device} --seed {params.seed}"
        " --params {params.settings:q} --model {params.model:q} > {log} 2>&1"


rule figure2:
    """Fig 2: violin plots of per-case Dice per task and method."""
    input:
        f"{RESULTS}/table2_per_case.parquet",
    output:
        report(
            f"{RESULTS}/figures/fig2_violin.png",
            caption="../report/fig2.rst",
            category="Figures",
        ),
    log:
        "logs/figure2.log",
    benchmark:
        "benchmarks/figure2.tsv"
    conda:
        "../../envs/segvol.yaml"
    params:
        settings=lambda wc: stage_json("evaluate"),
    shell:
        "segvol evaluate fig2 --per-case {input} --png {output} --params {params.settings:q} > {log} 2>&1"


rule scaling_cases:
    """Fig 3a raw material: one fine-tuning run on the internal test split of the scaling dataset."""
    input:
        model=f"{MODELS}/finetune/{{run}}/model.safetensors",
        zarr=f"{ZARR}/{SCALING_DATASET}.zarr",
    output:
        f"{RESULTS}/scaling/{{run}}.parquet",
    log:
        "logs/scaling/{run}.log",
    benchmark:
        "benchmarks/scaling_cases/{run}.tsv"
    wildcard_constraints:
        run=r"segvol|first\d+",
    conda:
        "../../envs/segvol.yaml"
    threads: 1
    params:
        settings=lambda wc: stage_json("evaluate"),
        model=lambda wc: stage_json("model"),
        seed=config["seed"],
        device=job_device,
    shell:
        "segvol evaluate cases --checkpoint {input.model} --zarr {input.zarr} --out {output} --split test"
        " --label {wildcards.run} --segvol-only --threads {threads} --device {params.device} --seed {params.seed}"
        " --params {params.settings:q} --model {params.model:q} > {log} 2>&1"


rule figure3a:
    """Fig 3a: median Dice against the number of training datasets."""
    input:
        expand(f"{RESULTS}/scaling/{{run}}.parquet", run=SCALING_RUNS),
    output:
        table=report(
            f"{RESULTS}/fig3a_scaling.csv",
            caption="../report/fig3a.rst",
            category="Tables",
        ),
        png=report(
            f"{RESULTS}/figures/fig3a_scaling.png",
            caption="../report/fig3a.rst",
            category="Figures",
        ),
    log:
        "logs/figure3a.log",
    benchmark:
        "benchmarks/figure3a.tsv"
    conda:
        "../../envs/segvol.yaml"
    params:
        settings=lambda wc: stage_json("evaluate"),
        total=len(TRAIN),
    shell:
        "segvol evaluate fig3a --cases {input} --total {params.total} --out {output.table} --png {output.png}"
        " --params {params.settings:q} > {log} 2>&1"


rule prompt_cases:
    """Fig 3b raw material: SegVol with each prompt combination on one internal test split."""
    input:
        model=f"{MODELS}/finetune/segvol/model.safetensors",
        zarr=f"{ZARR}/{{dataset}}.zarr",
    output:
        f"{RESULTS}/prompts/{{dataset}}.parquet",
    log:
        "logs/prompts/{dataset}.log",
    benchmark:
        "benchmarks/prompt_cases/{dataset}.tsv"
    conda:
        "../../envs/segvol.yaml"
    threads: 1
    params:
        settings=lambda wc: stage_json("evaluate"),
        model=lambda wc: stage_json("model"),
        seed=config["seed"],
        device=job_device,
    shell:
        "segvol evaluate cases --checkpoint {input.model} --zarr {input.zarr} --out {output} --split test"
        " --prompts text,point,box,point+text,box+text --segvol-only --threads {threads} --device {params.device} --seed {params.seed}"
        " --params {params.settings:q} --model {params.model:q} > {log} 2>&1"


rule figure3b:
    """Fig 3b: median Dice per category for text, point, box, point+text and box+text."""
    input:
        expand(f"{RESULTS}/prompts/{{dataset}}.parquet", dataset=PROMPT_DATASETS),
    output:
        table=report(
            f"{RESULTS}/fig3b_prompts.csv",
            caption="../report/fig3b.rst",
            category="Tables",
        ),
        png=report(
            f"{RESULTS}/figures/fig3b_prompts.png",
            caption="../report/fig3b.rst",
            category="Figures",
        ),
    log:
        "logs/figure3b.log",
    benchmark:
        "benchmarks/figure3b.tsv"
    conda:
        "../../envs/segvol.yaml"
    params:
        settings=lambda wc: stage_json("evaluate"),
    shell:
        "segvol evaluate fig3b --cases {input} --out {output.table} --png {output.png}"
        " --params {params.settings:q} > {log} 2>&1"


rule figure5:
    """Fig 5: identify the category of a box prompt's mask among all training categories."""
    input:
        model=f"{MODELS}/finetune/segvol/model.safetensors",
        zarr=expand(f"{ZARR}/{{dataset}}.zarr", dataset=PROMPT_DATASETS),
    output:
        table=report(
            f"{RESULTS}/fig5_identification.csv",
            caption="../report/fig5.rst",
            category="Tables",
        ),
        per_case=f"{RESULTS}/fig5_per_case.parquet",
        png=report(
            f"{RESULTS}/figures/fig5_identification.png",
            caption="../report/fig5.rst",
            category="Figures",
        ),
    log:
        "logs/figure5.log",
    benchmark:
        "benchmarks/figure5.tsv"
    conda:
        "../../envs/segvol.yaml"
    threads: 2
    params:
        settings=lambda wc: stage_json("evaluate"),
        model=lambda wc: stage_json("model"),
        seed=config["seed"],
        device=job_device,
    shell:
        "segvol evaluate fig5 --checkpoint {input.model} --zarr {input.zarr} --split test --out {output.table}"
        " --per-case {output.per_case} --png {output.png} --threads {threads} --device {params.device} --seed {params.seed}"
        " --params {params.settings:q} --model {params.model:q} > {log} 2>&1"


rule table6:
    """Table 6: parameters, MACs per case, seconds per case and Dice of SegVol and the baselines that run."""
    input:
        model=f"{MODELS}/finetune/segvol/model.safetensors",
        equivariant=f"{MODELS}/finetune/equivariant/adapter.safetensors",
        zarr=expand(f"{ZARR}/{{dataset}}.zarr", dataset=EXTERNAL),
        baselines=BASELINE_CHECKPOINTS,
    output:
        table=report(
            f"{RESULTS}/table6.csv", caption="../report/table6.rst", category="Tables"
        ),
        per_case=f"{RESULTS}/table6_per_case.parquet",
    log:
        "logs/table6.log",
    benchmark:
        "benchmarks/table6.tsv"
    conda:
        "../../envs/segvol.yaml"
    threads: 2
    params:
        settings=lambda wc: stage_json("evaluate"),
        model=lambda wc: stage_json("model"),
        seed=config["seed"],
        device=job_device,
    shell:
        "segvol evaluate table6 --checkpoint {input.model} --equivariant {input.equivariant}"
        " --zarr {input.zarr} --out {output.table}"
        " --per-case {output.per_case} --threads {threads} --device {params.device} --seed {params.seed}"
        " --params {params.settings:q} --model {params.model:q} > {log} 2>&1"


rule rotation:
    """Rotation robustness: Dice per organ, unrotated and rotated, of SegVol with and without the equivariant embedding."""
    input:
        model=f"{MODELS}/finetune/segvol/model.safetensors",
        equivariant=f"{MODELS}/finetune/equivariant/adapter.safetensors",
        zarr=expand(f"{ZARR}/{{dataset}}.zarr", dataset=EXTERNAL),
    output:
        table=report(
            f"{RESULTS}/rotation.csv",
            caption="../report/rotation.rst",
            category="Tables",
        ),
        per_case=f"{RESULTS}/rotation_per_case.parquet",
        png=report(
            f"{RESULTS}/figures/rotation.png",
            caption="../report/rotation.rst",
            category="Figures",
        ),
    log:
        "logs/rotation.log",
    benchmark:
        "benchmarks/rotation.tsv"
    conda:
        "../../envs/segvol.yaml"
    threads: 2
    params:
        settings=lambda wc: stage_json("evaluate"),
        model=lambda wc: stage_json("model"),
        seed=config["seed"],
        device=job_device,
    shell:
        "segvol evaluate rotation --checkpoint {input.model} --equivariant {input.equivariant}"
        " --zarr {input.zarr} --out {output.table}"
        " --per-case {output.per_case} --png {output.png} --threads {threads} --device {params.device} --seed {params.seed}"
        " --params {params.settings:q} --model {params.model:q} > {log} 2>&1"


rule mri:
    """MRI generalization: a labelled MR store, or (demo) the MR-like stand-in of an external CT set."""
    input:
        model=f"{MODELS}/finetune/segvol/model.safetensors",
        zarr=f"{ZARR}/{MRI_DATASET}.zarr",
    output:
        table=report(
            f"{RESULTS}/mri.csv", caption="../report/mri.rst", category="Tables"
        ),
        per_case=f"{RESULTS}/mri_per_case.parquet",
        png=report(
            f"{RESULTS}/figures/mri.png",
            caption="../report/mri.rst",
            category="Figures",
        ),
    log:
        "logs/mri.log",
    benchmark:
        "benchmarks/mri.tsv"
    conda:
        "../../envs/segvol.yaml"
    threads: 2
    params:
        settings=lambda wc: stage_json("evaluate"),
        model=lambda wc: stage_json("model"),
        seed=config["seed"],
        device=job_device,
        stand_in="--stand-in" if MRI_STAND_IN else "",
    shell:
        "segvol evaluate mri --checkpoint {input.model} --zarr {input.zarr} {params.stand_in}"
        " --out {output.table} --per-case {output.per_case} --png {output.png} --threads {threads} --device {params.device}"
        " --seed {params.seed} --params {params.settings:q} --model {params.model:q} > {log} 2>&1"


rule overlap_audit:
    """No external test case may be a training case: checked before Table 2 is made."""
    input:
        external=expand(f"{ZARR}/{{dataset}}.zarr", dataset=EXTERNAL),
        train=expand(f"{ZARR}/{{dataset}}.zarr", dataset=TRAIN),
    output:
        report(
            f"{RESULTS}/overlap_audit.csv",
            caption="../report/overlap_audit.rst",
            category="Tables",
        ),
    log:
        "logs/overlap_audit.log",
    benchmark:
        "benchmarks/overlap_audit.tsv"
    conda:
        "../../envs/segvol.yaml"
    shell:
        "segvol evaluate overlap --external {input.external} --train {input.train} --out {output} > {log} 2>&1"


rule table2_statistics:
    """Table 2's cells with bootstrap 95 % CIs and paired Wilcoxon tests against SegVol."""
    input:
        f"{RESULTS}/table2_per_case.parquet",
    output:
        report(
            f"{RESULTS}/table2_statistics.csv",
            caption="../report/table2_statistics.rst",
            category="Tables",
        ),
    log:
        "logs/table2_statistics.log",
    benchmark:
        "benchmarks/table2_statistics.tsv"
    conda:
        "../../envs/segvol.yaml"
    params:
        settings=lambda wc: stage_json("evaluate"),
    shell:
        "segvol evaluate statistics --per-case {input} --out {output}"
        " --params {params.settings:q} > {log} 2>&1"


rule interactive:
    """The interactive protocol (box, then 5 corrective clicks) for SegVol and the baselines that run."""
    input:
        model=f"{MODELS}/finetune/segvol/model.safetensors",
        zarr=expand(f"{ZARR}/{{dataset}}.zarr", dataset=EXTERNAL),
        baselines=BASELINE_CHECKPOINTS,
    output:
        table=report(
            f"{RESULTS}/interactive.csv",
            caption="../report/interactive.rst",
            category="Tables",
        ),
        per_step=f"{RESULTS}/interactive_steps.parquet",
        png=report(
            f"{RESULTS}/figures/interactive.png",
            caption="../report/interactive.rst",
            category="Figures",
        ),
    log:
        "logs/interactive.log",
    benchmark:
        "benchmarks/interactive.tsv"
    conda:
        "../../envs/segvol.yaml"
    threads: 2
    params:
        settings=lambda wc: stage_json("evaluate"),
        model=lambda wc: stage_json("model"),
        seed=config["seed"],
        device=job_device,
    shell:
        "segvol evaluate interactive --checkpoint {input.model} --zarr {input.zarr} --out {output.table}"
        " --per-step {output.per_step} --png {output.png} --threads {threads} --device {params.device} --seed {params.seed}"
        " --params {params.settings:q} --model {params.model:q} > {log} 2>&1"


rule gallery:
    """Best, median and worst case per task: three orthogonal views with ground truth and each method."""
    input:
        model=f"{MODELS}/finetune/segvol/model.safetensors",
        zarr=expand(f"{ZARR}/{{dataset}}.zarr", dataset=EXTERNAL),
        per_case=f"{RESULTS}/table2_per_case.parquet",
        baselines=BASELINE_CHECKPOINTS,
    output:
        report(
            f"{RESULTS}/figures/gallery.png",
            caption="../report/gallery.rst",
            category="Figures",
        ),
    log:
        "logs/gallery.log",
    benchmark:
        "benchmarks/gallery.tsv"
    conda:
        "../../envs/segvol.yaml"
    threads: 2
    params:
        settings=lambda wc: stage_json("evaluate"),
        model=lambda wc: stage_json("model"),
        seed=config["seed"],
        device=job_device,
    shell:
        "segvol evaluate gallery --checkpoint {input.model} --zarr {input.zarr} --per-case {input.per_case}"
        " --png {output} --threads {threads} --device {params.device} --seed {params.seed} --params {params.settings:q}"
        " --model {params.model:q} > {log} 2>&1"


rule figure4:
    """Fig 4: one point inside a structure nested in another, with no text and with each name."""
    input:
        model=f"{MODELS}/finetune/segvol/model.safetensors",
        zarr=expand(f"{ZARR}/{{dataset}}.zarr", dataset=EXTERNAL + TRAIN),
    output:
        table=report(
            f"{RESULTS}/fig4_semantic.csv",
            caption="../report/fig4.rst",
            category="Tables",
        ),
        png=report(
            f"{RESULTS}/figures/fig4_semantic.png",
            caption="../report/fig4.rst",
            category="Figures",
        ),
    log:
        "logs/figure4.log",
    benchmark:
        "benchmarks/figure4.tsv"
    conda:
        "../../envs/segvol.yaml"
    threads: 2
    params:
        settings=lambda wc: stage_json("evaluate"),
        model=lambda wc: stage_json("model"),
        seed=config["seed"],
        device=job_device,
    shell:
        "segvol evaluate fig4 --checkpoint {input.model} --zarr {input.zarr} --out {output.table}"
        " --png {output.png} --threads {threads} --device {params.device} --seed {params.seed} --params {params.settings:q}"
        " --model {params.model:q} > {log} 2>&1"


rule meshes:
    """3-D rendering: surface meshes (STL, world coordinates) of SegVol's masks and the ground truth of one case."""
    input:
        model=f"{MODELS}/finetune/segvol/model.safetensors",
        zarr=expand(f"{ZARR}/{{dataset}}.zarr", dataset=EXTERNAL),
    output:
        meshes=directory(f"{RESULTS}/meshes"),
        png=report(
            f"{RESULTS}/figures/meshes.png",
            caption="../report/meshes.rst",
            category="Figures",
        ),
    log:
        "logs/meshes.log",
    benchmark:
        "benchmarks/meshes.tsv"
    conda:
        "../../envs/segvol.yaml"
    threads: 1
    params:
        settings=lambda wc: stage_json("evaluate"),
        model=lambda wc: stage_json("model"),
        seed=config["seed"],
        device=job_device,
    shell:
        "segvol evaluate meshes --checkpoint {input.model} --zarr {input.zarr} --out-dir {output.meshes}"
        " --png {output.png} --threads {threads} --device {params.device} --seed {params.seed}"
        " --params {params.settings:q} --model {params.model:q} > {log} 2>&1"
