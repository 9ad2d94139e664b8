"""What a run folder becomes for people: the report, its figures, logs for other tools and the model card.

- `data`: reads a run directory (through `server.rundir`) into `RunData`, and what to plot from it.
- `plots`: the report's PNG figures (matplotlib, Agg canvas).
- `empirical_privacy`: summary.json's privacy audit (`fedward sim audit`) as the report and card read it.
- `html`: the self-contained `report.html`.
- `tensorboard_log`: TensorBoard event files of a run (also written live by `server.rounds`).
- `mlflow_log`: optional MLflow logging (named so that it never shadows the `mlflow` package).
- `build`: `make_report`, which writes all of the above.
- `cli`: `fedward report RUN_DIR`.
- `model_card`: the run's `MODEL_CARD.md` (written by `server.export`).

The sub-modules are imported by name (`from fedward.server.report.build import make_report`); this file
imports none of them, so that the coordinator CLI does not load matplotlib until a report is made.
"""
