"""HTTP inference (``streamproc serve``): the Open Inference Protocol and a records route,
micro-batched by the stream's window policy and scored by the pipeline's scorer.

Pure pieces (:mod:`.auth`, :mod:`.cache`, :mod:`.batcher`, :mod:`.service`) import no web
framework; :mod:`.http` (FastAPI, uvicorn: the ``serve`` extra) is the only one that does.
"""
