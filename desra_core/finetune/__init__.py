"""DeSRA fine-tuning: training pairs with pseudo ground truth, crop sampling, EMA weights, networks, losses,
validation on images never trained on (and the rule for which checkpoint is shipped), the model card, and
one run from images to the shipped files (delivery)."""

__all__: list[str] = []
