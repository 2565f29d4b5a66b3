"""The explain layer: heatmaps of what drives a score, on the original image.

cam.py: Grad-CAM from an ONNX graph's `features` output (numpy, the inference install);
gradients.py: Grad-CAM by gradients and occlusion sensitivity (captum, the training extra);
explainer.py: Explainer, which holds a Predictor and picks the method its backend allows;
render.py: the PNG overlays.
"""
