"""The experiment protocols of the notebook series, one module per notebook (``data``, ``train``,
``rationales``, ``alignment``, ``faithfulness``, ``plausibility``, ``guided``, ``fewshot``) plus
what they share (``common``, ``tables``). Each function reads and writes the canonical tables
(documents, span tables, score tables) and the profile's parameters; nothing here is specific to
one data set. Notebooks import each function from the module it lives in."""
