"""The cost planner: what a deployment costs by layer, what each strategy saves,
when self-hosting pays, and a forecast from measured traffic (``strata cost``).
The price table here (``prices.yaml``) is also the gateway's default price list."""
