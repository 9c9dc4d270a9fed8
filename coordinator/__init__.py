"""The coordinator: parameter server, chunk assignment, checkpoints (python -m coordinator).

One distributed step is Coordinator.gather in service.py: start (server.start_step) ->
dispatch (sender.dispatch) -> intake (intake.handle -> server.accept_piece / accept_push) ->
watch (housekeeping: dead workers, backup copies, a chain that does not carry) -> check
(checks.settle: the guard, an audit and its verdict, SPEC.md 5.7) -> collect (server.collect:
the gradients in summing order, for model/step.py apply_step)."""
