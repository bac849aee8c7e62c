"""The notebook series' own layer: the notebook context (``context``), the artifact contract
(``artifacts``), the experiment protocols per notebook (``protocols``, re-exported by ``steps``),
the papermill runner (``runner``) and the run report (``report``)."""
