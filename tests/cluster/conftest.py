"""Cluster tests build their own multi-node Ray (ray.cluster_utils.Cluster) per module."""
