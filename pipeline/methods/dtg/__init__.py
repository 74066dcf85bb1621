"""DTG-AuxL (Chen et al., NeurIPS 2023): joint data-task generation for auxiliary learning (``method.py``)."""
