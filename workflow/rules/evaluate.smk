# Evaluation: Table 2/3 and every paper evaluation/ablation (docs/architecture.md). Each rule calls
# one `segvol evaluate <name>` subcommand through `evaluate_command` (common.smk: the flags every
# evaluation shares); outputs tagged report(...) (`table_report`, `figure_report`) go into `--report`.

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
        benchmark_file("evaluate_cases/{dataset}")
    conda:
        "../../envs/segvol.yaml"
    threads: 1
    params:
        **model_params(),
    shell:
        evaluate_command(
            "cases", "--checkpoint {input.model} --zarr {input.zarr} --out {output}"
        )


rule table2:
    """Median Dice per (dataset, category) and method, with an Average row per dataset; its lesion rows
    lesion-wise (detected and missed lesions, false positives) next to it."""
    input:
        cases=expand(f"{RESULTS}/cases/{{dataset}}.parquet", dataset=EXTERNAL),
        audit=f"{RESULTS}/overlap_audit.csv",
    output:
        table=table_report("table2.csv", "table2"),
        per_case=f"{RESULTS}/table2_per_case.parquet",
        methods=f"{RESULTS}/table2_methods.json",
        lesions=table_report("table2_lesions.csv", "table2_lesions"),
    log:
        "logs/table2.log",
    benchmark:
        benchmark_file("table2")
    conda:
        "../../envs/segvol.yaml"
    params:
        settings=lambda wc: stage_json("evaluate"),
    shell:
        evaluate_command(
            "table2",
            "--cases {input.cases} --out {output.table} --per-case {output.per_case} --methods {output.methods}"
            " --lesions {output.lesions}",
            SETTINGS_FLAGS,
        )


rule table3:
    """Resize vs sliding window vs zoom-out-zoom-in on the same cases: Dice and ms per case."""
    input:
        model=f"{MODELS}/finetune/segvol/model.safetensors",
        zarr=expand(f"{ZARR}/{{dataset}}.zarr", dataset=EXTERNAL),
    output:
        table=table_report("table3.csv", "table3"),
        per_case=f"{RESULTS}/table3_per_case.parquet",
    log:
        "logs/table3.log",
    benchmark:
        benchmark_file("table3")
    conda:
        "../../envs/segvol.yaml"
    threads: 2
    params:
        **model_params(),
    shell:
        evaluate_command(
            "table3",
            "--checkpoint {input.model} --zarr {input.zarr} --out {output.table} --per-case {output.per_case}",
        )


rule figure2:
    """Fig 2: violin plots of per-case Dice per task and method."""
    input:
        f"{RESULTS}/table2_per_case.parquet",
    output:
        figure_report("fig2_violin.png", "fig2"),
    log:
        "logs/figure2.log",
    benchmark:
        benchmark_file("figure2")
    conda:
        "../../envs/segvol.yaml"
    params:
        settings=lambda wc: stage_json("evaluate"),
    shell:
        evaluate_command("fig2", "--per-case {input} --png {output}", SETTINGS_FLAGS)


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
        benchmark_file("scaling_cases/{run}")
    wildcard_constraints:
        run=r"segvol|first\d+",
    conda:
        "../../envs/segvol.yaml"
    threads: 1
    params:
        **model_params(),
    shell:
        evaluate_command(
            "cases",
            "--checkpoint {input.model} --zarr {input.zarr} --out {output} --split test"
            " --label {wildcards.run} --segvol-only",
        )


rule figure3a:
    """Fig 3a: median Dice against the number of training datasets."""
    input:
        expand(f"{RESULTS}/scaling/{{run}}.parquet", run=SCALING_RUNS),
    output:
        table=table_report("fig3a_scaling.csv", "fig3a"),
        png=figure_report("fig3a_scaling.png", "fig3a"),
    log:
        "logs/figure3a.log",
    benchmark:
        benchmark_file("figure3a")
    conda:
        "../../envs/segvol.yaml"
    params:
        settings=lambda wc: stage_json("evaluate"),
        total=len(TRAIN),
    shell:
        evaluate_command(
            "fig3a",
            "--cases {input} --total {params.total} --out {output.table} --png {output.png}",
            SETTINGS_FLAGS,
        )


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
        benchmark_file("prompt_cases/{dataset}")
    conda:
        "../../envs/segvol.yaml"
    threads: 1
    params:
        **model_params(),
    shell:
        evaluate_command(
            "cases",
            "--checkpoint {input.model} --zarr {input.zarr} --out {output} --split test"
            " --prompts text,point,box,point+text,box+text --segvol-only",
        )


rule figure3b:
    """Fig 3b: median Dice per category for text, point, box, point+text and box+text."""
    input:
        expand(f"{RESULTS}/prompts/{{dataset}}.parquet", dataset=PROMPT_DATASETS),
    output:
        table=table_report("fig3b_prompts.csv", "fig3b"),
        png=figure_report("fig3b_prompts.png", "fig3b"),
    log:
        "logs/figure3b.log",
    benchmark:
        benchmark_file("figure3b")
    conda:
        "../../envs/segvol.yaml"
    params:
        settings=lambda wc: stage_json("evaluate"),
    shell:
        evaluate_command(
            "fig3b",
            "--cases {input} --out {output.table} --png {output.png}",
            SETTINGS_FLAGS,
        )


