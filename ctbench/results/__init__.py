"""Many runs: compare grids (local and Ray executors), statistics with CIs, prediction
checks, leaderboards and their page, submissions, and figures.

Last room of the flow: it reads what ``runs`` wrote and nothing imports it but the CLI.
"""
