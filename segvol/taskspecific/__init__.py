"""Task-specific baselines of the paper's Appendix C: one model per dataset (nnU-Net, SwinUNETR, 3D UX-Net).

A stage of its own (`workflow/rules/taskspecific.smk`, this package, the `taskspecific:` config block):
it trains models, like `finetune`, from the normalized stores alone, and `segvol.evaluate` scores them.
"""
