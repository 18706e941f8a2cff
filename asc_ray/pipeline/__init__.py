"""The Ray layer: it only orchestrates the plain-PyTorch pieces (asc_ray.train).

teachers.py    one Ray Train TorchTrainer per (teacher, split), all launched at once
aggregator.py  the LogitAggregator actor: collects logits, writes Parquet tables keyed by filename
students.py    Ray Tune trials per (student, split)
run.py         the whole pipeline: pre-flight checks, stages, resume, MLflow parent run, results
ray_private.py the private Ray APIs used, and the Ray releases they were checked on
"""
