"""The models layer (torch, the training extra): the registry of networks (registry.py), the
weights store (weights.py: model.safetensors beside the contract) and the torch side of
preprocessing and augmentation (transforms.py)."""
