"""NYUv2: 13-class segmentation with depth and surface-normal auxiliaries (real .npy/.mat sources or a stand-in)."""
