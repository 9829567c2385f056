"""What-if exploration over the simulator: grids of runs (``drex sweep``, optionally on Ray) and the
highest request rate a configuration sustains under SLOs (``drex capacity``).

``grid`` turns repeated/comma-listed ``drex simulate`` flags and YAML files into configurations,
``tasks`` runs one configuration (a simulation or a capacity search) without touching the disk,
``sweep`` drives a grid (in-process, or on Ray through ``ray_pool``, the one module that imports
Ray) and writes ``sweep.csv``,
``capacity`` is the search itself, and ``cli`` registers the commands.
"""
