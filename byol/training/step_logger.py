"""What a training run reports per logged step: the metrics record (metrics.jsonl and TensorBoard), the
progress bar, and the collapse warning. It only writes on rank 0."""

from __future__ import annotations

from byol.probes.collapse import is_collapsed
from byol.runtime.logs import Progress, TensorBoard, log


class StepLogger:
    """metrics.jsonl, TensorBoard, the progress bar and the collapse warning of one training run.

    `run` is the run folder (a RunDir, which writes on rank 0 only); on other ranks this logger keeps
    track of collapse like rank 0 but shows and writes nothing.
    """

    def __init__(self, run, main: bool, quiet: bool, tensorboard: bool, total_steps: int, first_step: int):
        self.run = run
        self.total_steps = total_steps
        self.collapsed = False
        self.board = TensorBoard(run.tensorboard if tensorboard and main else None)
        self.progress = Progress(total_steps, first_step, enabled=main and not quiet)

    def write(self, record: dict) -> None:
        """One line of metrics.jsonl (rank 0) and its TensorBoard scalars."""
        self.run.append_metrics(record)
        self.board.log(record)

    def log_step(self, record: dict) -> None:
        """A logged training step: the collapse warning when the state changes, the record, the bar."""
        if is_collapsed(record, record["embedding_dim"]) != self.collapsed:
            self.collapsed = not self.collapsed
            if self.collapsed:
                log.warning(
                    f"the representation has collapsed at step {record['step']} (embedding_std "
                    f"{record['embedding_std']:.4f}, effective_rank {record['effective_rank']:.2f}); "
                    "see docs/ablations.md"
                )
            else:
                log.info(f"step {record['step']}: no longer collapsed")
        self.write(record)
        self.progress.update(record["step"], self.total_steps, self.progress_fields(record))

    def progress_fields(self, record: dict) -> dict:
        fields = {"loss": record["loss"]}
        if "tau" in record:
            fields["tau"] = record["tau"]
        fields.update(
            {"lr": record["lr"], "img/s": round(record["images_per_s"]), "rank": round(record["effective_rank"], 1)}
        )
        if self.collapsed:
            fields["COLLAPSED"] = "yes"
        for key, name in (("probe_top1", "probe"), ("knn_top1", "knn")):
            if key in record:
                fields[name] = round(record[key], 1)
        return fields

    def close(self) -> None:
        self.board.close()
        self.progress.close()
