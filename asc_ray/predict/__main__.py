from asc_ray.predict.cli import cli

cli()