rule figure5:
    """Fig 5: identify the category of a box prompt's mask among all training categories."""
    input:
        model=f"{MODELS}/finetune/segvol/model.safetensors",
        zarr=expand(f"{ZARR}/{{dataset}}.zarr", dataset=PROMPT_DATASETS),
    output:
        table=table_report("fig5_identification.csv", "fig5"),
        per_case=f"{RESULTS}/fig5_per_case.parquet",
        png=figure_report("fig5_identification.png", "fig5"),
    log:
        "logs/figure5.log",
    benchmark:
        benchmark_file("figure5")
    conda:
        "../../envs/segvol.yaml"
    threads: 2
    params:
        **model_params(),
    shell:
        evaluate_command(
            "fig5",
            "--checkpoint {input.model} --zarr {input.zarr} --split test --out {output.table}"
            " --per-case {output.per_case} --png {output.png}",
        )


rule table6:
    """Table 6: parameters, MACs per case, seconds per case and Dice of SegVol and the baselines that run."""
    input:
        model=f"{MODELS}/finetune/segvol/model.safetensors",
        equivariant=f"{MODELS}/finetune/equivariant/adapter.safetensors",
        zarr=expand(f"{ZARR}/{{dataset}}.zarr", dataset=EXTERNAL),
        baselines=BASELINE_CHECKPOINTS,
    output:
        table=table_report("table6.csv", "table6"),
        per_case=f"{RESULTS}/table6_per_case.parquet",
    log:
        "logs/table6.log",
    benchmark:
        benchmark_file("table6")
    conda:
        "../../envs/segvol.yaml"
    threads: 2
    params:
        **model_params(),
    shell:
        evaluate_command(
            "table6",
            "--checkpoint {input.model} --equivariant {input.equivariant} --zarr {input.zarr}"
            " --out {output.table} --per-case {output.per_case}",
        )


rule rotation:
    """Rotation robustness: Dice per organ, unrotated and rotated, of SegVol with and without the equivariant embedding."""
    input:
        model=f"{MODELS}/finetune/segvol/model.safetensors",
        equivariant=f"{MODELS}/finetune/equivariant/adapter.safetensors",
        zarr=expand(f"{ZARR}/{{dataset}}.zarr", dataset=EXTERNAL),
    output:
        table=table_report("rotation.csv", "rotation"),
        per_case=f"{RESULTS}/rotation_per_case.parquet",
        png=figure_report("rotation.png", "rotation"),
    log:
        "logs/rotation.log",
    benchmark:
        benchmark_file("rotation")
    conda:
        "../../envs/segvol.yaml"
    threads: 2
    params:
        **model_params(),
    shell:
        evaluate_command(
            "rotation",
            "--checkpoint {input.model} --equivariant {input.equivariant} --zarr {input.zarr}"
            " --out {output.table} --per-case {output.per_case} --png {output.png}",
        )


rule mri:
    """MRI generalization: a labelled MR store, or (demo) the MR-like stand-in of an external CT set."""
    input:
        model=f"{MODELS}/finetune/segvol/model.safetensors",
        zarr=f"{ZARR}/{MRI_DATASET}.zarr",
    output:
        table=table_report("mri.csv", "mri"),
        per_case=f"{RESULTS}/mri_per_case.parquet",
        png=figure_report("mri.png", "mri"),
    log:
        "logs/mri.log",
    benchmark:
        benchmark_file("mri")
    conda:
        "../../envs/segvol.yaml"
    threads: 2
    params:
        **model_params(),
        stand_in="--stand-in" if MRI_STAND_IN else "",
    shell:
        evaluate_command(
            "mri",
            "--checkpoint {input.model} --zarr {input.zarr} {params.stand_in}"
            " --out {output.table} --per-case {output.per_case} --png {output.png}",
        )


rule overlap_audit:
    """No external test case may be a training case: checked before Table 2 is made."""
    input:
        external=expand(f"{ZARR}/{{dataset}}.zarr", dataset=EXTERNAL),
        train=expand(f"{ZARR}/{{dataset}}.zarr", dataset=TRAIN),
    output:
        table_report("overlap_audit.csv", "overlap_audit"),
    log:
        "logs/overlap_audit.log",
    benchmark:
        benchmark_file("overlap_audit")
    conda:
        "../../envs/segvol.yaml"
    shell:
        evaluate_command(
            "overlap",
            "--external {input.external} --train {input.train} --out {output}",
            "",
        )


