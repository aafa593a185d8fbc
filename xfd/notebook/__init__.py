"""Progress renderers: a tqdm bar (terminal, or tqdm's notebook frontend) and the live notebook widget.

They render :class:`xfd.progress.Snapshot` and :class:`xfd.report.Report` objects and import nothing that
runs a distribution, so the runtime can pick one at run time (``progress="auto"``). Each result object
renders itself in a notebook (``_repr_html_`` of the manifest, the plan and the report).
"""
