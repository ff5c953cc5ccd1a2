"""``vaegan-serve``: the defended classifier as an HTTP service on Ray Serve (docs/serving.md).

- ``app.py``      -- the Serve application (``build_app``, the ``VaeganDefense`` deployment, its HTTP routes)
- ``decode.py``   -- request body -> image array, in memory, with the size and pixel limits
- ``client.py``   -- ``predict(url, image_bytes, retries=...)``: a stdlib client that retries 5xx and lost
  connections
- ``cli.py``      -- ``vaegan-serve``

Nothing here is imported by the runtime; ``ray[serve]`` is the optional extra ``vaegan[serve]``.
"""
