"""Statistics behind every "system A vs system B" claim, and output checks.

- ``clusters.py``: the evaluation cluster of each test segment (segments sharing an English string).
- ``bootstrap.py``: paired bootstrap that resamples clusters (or segments), BLEU and chrF.
- ``seeds.py``: the seed-level paired test (exact sign flips over seeds) and the claim labels.
- ``loops.py``: the degenerate-output (loop) detector.
- ``records.py``: per-sentence hypotheses saved next to results (``.jsonl.gz``).

Pure functions over lists and numpy arrays; ``fairseq_taskmoe.evaluate`` re-exports the main ones.
"""