rule table2_statistics:
    """Table 2's cells with bootstrap 95 % CIs and paired Wilcoxon tests against SegVol."""
    input:
        f"{RESULTS}/table2_per_case.parquet",
    output:
        table_report("table2_statistics.csv", "table2_statistics"),
    log:
        "logs/table2_statistics.log",
    benchmark:
        benchmark_file("table2_statistics")
    conda:
        "../../envs/segvol.yaml"
    params:
        settings=lambda wc: stage_json("evaluate"),
    shell:
        evaluate_command(
            "statistics", "--per-case {input} --out {output}", SETTINGS_FLAGS
        )


rule interactive:
    """The interactive protocol (box, then 5 corrective clicks) for SegVol and the baselines that run."""
    input:
        model=f"{MODELS}/finetune/segvol/model.safetensors",
        zarr=expand(f"{ZARR}/{{dataset}}.zarr", dataset=EXTERNAL),
        baselines=BASELINE_CHECKPOINTS,
    output:
        table=table_report("interactive.csv", "interactive"),
        per_step=f"{RESULTS}/interactive_steps.parquet",
        png=figure_report("interactive.png", "interactive"),
    log:
        "logs/interactive.log",
    benchmark:
        benchmark_file("interactive")
    conda:
        "../../envs/segvol.yaml"
    threads: 2
    params:
        **model_params(),
    shell:
        evaluate_command(
            "interactive",
            "--checkpoint {input.model} --zarr {input.zarr} --out {output.table}"
            " --per-step {output.per_step} --png {output.png}",
        )


rule interactive_training:
    """Corrective-click training vs released-style prompts, same data and steps: the interactive protocol and
    Table 2's box+text Dice per model (not part of `all`: it trains two more models)."""
    input:
        released=corrective_run_model("released"),
        corrective=corrective_run_model("corrective"),
        corrective_mask=corrective_run_model("corrective_mask"),
        zarr=expand(f"{ZARR}/{{dataset}}.zarr", dataset=EXTERNAL),
    output:
        table=table_report("interactive_training.csv", "interactive_training"),
        per_case=f"{RESULTS}/interactive_training_per_case.parquet",
        png=figure_report("interactive_training.png", "interactive_training"),
    log:
        "logs/interactive_training.log",
    benchmark:
        benchmark_file("interactive_training")
    conda:
        "../../envs/segvol.yaml"
    threads: 2
    params:
        **model_params(),
    shell:
        evaluate_command(
            "interactive_training",
            "--checkpoints released={input.released} corrective={input.corrective}"
            " corrective+mask={input.corrective_mask} --zarr {input.zarr} --out {output.table}"
            " --per-case {output.per_case} --png {output.png}",
        )


rule gallery:
    """Best, median and worst case per task: three orthogonal views with ground truth and each method."""
    input:
        model=f"{MODELS}/finetune/segvol/model.safetensors",
        zarr=expand(f"{ZARR}/{{dataset}}.zarr", dataset=EXTERNAL),
        per_case=f"{RESULTS}/table2_per_case.parquet",
        baselines=BASELINE_CHECKPOINTS,
    output:
        figure_report("gallery.png", "gallery"),
    log:
        "logs/gallery.log",
    benchmark:
        benchmark_file("gallery")
    conda:
        "../../envs/segvol.yaml"
    threads: 2
    params:
        **model_params(),
    shell:
        evaluate_command(
            "gallery",
            "--checkpoint {input.model} --zarr {input.zarr} --per-case {input.per_case} --png {output}",
        )


rule figure4:
    """Fig 4: one point inside a structure nested in another, with no text and with each name."""
    input:
        model=f"{MODELS}/finetune/segvol/model.safetensors",
        zarr=expand(f"{ZARR}/{{dataset}}.zarr", dataset=EXTERNAL + TRAIN),
    output:
        table=table_report("fig4_semantic.csv", "fig4"),
        png=figure_report("fig4_semantic.png", "fig4"),
    log:
        "logs/figure4.log",
    benchmark:
        benchmark_file("figure4")
    conda:
        "../../envs/segvol.yaml"
    threads: 2
    params:
        **model_params(),
    shell:
        evaluate_command(
            "fig4",
            "--checkpoint {input.model} --zarr {input.zarr} --out {output.table} --png {output.png}",
        )


rule meshes:
    """3-D rendering: surface meshes (STL, world coordinates) of SegVol's masks and the ground truth of one case."""
    input:
        model=f"{MODELS}/finetune/segvol/model.safetensors",
        zarr=expand(f"{ZARR}/{{dataset}}.zarr", dataset=EXTERNAL),
    output:
        meshes=directory(f"{RESULTS}/meshes"),
        png=figure_report("meshes.png", "meshes"),
    log:
        "logs/meshes.log",
    benchmark:
        benchmark_file("meshes")
    conda:
        "../../envs/segvol.yaml"
    threads: 1
    params:
        **model_params(),
    shell:
        evaluate_command(
            "meshes",
            "--checkpoint {input.model} --zarr {input.zarr} --out-dir {output.meshes} --png {output.png}",
        )
