"""CIFAR-10 primary with CIFAR-100 as the auxiliary dataset (DTG-AuxL's different-input scenario, appendix §4.4)."""
