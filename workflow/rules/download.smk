# Real datasets from the registry (config/paper.yaml). Filled in by the data stage.
