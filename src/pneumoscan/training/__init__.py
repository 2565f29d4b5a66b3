"""The training layer (torch, the training extra): fit a run with Lightning (train.py), resume
it (resume.py), fit its out-of-distribution gate (ood.py), train and threshold ensembles."""
