"""One ``compress`` (or ``search``) run: the checks made before OUT is touched
(``preflight``), the stages in order (``compress``), the folder the run owns (``outdir``)
and what it writes there (``outputs``, ``report``)."""
