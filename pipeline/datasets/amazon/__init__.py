"""Amazon Toys / Movies reviews (DTG-AuxL's recommendation scenario) and their synthetic stand-in."""
