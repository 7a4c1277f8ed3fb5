"""Training and export: turns a trained Hugging Face checkpoint into a sentistream model bundle.

Needs the optional ``export`` extra (torch, transformers, scikit-learn). The worker runtime
never imports this package.
"""
