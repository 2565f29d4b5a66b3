"""The evaluation layer: pure metrics (metrics.py), temperature calibration, the HTML report,
its figures and the model card."""
