"""The discrete-event simulator: arrivals, replicas behind a router, and an executor priced by the cost model."""
