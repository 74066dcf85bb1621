"""Oxford-IIIT Pet primary with CUB as the auxiliary dataset (DTG-AuxL's different-input scenario, appendix §4.5)."""
