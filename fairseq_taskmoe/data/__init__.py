"""Offline multilingual corpus from software localisation catalogs.

Kept free of heavy imports: fairseq's --user-dir loader imports the package.
"""
