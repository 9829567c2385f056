"""Cost models: predict the time of a step from its shape.

``CostModel`` is the interface the scheduler and simulator price steps with;
``roofline.RooflineCostModel`` is the analytic first version and
``fitted.FittedCostModel`` the one fitted from a measured profile. ``load``
picks the profile when ``profiles/<device>/<model>/`` has one. ``vidur`` imports
Vidur's public GPU profiles (``vidur_fit`` fits them, ``attention_law`` prices the
attention they lack), ``tensor_parallel`` adds TP all-reduces (``collectives``: the
measured ones), ``predict`` prints one step's pieces.
"""
