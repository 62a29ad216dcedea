"""nml-bench: how label noise in pre-training changes what a frozen model is worth downstream.

Data flows one way: suite file -> pre-training -> features -> heads -> metrics -> MLflow ->
leaderboard. The science (``noise``, ``spectrum``, ``heads``, ``probe``) imports neither Ray nor
MLflow, so it can be tested and reused on its own.
"""

__version__ = "0.1.0"
