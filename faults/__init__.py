"""A seeded fault-injection campaign on the test rig (`nox -s faults`): see RELIABILITY.md."""
