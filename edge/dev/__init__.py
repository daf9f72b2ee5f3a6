# Development tools, not the gateway: the quick start's demo runner (`./dev run`, python -m edge.dev.demo) and the
# sample backends it and the end-to-end tests serve (python -m edge.dev.sample_backend).
#
# Rules:
# - Nothing in the product (edge run, the workers) imports this package; it may import the product.
