"""`segvol serve`: interactive segmentation in the browser (points, boxes, text; three views)."""
