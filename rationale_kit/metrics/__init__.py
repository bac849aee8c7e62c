"""Metrics of the workbook, one module per family.

- :mod:`rationale_kit.metrics.coding`: coding quality (micro/macro F1, P@k, R@k, mAP, AUC, threshold
  tuning, the frequency baseline);
- the rationale metrics (faithfulness, plausibility) live in their own modules next to it.

Import the module you need (``from rationale_kit.metrics import coding``); this package imports
nothing itself, so one family's dependencies never weigh on another.
"""
