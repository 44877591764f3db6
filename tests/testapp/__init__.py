"""The tests' own app: the models that the test views write, apart from the demo's."""
