"""The pipeline: what the command lines wire together (checkpoints, evaluation, finetuning, experiments).

It sits above the toolkits (pruning/, quantization/, backends/) and the models; scripts sit above it.
"""
