"""The cluster side: what runs vcot's Jobs on Kubernetes, beside the manifests in ``k8s/``.

- ``chain``: the small controller that resumes a run's suspended stage Jobs in order (``python -m vcot.cluster.chain``);
- ``runs``: a second (third, ...) run of an overlay under its own names (``make k8s-run``).

May import: ``vcot.io`` and the entrypoint frame.
"""
