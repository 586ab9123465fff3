"""Fine-tune SegVol on your own labelled CTs (docs/own-data.md).

An nnU-Net v2 raw dataset folder (or a folder of image/label pairs plus a names file) is checked and
normalized into one dataset store (`sources`, `prepare`), the released weights (or ours) are fine-tuned
on its train split with a validation every K steps and the best weights kept (`train`), and the model
is scored before and after on the held-out split (`evaluation`).
"""
