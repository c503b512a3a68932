"""The cluster side: what runs vcot's Jobs on Kubernetes, beside the manifests in ``k8s/``.

- ``chain``: the small controller that resumes a run's suspended stage Jobs in order (``python -m vcot.cluster.chain``);
- ``runs``: a second (third, ...) run of an overlay under its own names (``make k8s-run``).

May import: ``vcot.io`` and the entrypoint frame.
"""

TRAINJOB_GROUP, TRAINJOB_VERSION, TRAINJOB_PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
TRAINJOB_API = f"{TRAINJOB_GROUP}/{TRAINJOB_VERSION}"
"""Kubeflow Trainer's TrainJob (k8s/components/kubeflow-trainer): what the chain follows and a run's patches target."""
