"""STL-10 (MAXL Table 1): 96 x 96 colour images of 10 classes, from the binary release or a stand-in."""
