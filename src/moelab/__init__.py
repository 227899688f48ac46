"""moelab: Mixture-of-Experts experiment grids, from one experiment file to tables and plots."""

__version__ = "0.1.0"
