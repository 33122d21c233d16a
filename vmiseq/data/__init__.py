"""Data for the three domains: loading, splitting, tokenising, batching and sampling.

- :mod:`vmiseq.data.text`: text corpora, the token cache, random / contiguous / sequential windows.
- :mod:`vmiseq.data.tokenizer`: char-level and byte-level BPE tokenizers (HF ``tokenizers``).
- :mod:`vmiseq.data.timeseries`: CSV / HF series, the benchmark splits, the scaler;
  :mod:`vmiseq.data.windows`: forecasting windows and the long-history sampler.
- :mod:`vmiseq.data.benchmarks`: the standard forecasting sets by name (downloaded once, cached).
- :mod:`vmiseq.data.images`: Fashion-MNIST, image folders, HF image sets, seeded
  sampling and the torchvision transforms of the paper's recipe.

Submodules load on import (``from vmiseq.data.text import load_text``): ``import vmiseq.data``
alone pulls in none of their dependencies.
"""
