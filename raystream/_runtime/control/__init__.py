"""Running a job: the driver and Supervisor, connecting to Ray, submitting job files, the
coordinator actor (R1-R5), subtask actors and spares, what each subtask is handed (wiring),
metrics and reports."""
