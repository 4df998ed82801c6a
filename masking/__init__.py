"""masking: the paper's mask rules and sample filters, numpy and OpenCV only (docs/RULES.md).

On the ground floor: the generator makes its masks with them, the finder scores and pictures
directions with them, and neither framework is imported here.

    rules.py        gray, the mask rules, connected components, the size filter and its bound, the
                    histogram filters, FilterConfig and process_batch
"""
