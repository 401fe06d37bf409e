"""The audit flow as stages: one module per stage, each declaring its inputs (hashes and options), the paths
it owns inside the run, and `run()`. The CLI commands and `audit` run the same stage objects through
`rundir.run_stage`, so a stage is skipped, resumed or refused by one rule; `pipeline` orders them."""
