"""Pipeline stages: each module has `run(cfg) -> dict` (its metrics) and is one DVC stage."""
