"""``armbench serve``: a local web app over one run folder (the output of ``armbench analyze``).

- :mod:`.run` reads the run: the results store (facts, predictions), ``samples.parquet``
  (map coordinates, clusters), ``clusters.csv``; it draws the sample view from the STORED
  results with ``visualize`` (never evaluating anything again).
- :mod:`.selections` keeps named selections in ``RUN_DIR/selections/`` and exports them.
- :mod:`.app` is the Flask app (JSON + image endpoints, the page from ``static/``).
"""
