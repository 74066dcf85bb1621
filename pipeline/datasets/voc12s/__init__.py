"""PASCAL-VOC12S (MAXL Table 1): PASCAL VOC 2012 as a single-label classification problem at 96 x 96, read from
the ``VOCdevkit/VOC2012`` folder (classification lists, XML annotations, JPEGs), or a stand-in in that layout."""
