"""The bottom layer: what every other layer agrees on, with no dependency beyond numpy and the
standard library (plus safetensors' numpy reader for the OOD statistics): the preprocessing
spec, the checkpoint contract and the decision rules that turn logits into a label."""
