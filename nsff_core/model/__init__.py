"""The model library: cameras, rays, fields, rendering, losses, metrics, the Lightning system,
checkpoints, file formats and synthetic scenes; importable without the workflow or Snakemake."""
