"""streamproc inside other stream processors (Faust: :mod:`streamproc.integrations.faust`)."""
