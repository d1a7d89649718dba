"""DeSRA fine-tuning: training pairs with pseudo ground truth, crop sampling, EMA weights, networks, losses."""

__all__: list[str] = []
