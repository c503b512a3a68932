"""k8s/components/spot on each overlay, wherever it is listed among the components: every GPU stage (train, GRPO, RGFN,
evaluate, the re-evaluation CronJob) tolerates the spot taint, beside the GPU taint on the gpu overlay, and nothing
else does. A spot toleration lost to a later patch (the gpu overlay's GPU placement replaced the whole list) leaves
the pod unschedulable on the spot pool, which no offline schema check notices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.k8s.test_k8s_manifests import by_kind, listed_components, overlay_copy, pod_templates, render

SPOT = {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
GPU = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
GPU_STAGES = {"vcot-train", "vcot-grpo", "vcot-rgfn", "vcot-evaluate", "vcot-reevaluate"}


def placements() -> list[tuple[str, tuple[str, ...], int]]:
    """(overlay, components turned on, where spot goes): every position in every overlay's list."""
    cases = []
    for overlay, extra in (("k8s/overlays/gpu", ()), ("k8s/overlays/gpu", ("grpo",)), ("k8s/overlays/gpu", ("rgfn",)),
                           ("k8s/overlays/gpu", ("multi-node", "kueue")), ("k8s/overlays/cpu-dev", ())):
        length = len(listed_components(overlay)) + len(extra)
        cases += [(overlay, extra, at) for at in range(length + 1)]
    return cases


def with_spot(overlay: str, extra: tuple[str, ...], at: int) -> list[dict[str, Any]]:
    shipped = listed_components(overlay)
    components = [shipped[0], *(f"../../components/{name}" for name in extra), *shipped[1:]]
    components.insert(at, "../../components/spot")
    with overlay_copy(overlay, components=components) as folder:
        return render(folder)


@pytest.mark.parametrize(("overlay", "extra", "at"), placements(),
                         ids=[f"{Path(o).name}{''.join('+' + e for e in x)}-spot-at-{at}" for o, x, at in placements()])
def test_spot_keeps_every_toleration_wherever_it_is_listed(overlay: str, extra: tuple[str, ...], at: int) -> None:
    docs = with_spot(overlay, extra, at)
    stages = dict(pod_templates(docs))
    assert {f"vcot-{name}" for name in extra if name in ("grpo", "rgfn")} <= set(stages)
    for name, template in stages.items():
        tolerations = template["spec"].get("tolerations") or []
        if name in GPU_STAGES:
            expected = [GPU, SPOT] if overlay.endswith("/gpu") else [SPOT]
            assert sorted(tolerations, key=str) == sorted(expected, key=str), (name, tolerations)
        elif name != "vcot-demo":
            assert not tolerations, (name, tolerations)


def test_without_spot_the_gpu_stages_tolerate_the_gpu_taint_only() -> None:
    docs = render("k8s/overlays/gpu")
    for name, template in pod_templates(docs):
        tolerations = template["spec"].get("tolerations") or []
        assert tolerations == ([GPU] if name in GPU_STAGES else []), (name, tolerations)
    assert not any(template["spec"].get("tolerations") for _, template in pod_templates(render("k8s/overlays/cpu-dev")))
    assert by_kind(docs, "Job")["vcot-train"]["spec"]["template"]["spec"]["nodeSelector"]
