"""Tiny random models built from config alone, for mechanics tests, demos and benchmarks.

They have real architectures (Llama, Stable Diffusion) and real tokenizers but
random weights: they check that tensors flow, shapes fit and seeds reproduce,
never what a trained model would produce.
"""
