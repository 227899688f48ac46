"""The SLURM backend: job arrays through submitit, resources from the site profile, queue queries."""
