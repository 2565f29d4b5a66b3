"""The verbs that take paths and combine the layers below: evaluate a run on a split, site
adaptation, the speed benchmark."""
