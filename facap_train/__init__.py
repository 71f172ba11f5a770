"""What `train_accelerate.py` runs, one module per concern: `options` (the command line), `accelerator`, `data`
(datasets -> processor batches), `models`, `optim` (run plan, optimizer, schedule, one step), `loop`,
`evaluation` (training-time evaluation through `facap_eval`), `checkpoint` (atomic, verified checkpoints),
`outputs` (the run folder), `card` (model cards and `--push-to-hub`) and `errors`."""
