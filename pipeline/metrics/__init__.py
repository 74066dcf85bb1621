"""Task metrics by kind (classification, segmentation, geometry, point clouds) and their aggregation over seeds."""
