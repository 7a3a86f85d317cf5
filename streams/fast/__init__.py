"""Columnar offline replay: the reference processor's exact answers over whole logs at once.

`engine.ColumnarReplay` is the entry point (`streams.replay` uses it for large inputs);
`scan` reads JSON Lines into columns, `join` is the event-time pass (reorder buffer,
watermark, episode join), `windows` turns its outcomes into window records and pressure.
All kernels are Numba, compiled once per install and cached on disk."""
